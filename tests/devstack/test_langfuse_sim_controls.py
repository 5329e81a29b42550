"""Langfuse simulator: `/_sim/` controls, fault injection, rate limits, health, persistence and the CLI."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from devstack.langfuse_sim import Simulator
from tests.fixtures.langfuse_sim import SimHandle, start_sim_process, stop_sim_process

JS_DATE = re.compile(
    r"^[A-Z][a-z]{2} [A-Z][a-z]{2} \d{2} \d{4} \d{2}:\d{2}:\d{2} GMT\+0000 \(Coordinated Universal Time\)$"
)


def _keys_path(sim: SimHandle, index: int = 0) -> str:
    return f"/api/public/projects/{sim.projects[index].id}/apiKeys"


def _notes(sim: SimHandle) -> list[str | None]:
    rows = sim.control.keys()
    return [row["note"] for row in rows]


def _key_ids(sim: SimHandle) -> set[str]:
    rows = sim.control.keys()
    return {row["id"] for row in rows}


def _probe(sim: SimHandle, auth: tuple[str, str]) -> int:
    return sim.http.get("/api/public/projects", auth=auth).status_code


# -- faults --------------------------------------------------------------------------------------
def test_fault_fails_the_next_count_requests_then_recovers(sim: SimHandle) -> None:
    sim.inject_fault("/api/public/projects", status=503, count=2, retry_after=7)
    for _ in range(2):
        failed = sim.http.get("/api/public/projects", auth=sim.project_auth())
        assert (failed.status_code, failed.headers["Retry-After"]) == (503, "7")
    assert _probe(sim, sim.project_auth()) == 200


def test_fault_method_filter_leaves_other_methods_alone(sim: SimHandle) -> None:
    sim.inject_fault("/api/public/projects", method="POST", status=500)
    assert sim.http.get(_keys_path(sim), auth=sim.org_auth).status_code == 200
    assert sim.http.post(_keys_path(sim), json={}, auth=sim.org_auth).status_code == 500


def test_fault_after_processes_the_request_then_fails_it(sim: SimHandle) -> None:
    sim.inject_fault(_keys_path(sim), method="POST", status=503, after=True)
    response = sim.http.post(_keys_path(sim), json={"note": "ambiguous"}, auth=sim.org_auth)
    assert response.status_code == 503
    assert "ambiguous" in _notes(sim)


def test_fault_drop_closes_the_connection_without_a_response(sim: SimHandle) -> None:
    sim.inject_fault(_keys_path(sim), method="POST", drop=True)
    with pytest.raises(httpx.RemoteProtocolError):
        sim.http.post(_keys_path(sim), json={"note": "dropped"}, auth=sim.org_auth)
    assert "dropped" not in _notes(sim)


def test_fault_drop_after_processing_still_creates_the_key(sim: SimHandle) -> None:
    sim.inject_fault(_keys_path(sim), method="POST", drop=True, after=True)
    with pytest.raises(httpx.RemoteProtocolError):
        sim.http.post(_keys_path(sim), json={"note": "created-then-dropped"}, auth=sim.org_auth)
    assert "created-then-dropped" in _notes(sim)


def test_fault_delay_makes_a_short_timeout_client_time_out(sim: SimHandle) -> None:
    sim.inject_fault("/api/public/health", status=None, delay_s=0.6)
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{sim.url}/api/public/health", timeout=0.2)


def test_delay_only_fault_still_answers_normally(sim: SimHandle) -> None:
    sim.inject_fault("/api/public/health", status=None, delay_s=0.2)
    assert sim.http.get("/api/public/health").json()["status"] == "OK"


def test_request_started_before_a_reset_is_not_logged_after_it(sim: SimHandle) -> None:
    sim.inject_fault("/api/public/health", status=None, delay_s=0.4)
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{sim.url}/api/public/health", timeout=0.1)
    sim.control.reset()
    time.sleep(0.5)
    assert sim.requests()["requests"] == []


def test_clear_faults_removes_pending_faults(sim: SimHandle) -> None:
    sim.inject_fault("/api/public/health", status=500, count=5)
    assert len(sim.control.faults()) == 1
    sim.control.clear_faults()
    assert sim.http.get("/api/public/health").status_code == 200


def test_invalid_fault_is_400(sim: SimHandle) -> None:
    response = sim.http.post("/_sim/faults", json={"path_prefix": "no-slash"})
    assert response.status_code == 400


# -- request log, config, reset, secrets ----------------------------------------------------------
def test_requests_log_records_status_and_authenticating_public_key(sim: SimHandle) -> None:
    _probe(sim, sim.project_auth())
    _probe(sim, ("pk-lf-x", "sk-lf-x"))
    log = sim.requests()
    assert [(r["path"], r["status"], r["public_key"]) for r in log["requests"]] == [
        ("/api/public/projects", 200, sim.projects[0].public_key),
        ("/api/public/projects", 401, None),
    ]
    assert log["next"] == 2


def test_requests_since_returns_only_newer_entries(sim: SimHandle) -> None:
    _probe(sim, sim.project_auth())
    cursor = sim.requests()["next"]
    sim.http.get("/api/public/health")
    newer = sim.requests(since=cursor)["requests"]
    assert [r["path"] for r in newer] == ["/api/public/health"]


def test_config_rejects_unknown_keys(sim: SimHandle) -> None:
    response = sim.http.post("/_sim/config", json={"cache_mode": "fixed", "bogus": 1})
    assert response.status_code == 400
    assert sim.control.config()["cache_mode"] == "snapshot"


def test_reset_restores_the_bootstrap_state(sim: SimHandle) -> None:
    bootstrap_keys = sim.keys()
    bootstrap_key_id = next(r["id"] for r in bootstrap_keys if r["publicKey"] == sim.projects[0].public_key)
    sim.http.post(_keys_path(sim), json={"note": "extra"}, auth=sim.org_auth)
    sim.http.delete(f"{_keys_path(sim)}/{bootstrap_key_id}", auth=sim.org_auth)
    sim.configure(events_only=True, cache_mode="off")
    sim.inject_fault("/api/public/health", status=500)
    sim.control.reset()
    assert sim.keys() == bootstrap_keys
    assert _probe(sim, sim.project_auth()) == 200
    config = sim.control.config()
    assert (config["events_only"], config["cache_mode"], config["ingestion_delay_s"]) == (False, "snapshot", 5.0)
    assert sim.control.faults() == []
    assert sim.requests()["requests"] == [
        {
            "seq": 1,
            "method": "GET",
            "path": "/api/public/projects",
            "status": 200,
            "public_key": sim.projects[0].public_key,
        }
    ]


def test_reset_empties_the_cache(sim: SimHandle) -> None:
    sim.configure(stale_after_delete=True)
    created = sim.http.post(_keys_path(sim), json={}, auth=sim.org_auth).json()
    sim.http.delete(f"{_keys_path(sim)}/{created['id']}", auth=sim.org_auth)
    sim.control.reset()
    assert _probe(sim, (created["publicKey"], created["secretKey"])) == 401


def test_control_endpoints_never_return_secrets(sim: SimHandle) -> None:
    created = sim.http.post(_keys_path(sim), json={}, auth=sim.org_auth).json()
    _probe(sim, (created["publicKey"], created["secretKey"]))
    secrets = [created["secretKey"], sim.org_secret_key, *(p.secret_key for p in sim.projects)]
    for path in ("/_sim/keys", "/_sim/requests", "/_sim/config", "/_sim/faults", "/_sim/bootstrap"):
        text = sim.http.get(path).text
        assert not any(secret in text for secret in secrets), path
        assert not re.search(r"sk-lf-[0-9a-f]{8}-", text), path


def _non_loopback_address() -> str | None:
    """The source address for a non-loopback route (UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_control_endpoints_refuse_non_loopback_clients() -> None:
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    with Simulator(host="0.0.0.0") as local:
        port = local.url.rsplit(":", 1)[1]
        response = httpx.get(f"http://{address}:{port}/_sim/keys")
        assert response.status_code == 404
        assert httpx.get(f"http://127.0.0.1:{port}/_sim/keys").status_code == 200


# -- rate limits -----------------------------------------------------------------------------------
def test_rate_limit_429_has_retry_after_ratelimit_headers_and_body(sim: SimHandle) -> None:
    sim.configure(rate_limits={"public-api": [2, 60]})
    for _ in range(2):
        assert sim.http.get("/api/public/organizations/projects", auth=sim.org_auth).status_code == 200
    limited = sim.http.get("/api/public/organizations/projects", auth=sim.org_auth)
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert (limited.headers["X-RateLimit-Limit"], limited.headers["X-RateLimit-Remaining"]) == ("2", "0")
    assert JS_DATE.match(limited.headers["X-RateLimit-Reset"])
    body = limited.json()
    assert (body["message"], body["code"]) == ("Rate limit exceeded", "rate_limited")
    assert body["details"]["limit"] == 2 and body["details"]["remaining"] == 0
    assert body["details"]["retryAfterSeconds"] == int(limited.headers["Retry-After"])
    assert re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$", body["details"]["resetAt"])


def test_get_projects_is_never_rate_limited(sim: SimHandle) -> None:
    sim.configure(rate_limits={"public-api": [1, 60], "public-api-legacy": [1, 60], "ingestion": [1, 60]})
    assert all(_probe(sim, sim.project_auth()) == 200 for _ in range(5))


def test_rate_limit_is_per_resource(sim: SimHandle) -> None:
    sim.configure(rate_limits={"public-api": [1, 60]})
    sim.http.get("/api/public/organizations/projects", auth=sim.org_auth)
    assert sim.http.get("/api/public/organizations/projects", auth=sim.org_auth).status_code == 429
    ingest = sim.http.post("/api/public/ingestion", json={"batch": []}, auth=sim.project_auth())
    assert ingest.status_code == 207


def test_legacy_trace_reads_get_the_upgrade_path_message(sim: SimHandle) -> None:
    sim.configure(rate_limits={"public-api-legacy": [1, 60]})
    sim.http.get("/api/public/traces", auth=sim.project_auth())
    limited = sim.http.get("/api/public/traces", auth=sim.project_auth())
    assert limited.status_code == 429
    assert limited.json()["message"].startswith("Rate limit exceeded for GET /api/public/traces.")


def test_rate_limit_window_resets(sim: SimHandle) -> None:
    sim.configure(rate_limits={"public-api": [1, 60]})
    sim.http.get("/api/public/organizations/apiKeys", auth=sim.org_auth)
    assert sim.http.get("/api/public/organizations/apiKeys", auth=sim.org_auth).status_code == 429
    sim.control.advance_clock(61)
    assert sim.http.get("/api/public/organizations/apiKeys", auth=sim.org_auth).status_code == 200


# -- the clock and the race window ---------------------------------------------------------------
def test_the_clock_only_moves_forward_and_reset_sets_it_back(sim: SimHandle) -> None:
    before = sim.http.get("/_sim/clock").json()
    assert before["offset_s"] == 0 and abs(before["now"] - time.time()) < 60
    assert sim.control.advance_clock(90) == 90
    assert sim.control.advance_clock(10) == 100
    for bad in ({"advance_s": -1}, {"advance_s": "5"}, {"advance_s": True}, {}, [1]):
        response = sim.http.post("/_sim/clock", json=bad)
        assert (response.status_code, response.json()) == (
            400,
            {"error": 'body must be {"advance_s": <seconds, >= 0>}'},
        )
    sim.control.reset()
    assert sim.http.get("/_sim/clock").json()["offset_s"] == 0


def test_a_delete_waits_out_its_race_window_unless_released(sim: SimHandle) -> None:
    import threading

    sim.configure(race_window_s=60)
    key = sim.http.post(_keys_path(sim), json={}, auth=sim.org_auth).json()
    answers: list[int] = []
    deleting = threading.Thread(
        target=lambda: answers.append(
            httpx.delete(f"{sim.url}{_keys_path(sim)}/{key['id']}", auth=sim.org_auth, timeout=90).status_code
        )
    )
    deleting.start()
    deadline = time.monotonic() + 30
    while sim.control.deletes_in_race_window() == 0:
        assert time.monotonic() < deadline, "the delete never reached its race window"
        time.sleep(0.02)
    assert key["id"] in _key_ids(sim), "snapshot mode drops the row only after the window"

    assert sim.control.release_race_windows() == 1

    deleting.join(30)
    assert answers == [200]
    assert key["id"] not in _key_ids(sim)
    assert sim.control.deletes_in_race_window() == 0


# -- health -----------------------------------------------------------------------------------------
def test_health_is_ok_with_version_without_v(sim: SimHandle) -> None:
    response = sim.http.get("/api/public/health")
    assert (response.status_code, response.json()) == (200, {"status": "OK", "version": "4.16.0"})


def test_health_db_down_only_fails_when_asked_to_check_the_database(sim: SimHandle) -> None:
    sim.configure(health="db_down")
    assert sim.http.get("/api/public/health").status_code == 200
    response = sim.http.get("/api/public/health", params={"failIfDatabaseUnavailable": "true"})
    assert (response.status_code, response.json()["status"]) == (503, "Database not available")


def test_health_fail_is_503_health_check_failed(sim: SimHandle) -> None:
    sim.configure(health="fail")
    response = sim.http.get("/api/public/health")
    assert (response.status_code, response.json()) == (503, {"status": "Health check failed", "version": "4.16.0"})


def test_ready_is_ok(sim: SimHandle) -> None:
    assert sim.http.get("/api/public/ready").json() == {"status": "OK", "version": "4.16.0"}


# -- persistence and CLI ------------------------------------------------------------------------------
def _create_predefined(url: str, bootstrap: dict[str, object], pk: str, sk: str) -> dict[str, str]:
    projects = bootstrap["projects"]
    assert isinstance(projects, list)
    response = httpx.post(
        f"{url}/api/public/projects/{projects[0]['id']}/apiKeys",
        json={"publicKey": pk, "secretKey": sk},
        auth=(str(bootstrap["org_public_key"]), str(bootstrap["org_secret_key"])),
    )
    assert response.status_code == 201
    return dict(response.json())


def test_state_file_keeps_keys_and_bootstrap_secrets_across_restart(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    first = start_sim_process("--state", str(state))
    try:
        _create_predefined(first.url, first.bootstrap, "pk-lf-persisted", "sk-lf-persisted-secret")
    finally:
        stop_sim_process(first.proc)
    second = start_sim_process("--state", str(state))
    try:
        assert {k: v for k, v in second.bootstrap.items() if k != "url"} == {
            k: v for k, v in first.bootstrap.items() if k != "url"
        }
        probe = httpx.get(f"{second.url}/api/public/projects", auth=("pk-lf-persisted", "sk-lf-persisted-secret"))
        assert probe.status_code == 200
    finally:
        stop_sim_process(second.proc)


def test_state_file_stores_only_secret_hashes(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    running = start_sim_process("--state", str(state), "--projects", "2")
    try:
        _create_predefined(running.url, running.bootstrap, "pk-lf-hashed", "sk-lf-never-on-disk")
    finally:
        stop_sim_process(running.proc)
    text = state.read_text()
    assert "sk-lf-never-on-disk" not in text
    assert running.bootstrap["org_secret_key"] not in text
    assert not re.search(r"sk-lf-[0-9a-f]{8}-", text)
    assert (tmp_path / "state.bootstrap.json").stat().st_mode & 0o077 == 0


def test_restart_after_rotating_a_bootstrap_key_prints_a_null_secret(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    first = start_sim_process("--state", str(state))
    try:
        url, boot = first.url, first.bootstrap
        org = (boot["org_public_key"], boot["org_secret_key"])
        project_id = boot["projects"][0]["id"]
        keys = httpx.get(f"{url}/api/public/projects/{project_id}/apiKeys", auth=org).json()["apiKeys"]
        created = _create_predefined(url, boot, "pk-lf-rotated-in", "sk-lf-rotated-in")
        httpx.delete(f"{url}/api/public/projects/{project_id}/apiKeys/{keys[0]['id']}", auth=org)
    finally:
        stop_sim_process(first.proc)
    second = start_sim_process("--state", str(state))
    try:
        (project,) = second.bootstrap["projects"]
        assert (project["public_key"], project["secret_key"]) == (created["publicKey"], None)
        assert second.bootstrap["org_secret_key"] == boot["org_secret_key"]
    finally:
        stop_sim_process(second.proc)


def test_cli_prints_exactly_one_json_line_and_exits_0_on_sigterm() -> None:
    running = start_sim_process("--projects", "3", "--version", "4.16.0")
    try:
        assert set(running.bootstrap) == {
            "url",
            "org_public_key",
            "org_secret_key",
            "org_id",
            "admin_api_key",
            "projects",
        }
        assert running.bootstrap["admin_api_key"] is None
        assert len(running.bootstrap["projects"]) == 3
        running.proc.send_signal(signal.SIGTERM)
        assert running.proc.wait(10) == 0
        assert running.proc.stdout is not None and running.proc.stdout.read() == ""
        assert running.proc.stderr is not None and running.proc.stderr.read() == ""
    finally:
        stop_sim_process(running.proc)


def test_simulator_is_usable_in_process_as_a_context_manager() -> None:
    with Simulator(projects=1, admin_api_key="adm") as local:
        boot = local.bootstrap
        assert boot["url"] == local.url and boot["admin_api_key"] == "adm"
        project = boot["projects"][0]
        response = httpx.get(f"{local.url}/api/public/projects", auth=(project["public_key"], project["secret_key"]))
        assert response.json()["data"][0]["id"] == project["id"]
    assert json.dumps(boot)
