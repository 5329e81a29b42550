"""A rotation SIGKILLed wherever it changes state is finished or undone by the next run.

Each case kills the rotator at one of ``flows.rotation.crashpoints.POINTS`` (``LANGFUSE_ROTATE_CRASH_AT``),
then runs it again without the variable, against Vault (OpenBao) and AWS (moto). Afterwards the
entry must be clean: exactly one live Langfuse key for the project, which is the store's current
key and authenticates; nothing staged; no key this tool created left over. A demo consumer (a real
service that re-reads the store on restart) sends a trace every 0.1 s the whole time; the old key
was never revoked before it switched if none of its exports was ever rejected.

Nothing of the crashed run survives in memory: Prefect transactions die with the process. The
rerun has only the durable state to go on: the write-ahead record in the store and Langfuse's key
list. The matrix runs the checklist in a child process with the in-process runner
(``tests.direct_cli``); the cases marked "through Prefect" use the real command line against the
session Prefect server, where the killed run also leaves its concurrency slot behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from devstack.consumer import ConsumerProcess, start_consumer_process
from devstack.prefect_server import PrefectServer
from flows.rotation.crashpoints import CRASH_ENV_VAR, POINTS
from flows.rotation.lock import lock_name
from flows.rotation.steps import parse_note
from tests.fixtures.rotation import ENTRY, RotationEnv

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
OTEL_PATH = "/api/public/otel/v1/traces"
KILLED = -9
ROLLBACK_POINTS = ("after_store_rollback", "after_rollback_restarts")
EMERGENCY_ONLY = ("after_take_over",)  # tests/scenarios/test_emergency_takeover_crash.py
ROTATION_POINTS = tuple(p for p in POINTS if p not in {*ROLLBACK_POINTS, *EMERGENCY_ONLY, "after_orphan_delete"})


# --- helpers ------------------------------------------------------------------------------------


def run_direct(
    env: RotationEnv, kind: str, *, crash_at: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The checklist in a child process without Prefect; ``crash_at`` makes it SIGKILL itself."""
    child_env = {k: v for k, v in env.env.items() if k != CRASH_ENV_VAR}
    if crash_at is not None:
        child_env[CRASH_ENV_VAR] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "tests.direct_cli", kind, "--config", str(env.write_config()), "--project", ENTRY],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def last_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no output (rc={proc.returncode}): {proc.stderr[-2000:]}"
    data: dict[str, Any] = json.loads(lines[-1])
    return data


def killed(proc: subprocess.CompletedProcess[str], point: str) -> None:
    assert proc.returncode == KILLED, (
        f"expected the run to SIGKILL itself at {point}, got rc={proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    )


def assert_clean(env: RotationEnv, *, current_public_key: str) -> None:
    """One live key for the project: the store's current one, working; nothing staged or left over."""
    keys = env.project_keys()
    assert [k["publicKey"] for k in keys] == [current_public_key], f"live keys: {keys}"
    current = env.current()
    assert current.public_key == current_public_key
    assert env.works(current), "the stored current pair must authenticate"
    assert env.store.store.describe(env.location).pending is None, "nothing may stay staged"
    sim_keys = env.sim.keys()
    ours = [k for k in sim_keys if (parse_note(k.get("note")) or ("",))[0] == ENTRY]
    assert [k["publicKey"] for k in ours if k["publicKey"] != current_public_key] == [], "orphan keys left"


def consumer_exports(env: RotationEnv) -> list[dict[str, Any]]:
    return [r for r in env.sim.requests()["requests"] if r["path"] == OTEL_PATH]


def assert_consumer_never_rejected(env: RotationEnv, consumer: ConsumerProcess, expected_key: str) -> None:
    """The consumer never sent with a revoked key, and now uses ``expected_key``. It kept sending
    after the last key was deleted, so a key deleted under it would have shown as a 401."""
    deletes = [r["seq"] for r in env.sim.requests()["requests"] if r["method"] == "DELETE" and "/apiKeys/" in r["path"]]
    deadline = time.monotonic() + 5
    while deletes and not [r for r in consumer_exports(env) if r["seq"] > deletes[-1]]:
        assert time.monotonic() < deadline, "the consumer stopped sending traces"
        time.sleep(0.1)
    rejected = [r for r in consumer_exports(env) if r["status"] != 200]
    assert rejected == [], f"a consumer export was rejected: the key it used was revoked under it: {rejected}"
    assert httpx.get(consumer.health_url, timeout=5).json()["langfuse_public_key"] == expected_key


def start_consumer(env: RotationEnv, **options: Any) -> ConsumerProcess:
    proc = start_consumer_process(
        name="api", path=env.path, trace_interval_s=0.1, env=env.env, **env.store.consumer_args(), **options
    )
    env.consumers = [{"name": "api", "health_url": proc.health_url, "restart_url": proc.restart_url}]
    return proc


@pytest.fixture
def consumer(rotation_env: RotationEnv) -> Iterator[ConsumerProcess]:
    with start_consumer(rotation_env) as proc:
        yield proc


# --- the matrix: killed during a rotation, finished by the next rotation -------------------------


@pytest.mark.parametrize("point", ROTATION_POINTS)
def test_a_rotation_killed_at_any_point_is_completed_by_the_next_run(
    rotation_env: RotationEnv, consumer: ConsumerProcess, point: str
) -> None:
    env = rotation_env
    old = env.current()

    killed(run_direct(env, "rotate", crash_at=point), point)
    rerun = run_direct(env, "rotate")

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr[-3000:]
    result = last_json(rerun)
    assert result["status"] == "rotated"
    # Killed after finishing, the rotation was complete: the rerun is a new one, not a resume.
    assert result["resumed"] is (point != "after_finish")
    assert result["verified"] is True and result["old_key_rejected"] is True
    assert result["new_public_key"] != old.public_key
    assert_clean(env, current_public_key=result["new_public_key"])
    assert not env.works(old), "the original pair must be revoked"
    assert_consumer_never_rejected(env, consumer, result["new_public_key"])


# --- killed during a rollback --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("any_store", "point"), [("vault", ROLLBACK_POINTS[0]), ("aws", ROLLBACK_POINTS[1])], indirect=["any_store"]
)
def test_a_rollback_killed_before_deleting_the_new_key_is_cleaned_up_by_the_next_run(
    rotation_env: RotationEnv, point: str
) -> None:
    env = rotation_env
    old = env.current()
    with start_consumer(env, ignore_restart=True) as stuck:  # never adopts the new key: the run rolls back
        env.entry_overrides = {"wait_timeout_s": 1.5}

        killed(run_direct(env, "rotate", crash_at=point), point)
        abandoned = [k["publicKey"] for k in env.project_keys() if k["publicKey"] != old.public_key]
        assert len(abandoned) == 1, "the killed rollback left its new key in Langfuse"
        rerun = run_direct(env, "rotate")

        result = last_json(rerun)
        assert rerun.returncode == 1 and result["status"] == "rolled_back", rerun.stdout
        assert any(abandoned[0] in action for action in result["reconciled"]), result["reconciled"]
        assert_clean(env, current_public_key=old.public_key)
        assert_consumer_never_rejected(env, stuck, old.public_key)


@pytest.mark.parametrize("any_store", ["aws"], indirect=True)
def test_a_rollback_killed_before_consumers_moved_back_does_not_revoke_the_key_they_use(
    rotation_env: RotationEnv, consumer: ConsumerProcess
) -> None:
    """The consumer adopted the new key, verify failed, the rollback restored the store and died:
    the new key is an orphan now, but the consumer still sends with it. Reconcile moves the
    consumer back to the current pair before it deletes the key."""
    env = rotation_env
    old = env.current()
    env.sim.configure(otel_delay_s=60)  # the canary never becomes readable: verify fails after the switch
    env.entry_overrides = {"canary_timeout_s": 1}

    killed(run_direct(env, "rotate", crash_at="after_store_rollback"), "after_store_rollback")
    new_key = next(k["publicKey"] for k in env.project_keys() if k["publicKey"] != old.public_key)
    assert httpx.get(consumer.health_url, timeout=5).json()["langfuse_public_key"] == new_key
    reconciled = env.cli("reconcile", "--config", str(env.write_config()), "--project", ENTRY, "--json")

    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
    assert last_json(reconciled)["status"] == "reconciled"
    assert_clean(env, current_public_key=old.public_key)
    assert_consumer_never_rejected(env, consumer, old.public_key)


# --- reconcile alone ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("any_store", "crash_at", "live_keys_after_kill", "action", "ends_on", "consumer_options"),
    [
        pytest.param("aws", "after_verify", 2, "rolled back unfinished rotation", "old", {}, id="before-revoke"),
        pytest.param("vault", "after_delete", 1, "finished rotation", "new", {}, id="after-delete"),
        # The consumer never switches: the rotation rolls back and is killed once the store is
        # restored, leaving the new key behind.
        pytest.param(
            "vault", "after_store_rollback", 2, "deleted orphan key", "old", {"ignore_restart": True}, id="mid-rollback"
        ),
    ],
    indirect=["any_store"],
)
def test_reconcile_alone_returns_a_killed_rotation_to_its_last_good_state(
    rotation_env: RotationEnv,
    crash_at: str,
    live_keys_after_kill: int,
    action: str,
    ends_on: str,
    consumer_options: dict[str, Any],
) -> None:
    env = rotation_env
    old = env.current()
    with start_consumer(env, **consumer_options) as consumer:
        if consumer_options:
            env.entry_overrides = {"wait_timeout_s": 1.5}
        killed(run_direct(env, "rotate", crash_at=crash_at), crash_at)
        assert len(env.project_keys()) == live_keys_after_kill
        new_key = env.current().public_key

        proc = env.cli("reconcile", "--config", str(env.write_config()), "--project", ENTRY, "--json")

        assert proc.returncode == 0, proc.stdout + proc.stderr
        result = last_json(proc)
        assert result["status"] == "reconciled"
        assert any(action in done for done in result["reconciled"]), result
        if ends_on == "new":
            assert new_key != old.public_key
        expected = old.public_key if ends_on == "old" else new_key
        assert_clean(env, current_public_key=expected)
        assert_consumer_never_rejected(env, consumer, expected)


@pytest.mark.parametrize("any_store", ["aws"], indirect=True)
def test_a_reconcile_killed_between_deleting_orphan_keys_is_finished_by_the_next_one(
    rotation_env: RotationEnv,
) -> None:
    from connectors.keypair import KeyPair
    from connectors.langfuse import LangfuseAdminClient
    from flows.rotation.steps import key_note

    env = rotation_env
    old = env.current()
    # Two keys crashed runs of this entry created and nothing tracks any more.
    with LangfuseAdminClient(env.sim.url, env.sim.org_public_key, SecretStr(env.sim.org_secret_key)) as admin:
        for run in ("crashed-1", "crashed-2"):
            admin.create_api_key(env.project.id, KeyPair.generate(), key_note(ENTRY, run, "local"))
    assert len(env.project_keys()) == 3

    killed(run_direct(env, "reconcile", crash_at="after_orphan_delete"), "after_orphan_delete")
    assert len(env.project_keys()) == 2, "the killed reconcile deleted one orphan"
    rerun = run_direct(env, "reconcile")

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr[-3000:]
    result = last_json(rerun)
    assert result["status"] == "reconciled"
    assert len([a for a in result["reconciled"] if a.startswith("deleted orphan key")]) == 1
    assert_clean(env, current_public_key=old.public_key)


@pytest.mark.parametrize("point", ["after_create", "after_promote"])
@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_reconcile_finishes_an_emergency_killed_before_revoking_instead_of_restoring_the_compromised_key(
    rotation_env: RotationEnv, point: str
) -> None:
    env = rotation_env
    compromised = env.current()
    killed(run_direct(env, "emergency", crash_at=point), point)

    proc = env.cli("reconcile", "--config", str(env.write_config()), "--project", ENTRY, "--json")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = last_json(proc)
    assert result["status"] == "reconciled" and result["old_key_rejected"] is True, result
    assert not env.works(compromised), "the compromised key must end up revoked, not current again"
    assert_clean(env, current_public_key=env.current().public_key)
    assert env.current().public_key != compromised.public_key


@pytest.mark.parametrize("any_store", ["aws"], indirect=True)
def test_a_rotation_started_after_a_killed_emergency_never_restores_the_compromised_key(
    rotation_env: RotationEnv,
) -> None:
    """The rerun's verification fails (slow canary): a scheduled rotation would roll back, making
    the compromised key current again; the emergency is carried through and reports the problem."""
    env = rotation_env
    compromised = env.current()
    killed(run_direct(env, "emergency", crash_at="after_promote"), "after_promote")
    env.sim.configure(otel_delay_s=60)
    env.entry_overrides = {"canary_timeout_s": 1}

    rerun = run_direct(env, "rotate")

    result = last_json(rerun)
    assert rerun.returncode == 4 and result["status"] == "needs_attention", rerun.stdout
    assert result["mode"] == "emergency" and result["resumed"] is True
    assert "verify failed" in result["error"]
    assert not env.works(compromised), "the compromised key is revoked"
    assert env.current().public_key == result["new_public_key"] != compromised.public_key
    assert [k["publicKey"] for k in env.project_keys()] == [result["new_public_key"]]


# --- resuming must never go back past the point of no return --------------------------------------


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_a_resumed_rotation_whose_old_key_is_gone_finishes_instead_of_rolling_back(
    rotation_env: RotationEnv, consumer: ConsumerProcess
) -> None:
    """Killed after deleting the old key; on the rerun the canary is slow. Rolling back now would
    restore a pair Langfuse no longer accepts and delete the only live key; claiming success would
    report a verification that failed. The rerun needs a person; once the canary is readable again,
    the next one finishes."""
    env = rotation_env
    killed(run_direct(env, "rotate", crash_at="after_delete"), "after_delete")
    new_key = env.current().public_key
    env.sim.configure(otel_delay_s=60)
    env.entry_overrides = {"canary_timeout_s": 1}

    rerun = run_direct(env, "rotate")

    result = last_json(rerun)
    assert rerun.returncode == 4 and result["status"] == "needs_attention", rerun.stdout
    assert result["new_public_key"] == new_key and result["verified"] is False
    assert "verify failed" in result["error"] and "nothing was rolled back" in result["error"]
    assert env.current().public_key == new_key and env.works(env.current())

    env.sim.configure(otel_delay_s=0)
    again = run_direct(env, "rotate")

    assert again.returncode == 0 and last_json(again)["status"] == "rotated", again.stdout
    assert last_json(again)["verified"] is True
    assert_clean(env, current_public_key=new_key)
    assert_consumer_never_rejected(env, consumer, new_key)


@pytest.mark.parametrize("any_store", ["aws"], indirect=True)
def test_a_rollback_refuses_to_restore_an_old_pair_langfuse_no_longer_has(rotation_env: RotationEnv) -> None:
    from flows.config.model import load_config
    from flows.models import RotationPlan
    from flows.rotation.context import EntryContext
    from flows.rotation.steps import rollback

    env = rotation_env
    old = env.current()
    killed(run_direct(env, "rotate", crash_at="after_delete"), "after_delete")
    pending = env.store.store.describe(env.location).pending
    assert pending is not None
    config = load_config(env.write_config())
    ctx = EntryContext(config, config.entry(ENTRY))
    plan = RotationPlan(
        rotation_id=pending.rotation_id,
        entry=ENTRY,
        project_id=env.project.id,
        mode="scheduled",
        store_name="main",
        store_location=ctx.store_label,
        old_public_key=pending.old_public_key,
        old_version=pending.old_version,
        new_public_key=pending.new_public_key,
        resumed=True,
    )
    try:
        outcome = rollback(ctx, plan)
    finally:
        ctx.close()

    assert not outcome.store_restored and not outcome.new_key_deleted
    assert old.public_key in outcome.errors[0] and "already deleted" in outcome.errors[0]
    assert env.current().public_key == pending.new_public_key
    assert env.works(env.current()), "the only live key must stay current and alive"


# --- through Prefect: the real command line, and the killed run's concurrency slot ---------------


@pytest.fixture
def prefect_env(rotation_env: RotationEnv, prefect_server: PrefectServer) -> RotationEnv:
    rotation_env.prefect_env = prefect_server.client_env(rotation_env.env)
    return rotation_env


def active_slots(entry: str) -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return int(client.read_global_concurrency_limit_by_name(lock_name(entry)).active_slots)


@pytest.mark.parametrize(
    ("any_store", "point"), [("vault", "after_promote"), ("aws", "after_delete")], indirect=["any_store"]
)
def test_a_rotation_killed_under_prefect_is_completed_by_the_next_cli_run_without_waiting_for_its_lease(
    prefect_env: RotationEnv, consumer: ConsumerProcess, point: str
) -> None:
    env = prefect_env
    old = env.current()
    config = str(env.write_config())
    # The killed run holds the entry's Prefect concurrency slot until its lease (300 s) expires.
    killed(env.cli("rotate", "--config", config, "--project", ENTRY, "--json", env={CRASH_ENV_VAR: point}), point)
    assert active_slots(ENTRY) == 1

    rerun = env.cli("rotate", "--config", config, "--project", ENTRY, "--json")

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr[-3000:]
    result = last_json(rerun)
    assert result["status"] == "rotated" and result["resumed"] is True
    assert result["prefect_flow_run_id"]
    assert_clean(env, current_public_key=result["new_public_key"])
    assert not env.works(old)
    assert_consumer_never_rejected(env, consumer, result["new_public_key"])
    assert active_slots(ENTRY) == 0, "the rerun released the stale slot and its own"
