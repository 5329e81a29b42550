"""Langfuse simulator: the API-key cache and the revoked-key race (docs/rotation.md "The revocation race").

Time runs on the simulator's clock (``advance_clock``), and a delete's race window is held open
until the test has probed inside it (``deletes_in_race_window``, ``release_race_windows``), so no
test depends on how fast this machine is. Each proves one property of the snapshot / fixed / off
modes.
"""

from __future__ import annotations

import threading
import time

import httpx

from tests.fixtures.langfuse_sim import SimHandle


def _create(sim: SimHandle) -> dict[str, str]:
    response = sim.http.post(f"/api/public/projects/{sim.projects[0].id}/apiKeys", json={}, auth=sim.org_auth)
    assert response.status_code == 201
    return dict(response.json())


def _delete(sim: SimHandle, key: dict[str, str]) -> None:
    url = f"/api/public/projects/{sim.projects[0].id}/apiKeys/{key['id']}"
    assert sim.http.delete(url, auth=sim.org_auth).status_code == 200


def _probe(sim: SimHandle, key: dict[str, str]) -> int:
    """`GET /api/public/projects` with the key: the cheap, never rate-limited auth check."""
    return sim.http.get("/api/public/projects", auth=(key["publicKey"], key["secretKey"])).status_code


def _admin(sim: SimHandle, body: dict[str, object]) -> httpx.Response:
    return sim.http.post("/api/admin/api-keys", json=body, headers={"Authorization": f"Bearer {sim.admin_api_key}"})


#: A race window only a hang would outlast: tests end it themselves once they probed inside it.
RACE_WINDOW_S = 60.0


def _delete_in_background(sim: SimHandle, key: dict[str, str]) -> threading.Thread:
    """Start deleting ``key`` and return once the delete is inside its race window."""
    url = f"{sim.url}/api/public/projects/{sim.projects[0].id}/apiKeys/{key['id']}"
    thread = threading.Thread(target=lambda: httpx.delete(url, auth=sim.org_auth, timeout=RACE_WINDOW_S + 30))
    thread.start()
    deadline = time.monotonic() + 30
    while sim.control.deletes_in_race_window() == 0:
        assert time.monotonic() < deadline, "the delete never reached its race window"
        time.sleep(0.02)
    return thread


def _finish(sim: SimHandle, deleting: threading.Thread) -> None:
    assert sim.control.release_race_windows() == 1
    deleting.join(30)
    assert not deleting.is_alive()


def test_request_inside_race_window_recaches_the_deleted_key(sim: SimHandle) -> None:
    sim.configure(race_window_s=RACE_WINDOW_S)
    key = _create(sim)
    deleting = _delete_in_background(sim, key)  # the cache entry is evicted, the row not yet dropped
    assert _probe(sim, key) == 200
    _finish(sim, deleting)
    remaining = sim.control.keys()
    assert key["id"] not in {row["id"] for row in remaining}
    assert _probe(sim, key) == 200  # deleted row, yet still authenticating from the re-cached entry


def test_without_a_racing_request_revocation_is_immediate(sim: SimHandle) -> None:
    sim.configure(race_window_s=0.3)
    key = _create(sim)
    assert _probe(sim, key) == 200
    _delete(sim, key)
    assert _probe(sim, key) == 401


def test_stale_revoked_key_keeps_working_while_in_use(sim: SimHandle) -> None:
    sim.configure(stale_after_delete=True, cache_ttl_s=60)
    key = _create(sim)
    _delete(sim, key)
    for _ in range(5):  # 200 s in total, well past the 60 s TTL: GETEX keeps sliding it
        sim.control.advance_clock(40)
        assert _probe(sim, key) == 200


def test_stale_revoked_key_is_rejected_after_ttl_without_use(sim: SimHandle) -> None:
    sim.configure(stale_after_delete=True, cache_ttl_s=60)
    key = _create(sim)
    _delete(sim, key)
    assert _probe(sim, key) == 200
    sim.control.advance_clock(59)
    assert _probe(sim, key) == 200, "still inside the TTL"
    sim.control.advance_clock(61)
    assert _probe(sim, key) == 401


def test_invalidate_all_evicts_a_stale_revoked_key(sim: SimHandle) -> None:
    sim.configure(stale_after_delete=True)
    key = _create(sim)
    _delete(sim, key)
    assert _probe(sim, key) == 200
    response = _admin(sim, {"action": "invalidate-all"})
    assert response.json()["message"] == "All cached API keys invalidated"
    assert _probe(sim, key) == 401


def test_targeted_invalidate_cannot_evict_a_deleted_row(sim: SimHandle) -> None:
    sim.configure(stale_after_delete=True)
    key = _create(sim)
    _delete(sim, key)
    response = _admin(sim, {"action": "invalidate", "projectIds": [sim.projects[0].id]})
    assert response.json() == {"message": "API keys invalidated"}
    assert _probe(sim, key) == 200


def test_cache_flush_evicts_a_stale_revoked_key(sim: SimHandle) -> None:
    sim.configure(stale_after_delete=True)
    key = _create(sim)
    _delete(sim, key)
    sim.control.flush_cache()
    assert _probe(sim, key) == 401


def test_fixed_mode_bounds_a_stale_key_by_ttl_from_write_even_while_used(sim: SimHandle) -> None:
    sim.configure(cache_mode="fixed", cache_ttl_s=60, stale_after_delete=True)
    key = _create(sim)
    _delete(sim, key)
    for _ in range(4):  # used every 14 s, 56 s in all: a sliding TTL would never run out
        assert _probe(sim, key) == 200
        sim.control.advance_clock(14)
    assert _probe(sim, key) == 200
    sim.control.advance_clock(5)  # 61 s after the entry was written
    assert _probe(sim, key) == 401


def test_fixed_mode_race_window_serves_cached_entry_only_until_eviction(sim: SimHandle) -> None:
    sim.configure(cache_mode="fixed", race_window_s=RACE_WINDOW_S)
    key = _create(sim)
    assert _probe(sim, key) == 200  # cached
    deleting = _delete_in_background(sim, key)  # the row is gone, eviction pending
    assert _probe(sim, key) == 200
    _finish(sim, deleting)
    assert _probe(sim, key) == 401


def test_fixed_mode_defaults_to_a_60_second_ttl(sim: SimHandle) -> None:
    config = sim.configure(cache_mode="fixed")
    assert (config["cache_ttl_s"], config["effective_cache_ttl_s"]) == (None, 60.0)


def test_snapshot_mode_defaults_to_a_300_second_ttl(sim: SimHandle) -> None:
    assert sim.control.config()["effective_cache_ttl_s"] == 300.0


def test_cache_off_revokes_immediately_even_with_stale_after_delete(sim: SimHandle) -> None:
    sim.configure(cache_mode="off", stale_after_delete=True)
    key = _create(sim)
    assert _probe(sim, key) == 200
    _delete(sim, key)
    assert _probe(sim, key) == 401


def test_cache_off_has_no_negative_entries(sim: SimHandle) -> None:
    sim.configure(cache_mode="off")
    early = {"publicKey": "pk-lf-early-off", "secretKey": "sk-lf-early-off"}
    assert _probe(sim, early) == 401
    response = sim.http.post(f"/api/public/projects/{sim.projects[0].id}/apiKeys", json=early, auth=sim.org_auth)
    assert response.status_code == 201
    assert _probe(sim, early) == 200
