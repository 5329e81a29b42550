"""The approval gate: an entry with ``approval: required`` pauses its rotation after creating the new
key and before promoting it in the store; a person approves or rejects through Prefect.

The rotation runs as users run it (``langfuse-rotate rotate`` in a subprocess, through the
session's real Prefect server); the test process plays the approver from outside and resumes the
paused run with typed input, as the UI's "Resume" form does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from devstack.prefect_server import PrefectServer
from tests.fixtures.prefect import runs_with_config, state_history, wait_for_paused_run
from tests.fixtures.rotation import ENTRY, RotationEnv

# The gate is store-independent (it sits between two steps); one store kind keeps this suite short.
pytestmark = [pytest.mark.slow, pytest.mark.parametrize("any_store", ["vault"], indirect=True)]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(rotation_env: RotationEnv, prefect_server: PrefectServer) -> RotationEnv:
    rotation_env.prefect_env = prefect_server.client_env(rotation_env.env)
    rotation_env.entry_overrides = {"approval": "required", "approval_timeout_s": 300}
    return rotation_env


class Rotation:
    """``langfuse-rotate rotate --json`` running in the background."""

    def __init__(self, env: RotationEnv) -> None:
        self.config_path = str(env.write_config())
        assert env.prefect_env is not None
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flows.cli.main",
                "rotate",
                "--config",
                self.config_path,
                "--project",
                ENTRY,
                "--json",
            ],
            env=env.prefect_env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout = ""
        self.stderr = ""

    def wait(self, timeout: float = 240) -> int:
        self.stdout, self.stderr = self.proc.communicate(timeout=timeout)
        return self.proc.returncode

    @property
    def result(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.stdout.strip().splitlines()[-1])
        return data

    def paused_run(self, timeout: float = 120) -> Any:
        """This rotation's flow run, once Prefect shows it Paused (found by its config path)."""
        return wait_for_paused_run(self.config_path, self.proc, timeout)


@pytest.fixture
def start_rotation(env: RotationEnv) -> Iterator[Any]:
    started: list[Rotation] = []

    def start() -> Rotation:
        rotation = Rotation(env)
        started.append(rotation)
        return rotation

    yield start
    for rotation in started:
        if rotation.proc.poll() is None:
            rotation.proc.kill()
            rotation.proc.communicate()


def resume(run_id: UUID, **answer: Any) -> None:
    from prefect.flow_runs import resume_flow_run

    resume_flow_run(run_id, run_input=answer)


def read_run(run_id: UUID) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def pause_description(run_id: UUID) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        inputs = client.filter_flow_run_input(run_id, key_prefix="paused-", limit=10, exclude_keys=set())
    descriptions = [i.value for i in inputs if i.key.endswith("-description")]
    assert len(descriptions) == 1, [i.key for i in inputs]
    text: str = json.loads(descriptions[0])
    return text


def assert_rolled_back_to(env: RotationEnv, old_public_key: str, new_public_key: str) -> None:
    current = env.current()
    assert current.public_key == old_public_key
    assert env.works(current), "the old pair must still authenticate"
    assert env.store.store.describe(env.location).pending is None
    live = {k["publicKey"] for k in env.project_keys()}
    assert new_public_key not in live, "the new key must be deleted from Langfuse"


def test_a_rotation_that_requires_approval_pauses_before_promoting_and_shows_the_plan(
    env: RotationEnv, start_rotation: Any
) -> None:
    old = env.current()
    rotation = start_rotation()

    run = rotation.paused_run()

    staged = env.store.store.read_staged(env.location)
    assert staged is not None, "the new pair is created and staged before the pause"
    record, new_pair = staged
    assert env.current().public_key == old.public_key, "consumers still read the old pair while paused"
    assert read_run(run.id).state.type.value == "PAUSED"
    description = pause_description(run.id)
    for fact in (ENTRY, env.project.id, old.public_key, record.new_public_key, env.path):
        assert fact in description
    assert old.secret_key.get_secret_value() not in description
    assert new_pair.secret_key.get_secret_value() not in description
    assert "sk-lf-" not in description
    resume(run.id, approve=False, approver="ci", reason="test over")
    assert rotation.wait() == 1


def test_an_answer_that_does_not_name_the_approver_is_refused_and_the_rotation_stays_paused(
    env: RotationEnv, start_rotation: Any
) -> None:
    rotation = start_rotation()
    run = rotation.paused_run()

    with pytest.raises(RuntimeError, match="approver"):
        resume(run.id, approve=True)
    with pytest.raises(RuntimeError, match="approver"):
        resume(run.id, approve=True, approver="")

    assert read_run(run.id).state.type.value == "PAUSED"
    resume(run.id, approve=False, approver="ci", reason="test over")
    assert rotation.wait() == 1


def test_approving_a_paused_rotation_promotes_the_new_key_and_finishes(env: RotationEnv, start_rotation: Any) -> None:
    old = env.current()
    rotation = start_rotation()
    run = rotation.paused_run()

    resume(run.id, approve=True, approver="ci", reason="quarterly rotation, change 42")

    assert rotation.wait() == 0, rotation.stdout + rotation.stderr[-3000:]
    result = rotation.result
    assert result["status"] == "rotated"
    assert result["old_public_key"] == old.public_key
    assert env.current().public_key == result["new_public_key"] != old.public_key
    assert result["old_key_rejected"] is True
    approval = next(s for s in result["steps"] if s["step"] == "approval")
    assert approval["outcome"] == "done"
    assert "approved by ci" in approval["detail"]
    assert read_run(run.id).state.type.value == "COMPLETED"


def test_rejecting_a_paused_rotation_rolls_back_and_notifies(env: RotationEnv, start_rotation: Any) -> None:
    old = env.current()
    rotation = start_rotation()
    run = rotation.paused_run()
    new_public_key = env.store.store.describe(env.location).pending.new_public_key  # type: ignore[union-attr]

    resume(run.id, approve=False, approver="alice", reason="change freeze")

    assert rotation.wait() == 1, rotation.stdout + rotation.stderr[-3000:]
    result = rotation.result
    assert result["status"] == "rolled_back"
    assert "alice" in result["error"] and "change freeze" in result["error"]
    assert_rolled_back_to(env, old.public_key, new_public_key)
    final = read_run(run.id).state
    assert final.type.value == "FAILED"
    assert final.message.startswith("rolled_back: approval:")
    # The process has exited, so every notification it sent (including a hook's) has arrived.
    notes = env.sink.received()
    assert [n.json["type"] for n in notes] == ["failure"], "exactly one notification, not a second from a hook"
    assert "rolled back" in notes[0].json["title"]


def test_an_approval_that_times_out_rolls_back_and_notifies(env: RotationEnv, start_rotation: Any) -> None:
    """The pause is short, so the test does not try to catch it while it lasts: the run's state
    history shows it was Paused, and the rolled-back key is the one the run's own steps name."""
    env.entry_overrides = {"approval": "required", "approval_timeout_s": 3}
    old = env.current()
    rotation = start_rotation()

    assert rotation.wait() == 1, rotation.stdout + rotation.stderr[-3000:]

    result = rotation.result
    (run,) = runs_with_config(rotation.config_path)
    assert "PAUSED" in state_history(run.id), "the rotation paused for approval before it timed out"
    new_public_key = result["new_public_key"]
    assert new_public_key and new_public_key != old.public_key, result
    assert result["status"] == "rolled_back"
    assert "timed out" in result["error"]
    assert_rolled_back_to(env, old.public_key, new_public_key)
    rollback = next(s for s in result["steps"] if s["step"] == "rollback")
    assert rollback["outcome"] == "rolled_back"
    final = read_run(run.id).state
    assert final.type.value == "FAILED"
    assert final.message.startswith("rolled_back: approval:")
    assert "timed out" in final.message
    assert [n.json["type"] for n in env.sink.received()] == ["failure"]
