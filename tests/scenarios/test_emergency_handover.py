"""An emergency always goes ahead, even while a scheduled rotation of the same entry holds its lock.

The rotation may be waiting for its consumers (up to ``wait_timeout_s``) or paused for approval
(up to ``approval_timeout_s``). The emergency asks it to hand over through the store, which every
host sees; the rotation stops at its next poll without rolling back, records "superseded by
emergency <run>" and lets go. The emergency carries the staged rotation through as an emergency
and revokes the compromised key. A holder that died is taken over. Real processes throughout.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import uuid
from typing import Any

import pytest

from connectors.prefect_api import PrefectApi
from devstack.prefect_server import PrefectServer
from flows.fleet.group_lease import GroupLeases
from flows.rotation.crashpoints import CRASH_ENV_VAR
from flows.rotation.entry_run import execute
from flows.rotation.lock import lock_name
from flows.rotation.runners import DirectRunner
from tests.fixtures.devstack import HealthStub
from tests.fixtures.prefect import wait_for_paused_run
from tests.fixtures.rotation import ENTRY, RotationEnv
from tests.scenarios.test_concurrency import created_keys, finish, gate, start, wait_until

IN_PROGRESS = 3


def staged_new_key(env: RotationEnv) -> str:
    pending = env.store.store.describe(env.location).pending
    assert pending is not None
    return pending.new_public_key


def assert_carried_through(env: RotationEnv, old_pair: Any, staged: str, emergency: dict[str, Any]) -> None:
    assert emergency["status"] in ("contained", "needs_attention"), emergency
    assert emergency["mode"] == "emergency"
    assert emergency["old_public_key"] == old_pair.public_key and emergency["old_key_rejected"] is True
    assert emergency["new_public_key"] == staged, "the staged rotation is carried through, not a second one"
    assert not env.works(old_pair), "the compromised key gets 401"
    assert env.current().public_key == staged and env.works(env.current())
    assert [k["publicKey"] for k in env.project_keys()] == [staged]
    assert len([r for r in created_keys(env) if r["status"] in (200, 201)]) == 1, "exactly one key created"


def assert_superseded(code: int, result: dict[str, Any], output: str, emergency: dict[str, Any]) -> None:
    assert code == IN_PROGRESS and result["status"] == "in_progress", output
    assert "superseded by emergency" in (result["error"] or ""), output
    assert not any(s["step"] == "rollback" for s in result["steps"]), "the rotation must not roll back"
    [row] = [s for s in result["steps"] if s["step"] == "handover"]
    # whose request it obeyed, and why it counts as a live emergency's
    if emergency["prefect_flow_run_id"]:
        assert emergency["prefect_flow_run_id"] in row["detail"], row
    assert "obeyed: its request is fresh" in row["detail"], row


@pytest.mark.slow  # two real processes, one waiting on the other (rotation/test_handover_watch.py: the quick one)
def test_an_emergency_takes_over_a_rotation_waiting_for_its_consumers(
    rotation_env: RotationEnv, health_stub: HealthStub
) -> None:
    env = rotation_env
    gate(env, health_stub)  # the consumer never switches: the rotation waits up to 120 s
    old = env.current()
    config = str(env.write_config())
    rotation = start(env, "rotate", "--config", config, "--project", ENTRY, host="a", prefect=False)
    wait_until(lambda: env.store.store.describe(env.location).pending_promoted, "the rotation promoted its key")
    staged = staged_new_key(env)

    began = time.monotonic()
    emergency = start(env, "emergency", "--config", config, "--project", ENTRY, "--no-prefect", host="a", prefect=False)
    wait_until(lambda: not env.works(old), "the compromised key is rejected", timeout_s=60)
    contained_after = time.monotonic() - began
    health_stub.set(public_key=staged)
    code, result, output = finish(emergency)
    rotation_outcome = finish(rotation)

    assert contained_after < 60, "the emergency did not wait out the rotation's 120 s consumer wait"
    assert code in (0, 4), output
    assert_carried_through(env, old, staged, result)
    assert_superseded(*rotation_outcome, result)
    assert env.store.store.describe(env.location).pending is None
    assert env.store.store.describe(env.location).handover is None, "the emergency withdrew its request"
    kinds = [n.json["type"] for n in env.sink.received() if n.json["title"].startswith("EMERGENCY")]
    assert kinds, "the emergency notified"


@pytest.mark.slow  # two real processes, one waiting on the other
@pytest.mark.parametrize("any_store", ["aws"], indirect=True)
def test_a_rotation_on_another_host_hands_over_through_the_store(
    rotation_env: RotationEnv, health_stub: HealthStub
) -> None:
    """Different lock directories: only the store carries the request."""
    env = rotation_env
    gate(env, health_stub)
    old = env.current()
    config = str(env.write_config())
    rotation = start(env, "rotate", "--config", config, "--project", ENTRY, host="a", prefect=False)
    wait_until(lambda: env.store.store.describe(env.location).pending_promoted, "the rotation promoted its key")
    staged = staged_new_key(env)

    emergency = start(env, "emergency", "--config", config, "--project", ENTRY, "--no-prefect", host="b", prefect=False)
    wait_until(lambda: not env.works(old), "the compromised key is rejected", timeout_s=60)
    # On another host nothing holds the emergency back: it contains while the rotation is still
    # waiting for its consumer. The consumer switches only once the rotation has let go (it sees
    # the request within a second), or the rotation could see it switched first and finish.
    rotation_outcome = finish(rotation)
    health_stub.set(public_key=staged)
    code, result, output = finish(emergency)

    assert code in (0, 4), output
    assert_carried_through(env, old, staged, result)
    assert_superseded(*rotation_outcome, result)


@pytest.mark.slow
@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_an_emergency_takes_over_a_rotation_paused_for_approval(
    rotation_env: RotationEnv, prefect_server: PrefectServer
) -> None:
    from prefect.client.orchestration import get_client

    env = rotation_env
    env.prefect_env = prefect_server.client_env(env.env)
    env.entry_overrides = {"approval": "required", "approval_timeout_s": 600}
    old = env.current()
    config = str(env.write_config())
    rotation = start(env, "rotate", "--config", config, "--project", ENTRY, host="a", prefect=True)
    paused = wait_for_paused_run(config, rotation)
    staged = staged_new_key(env)

    emergency = start(env, "emergency", "--config", config, "--project", ENTRY, "--no-prefect", host="a", prefect=False)
    wait_until(lambda: not env.works(old), "the compromised key is rejected", timeout_s=90)
    code, result, output = finish(emergency)
    rotation_outcome = finish(rotation)

    assert code == 0, output
    assert_carried_through(env, old, staged, result)
    assert_superseded(*rotation_outcome, result)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(rotation_outcome[1]["prefect_flow_run_id"])
    assert run.id == paused.id, "the run the emergency took over is the one that was paused"
    assert run.state.type.value != "PAUSED"
    assert run.state.message.startswith("in_progress: ")


@pytest.mark.slow
@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_an_emergency_takes_over_the_lease_of_a_rotation_that_died_on_another_host(
    rotation_env: RotationEnv, prefect_server: PrefectServer
) -> None:
    """The killed run's Prefect concurrency slot stays taken until its lease (300 s) expires."""
    env = rotation_env
    env.prefect_env = prefect_server.client_env(env.env)
    old = env.current()
    config = str(env.write_config())
    child = dict(env.prefect_env, **{CRASH_ENV_VAR: "after_promote"})
    killed = env.cli("rotate", "--config", config, "--project", ENTRY, "--json", env=child)
    assert killed.returncode == -9, killed.stdout + killed.stderr[-2000:]
    staged = staged_new_key(env)

    try:
        emergency = start(env, "emergency", "--config", config, "--project", ENTRY, host="b", prefect=True)
        code, result, output = finish(emergency)
    finally:
        release_dead_slot()

    assert code == 0, output
    assert_carried_through(env, old, staged, result)
    assert any("went ahead without it" in line for line in result["reconciled"]), result["reconciled"]


@pytest.mark.slow  # the emergency waits out the 5 s take-over
@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_an_emergency_on_an_entry_of_a_fleet_group_not_done_yet_contains_it_and_leaves_the_group_alone(
    rotation_env: RotationEnv, prefect_server: PrefectServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fleet holds an entry's slot with its group's (docs/fleet.md, "Group leases") until the whole
    group is done: the emergency goes around it after 5 s, and the live fleet's group is not
    mistaken for a dead one (same host, same lock directory)."""
    env = rotation_env
    env.prefect_env = prefect_server.client_env(env.env)
    monkeypatch.setenv("LANGFUSE_ROTATE_LOCK_DIR", str(env.tmp / "locks-a"))
    api = PrefectApi(prefect_server.api_url)
    other = f"other-{uuid.uuid4().hex[:8]}"
    api.create_lock_limits([lock_name(ENTRY), lock_name(other)])
    groups = GroupLeases(api, [ENTRY, other], size=2, lease_s=60)
    assert groups.holds(other), "the fleet's group started with the other entry"
    old = env.current()
    config = str(env.write_config())
    try:
        began = time.monotonic()
        code, result, output = finish(
            start(env, "emergency", "--config", config, "--project", ENTRY, host="a", prefect=True)
        )
        took = time.monotonic() - began
        group_files = list((env.tmp / "locks-a" / "groups").glob("*.group"))
    finally:
        groups.done(ENTRY)
        groups.done(other)
        groups.close()
        api.close()

    assert code == 0, output
    assert result["status"] == "contained" and result["old_key_rejected"] is True, output
    assert not env.works(old)
    assert any("went ahead without it" in line for line in result["reconciled"]), result["reconciled"]
    assert len(group_files) == 1, "the live fleet's group lease was left to it"
    assert took < 30, took


def release_dead_slot() -> None:
    """The killed run's slot would block this entry in later tests of the session for 300 s."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectNotFound):
        client.delete_global_concurrency_limit_by_name(lock_name(ENTRY))


@pytest.mark.slow
def test_an_emergency_that_cannot_get_the_entry_notifies_as_an_emergency(rotation_env: RotationEnv) -> None:
    """A holder that never lets go (here: this test process holds the lock file): exit 3, and the
    refusal pages like any emergency that could not contain (tags emergency and failure)."""
    env = rotation_env
    lock_dir = env.tmp / "locks-a"
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / f"{lock_name(ENTRY)}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        config = str(env.write_config())
        code, result, output = finish(
            start(env, "emergency", "--config", config, "--project", ENTRY, "--no-prefect", host="a", prefect=False)
        )
    finally:
        os.close(fd)

    assert code == IN_PROGRESS and result["status"] == "in_progress", output
    notes = env.sink.wait_for(1)
    assert notes[-1].json["type"] == "failure" and notes[-1].json["title"].startswith("EMERGENCY"), notes[-1].json
    assert "in_progress" in notes[-1].json["message"]


def test_an_emergency_that_cannot_even_connect_notifies_as_an_emergency(rotation_env: RotationEnv) -> None:
    """The organization key lives in a store that does not answer: the run cannot be set up."""
    from devstack.prefect_server import free_port

    env = rotation_env
    dead = {"kind": "vault", "url": f"http://127.0.0.1:{free_port()}", "token": "t", "timeout_s": 1}
    langfuse = {k: v for k, v in env.config_dict()["langfuse"].items() if not k.startswith("org_")}
    env.top_overrides = {
        "stores": {"main": env.store.config(), "keys": dead},
        "langfuse": langfuse | {"org_key": {"store": "keys", "path": "langfuse/org"}},
    }

    result = execute("emergency", ENTRY, str(env.write_config()), DirectRunner())

    assert result.status == "failed" and result.failed_step == "setup", result
    note = env.sink.wait_for(1)[-1].json
    assert note["type"] == "failure" and note["title"].startswith("EMERGENCY"), note


def test_an_emergency_that_fails_unexpectedly_notifies_as_an_emergency(
    rotation_env: RotationEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.rotation.entry_run

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("something nobody foresaw")

    monkeypatch.setattr(flows.rotation.entry_run, "run_emergency", broken)

    result = execute("emergency", ENTRY, str(rotation_env.write_config()), DirectRunner())

    assert result.status == "failed" and "something nobody foresaw" in (result.error or "")
    note = rotation_env.sink.wait_for(1)[-1].json
    assert note["type"] == "failure" and note["title"].startswith("EMERGENCY"), note
