"""One rotation per key at a time, with real concurrent processes.

Runs on one host share a lock directory (``LANGFUSE_ROTATE_LOCK_DIR``): the host-local flock
excludes them. Runs "on another host" get their own lock directory, so only the entry's Prefect
global concurrency limit stands between them. Underneath, the store's check-and-set fences every
write. A loser changes nothing: it exits 3 with "rotation already in progress" (``status:
in_progress``), and exactly one new key is created.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from connectors.keypair import KeyPair
from connectors.store import SecretLocation
from devstack.prefect_server import PrefectServer
from tests.fixtures.devstack import HealthStub
from tests.fixtures.rotation import ENTRY, RotationEnv

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
IN_PROGRESS = 3


def gate(env: RotationEnv, stub: HealthStub, name: str = "api") -> None:
    """Make ``stub`` the entry's only consumer, reporting the old key: a rotation then holds its
    lock in wait_for_restarts until ``open_gate`` - the test decides when the winner may finish."""
    stub.set(mode="ok", public_key=env.current().public_key)
    env.consumers = [{"name": name, "health_url": stub.health_url, "restart_url": stub.restart_url}]
    env.entry_overrides = {"wait_timeout_s": 120}


def open_gate(stub: HealthStub, store: Any, location: SecretLocation) -> None:
    """The consumer reports the key the store now serves (the winner's new key)."""
    stub.set(public_key=store.describe(location).current_public_key)


def wait_until(predicate: Any, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


def start(env: RotationEnv, *args: str, host: str, prefect: bool) -> subprocess.Popen[str]:
    """``langfuse-rotate ARGS`` as its own process, on ``host`` (a lock directory of its own)."""
    child = dict(env.prefect_env if prefect and env.prefect_env else env.env)
    child["LANGFUSE_ROTATE_LOCK_DIR"] = str(env.tmp / f"locks-{host}")
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli.main", *args, "--json"],
        env=child,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 180) -> tuple[int, dict[str, Any], str]:
    stdout, stderr = proc.communicate(timeout=timeout)
    lines = stdout.strip().splitlines()
    assert lines, f"no output (rc={proc.returncode}): {stderr[-3000:]}"
    return proc.returncode, json.loads(lines[-1]), stdout + stderr[-3000:]


def created_keys(env: RotationEnv) -> list[dict[str, Any]]:
    path = f"/api/public/projects/{env.project.id}/apiKeys"
    return [r for r in env.sim.requests()["requests"] if r["method"] == "POST" and r["path"] == path]


def assert_one_winner(outcomes: list[tuple[int, dict[str, Any], str]], winning_status: str) -> dict[str, Any]:
    winners = [o for o in outcomes if o[0] == 0]
    losers = [o for o in outcomes if o[0] != 0]
    assert len(winners) == 1, "\n\n".join(o[2] for o in outcomes)
    assert winners[0][1]["status"] == winning_status
    for code, result, output in losers:
        assert code == IN_PROGRESS, output
        assert result["status"] == "in_progress"
        assert "rotation already in progress" in (result["error"] or ""), output
        assert result["new_public_key"] is None, "a loser must not have created anything"
    return winners[0][1]


def assert_rotated_once(env: RotationEnv, old_public_key: str, old_version: Any, winner: dict[str, Any]) -> None:
    assert len([r for r in created_keys(env) if r["status"] in (200, 201)]) == 1, "exactly one key created"
    assert [k["publicKey"] for k in env.project_keys()] == [winner["new_public_key"]]
    desc = env.store.store.describe(env.location)
    assert desc.pending is None
    assert desc.current_public_key == winner["new_public_key"] != old_public_key
    assert desc.current_version == winner["store_version"]
    assert desc.previous_version == old_version, "one promotion on top of the old version, nothing else"
    assert env.works(env.current())


@pytest.fixture
def prefect_env(rotation_env: RotationEnv, prefect_server: PrefectServer) -> RotationEnv:
    rotation_env.prefect_env = prefect_server.client_env(rotation_env.env)
    return rotation_env


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_three_rotations_started_at_once_on_two_hosts_rotate_the_key_once(
    prefect_env: RotationEnv, health_stub: HealthStub
) -> None:
    env = prefect_env
    gate(env, health_stub)
    before = env.store.store.describe(env.location)
    config = str(env.write_config())
    args = ("rotate", "--config", config, "--project", ENTRY)

    procs = [start(env, *args, host=h, prefect=True) for h in ("a", "a", "b")]
    wait_until(lambda: sum(p.poll() is not None for p in procs) == 2, "two of the three gave up")
    open_gate(health_stub, env.store.store, env.location)
    outcomes = [finish(p) for p in procs]

    winner = assert_one_winner(outcomes, "rotated")
    assert_rotated_once(env, before.current_public_key or "", before.current_version, winner)
    loser_errors = " ".join(o[1]["error"] for o in outcomes if o[0] != 0)
    assert "Prefect concurrency limit" in loser_errors, "the run on host b was stopped by Prefect's limit"


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_reconcile_on_another_host_waits_for_a_live_rotation_instead_of_rolling_it_back(
    prefect_env: RotationEnv, health_stub: HealthStub
) -> None:
    env = prefect_env
    gate(env, health_stub)
    before = env.store.store.describe(env.location)
    config = str(env.write_config())
    rotation = start(env, "rotate", "--config", config, "--project", ENTRY, host="a", prefect=True)
    wait_until(lambda: env.store.store.describe(env.location).pending_promoted, "the rotation promoted")

    reconcile = start(env, "reconcile", "--config", config, "--project", ENTRY, host="b", prefect=True)
    code, result, output = finish(reconcile)

    assert code == IN_PROGRESS and result["status"] == "in_progress", output
    assert "rotation already in progress" in result["error"]
    open_gate(health_stub, env.store.store, env.location)
    winner = finish(rotation)
    assert winner[0] == 0 and winner[1]["status"] == "rotated", winner[2]
    assert_rotated_once(env, before.current_public_key or "", before.current_version, winner[1])


def test_two_emergencies_without_prefect_started_at_once_contain_the_key_once(
    rotation_env: RotationEnv, health_stub: HealthStub
) -> None:
    """The loser waits for the winner (emergencies wait up to 30 s for the lock) and must then not
    take the pair the winner just put in place for the compromised one."""
    env = rotation_env
    gate(env, health_stub)
    before = env.store.store.describe(env.location)
    config = str(env.write_config())
    args = ("emergency", "--config", config, "--project", ENTRY, "--no-prefect")

    procs = [start(env, *args, host="a", prefect=False) for _ in range(2)]
    wait_until(
        lambda: env.store.store.describe(env.location).current_public_key != before.current_public_key,
        "an emergency replaced the key",
    )
    # The winner wrote its last handover request before it replaced the key; a request written
    # since comes from the other emergency, asking for the lock the winner holds (it refreshes it
    # about once a second while it queues).
    winners_request = env.store.store.read_handover(env.location)
    wait_until(
        lambda: (now := env.store.store.read_handover(env.location)) is not None and now != winners_request,
        "the other emergency queues for the lock",
    )
    open_gate(health_stub, env.store.store, env.location)
    outcomes = [finish(p) for p in procs]

    winner = assert_one_winner(outcomes, "contained")
    assert winner["old_public_key"] == before.current_public_key
    assert_rotated_once(env, before.current_public_key or "", before.current_version, winner)


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_rotations_of_two_different_entries_run_side_by_side(prefect_env: RotationEnv, health_stub: HealthStub) -> None:
    env = prefect_env
    other = env.sim.projects[1]
    other_location = SecretLocation(path=f"{env.path}-search")
    env.store.store.seed(
        other_location,
        KeyPair.model_validate({"public_key": other.public_key, "secret_key": other.secret_key}),
        env.sim.url,
    )
    gate(env, health_stub)
    other_stub = HealthStub().set(mode="ok", public_key=other.public_key)
    try:
        other_consumer = {"name": "search", "health_url": other_stub.health_url, "restart_url": other_stub.restart_url}
        env.extra_entries = [
            {
                **env.entry(),
                "name": "search-prod",
                "project_id": other.id,
                "path": other_location.path,
                "consumers": [other_consumer],
            },
        ]
        config = str(env.write_config())

        procs = [
            start(env, "rotate", "--config", config, "--project", name, host="a", prefect=True)
            for name in (ENTRY, "search-prod")
        ]
        wait_until(
            lambda: (
                env.store.store.describe(env.location).pending_promoted
                and env.store.store.describe(other_location).pending_promoted
            ),
            "both rotations are in flight at once",
        )
        open_gate(health_stub, env.store.store, env.location)
        open_gate(other_stub, env.store.store, other_location)
        outcomes = [finish(p) for p in procs]
    finally:
        other_stub.stop()

    for code, result, output in outcomes:
        assert code == 0 and result["status"] == "rotated", output
    assert env.current().public_key == outcomes[0][1]["new_public_key"]
    assert env.store.store.describe(other_location).current_public_key == outcomes[1][1]["new_public_key"]
