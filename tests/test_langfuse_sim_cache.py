"""Langfuse simulator: the API-key cache and the revoked-key race (README "The revocation race").

Small TTLs (1 s) keep these fast; each test proves one property of the snapshot / fixed / off modes.
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


def _delete_in_background(sim: SimHandle, key: dict[str, str]) -> threading.Thread:
    url = f"{sim.url}/api/public/projects/{sim.projects[0].id}/apiKeys/{key['id']}"
    thread = threading.Thread(target=lambda: httpx.delete(url, auth=sim.org_auth, timeout=10))
    thread.start()
    return thread


def test_request_inside_race_window_recaches_the_deleted_key(sim: SimHandle) -> None:
    # A wide window, so a loaded machine still lands the probe inside it: the background DELETE
    # gets 1 s to start and evict, and the row is dropped only 3 s after that.
    sim.configure(race_window_s=3.0)
    key = _create(sim)
    deleting = _delete_in_background(sim, key)
    time.sleep(1.0)  # the DELETE has evicted the cache entry but not yet dropped the row
    assert _probe(sim, key) == 200
    deleting.join()
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
    sim.configure(stale_after_delete=True, cache_ttl_s=1)
    key = _create(sim)
    _delete(sim, key)
    for _ in range(5):  # 1.5 s in total, well past the 1 s TTL: GETEX keeps sliding it
        time.sleep(0.3)
        assert _probe(sim, key) == 200


def test_stale_revoked_key_is_rejected_after_ttl_without_use(sim: SimHandle) -> None:
    sim.configure(stale_after_delete=True, cache_ttl_s=1)
    key = _create(sim)
    _delete(sim, key)
    assert _probe(sim, key) == 200
    time.sleep(1.3)
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
    sim.configure(cache_mode="fixed", cache_ttl_s=1, stale_after_delete=True)
    key = _create(sim)
    _delete(sim, key)
    deadline = time.monotonic() + 0.8
    while time.monotonic() < deadline:
        assert _probe(sim, key) == 200
        time.sleep(0.2)
    time.sleep(0.4)
    assert _probe(sim, key) == 401


def test_fixed_mode_race_window_serves_cached_entry_only_until_eviction(sim: SimHandle) -> None:
    sim.configure(cache_mode="fixed", race_window_s=0.6)
    key = _create(sim)
    assert _probe(sim, key) == 200  # cached
    deleting = _delete_in_background(sim, key)
    time.sleep(0.2)  # row is gone, eviction pending
    assert _probe(sim, key) == 200
    deleting.join()
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
