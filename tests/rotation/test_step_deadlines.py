"""Every step, rollback included, has a deadline, with Prefect (a task timeout) and without it
(the in-process runner interrupts the step). A step past its deadline fails with a one-line
"timed out" error, which the checklist handles like any other failure of that step."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from devstack.prefect_server import PrefectServer
from flows.config.model import load_config
from flows.errors import StepFailed
from flows.models import RotationResult
from flows.rotation import steps
from flows.rotation.contract import contract_of, step
from flows.rotation.entry_run import execute
from flows.rotation.runners import DirectRunner, PrefectRunner
from tests.fixtures.devstack import HealthStub
from tests.fixtures.rotation import ENTRY, RotationEnv

T = TypeVar("T")


class RecordingRunner(DirectRunner):
    """The in-process runner, noting the deadline each step ran under."""

    def __init__(self) -> None:
        self.deadlines: dict[str, float | None] = {}

    def run(self, fn: Callable[..., T], *args: Any, timeout_s: float | None = None, **kwargs: Any) -> T:
        self.deadlines[contract_of(fn).name] = timeout_s
        return super().run(fn, *args, timeout_s=timeout_s, **kwargs)


@step("finish", timeout_s=120)
def sleeps(seconds: float, done: list[str]) -> str:
    time.sleep(seconds)
    done.append("finished")
    return "finished"


def test_the_in_process_runner_interrupts_a_step_past_its_deadline() -> None:
    done: list[str] = []

    with pytest.raises(StepFailed, match=r"finish timed out after 0\.3s") as failed:
        DirectRunner().run(sleeps, 30, done, timeout_s=0.3)

    assert done == [], "the step was interrupted, not waited for"
    assert failed.value.step == "finish" and failed.value.facts["error_type"] == "StepTimeout"


def test_the_in_process_runner_interrupts_a_step_outside_the_main_thread_too() -> None:
    done: list[str] = []
    errors: list[BaseException] = []

    def in_thread() -> None:
        try:
            DirectRunner().run(sleeps_in_slices, 30.0, done, timeout_s=0.3)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(10)

    assert not thread.is_alive() and done == []
    assert len(errors) == 1 and isinstance(errors[0], StepFailed) and "timed out" in str(errors[0])


@step("rollback", timeout_s=180)
def sleeps_in_slices(seconds: float, done: list[str]) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)
    done.append("finished")


def test_a_step_that_ends_in_time_returns_its_value_and_leaves_no_alarm_behind() -> None:
    assert DirectRunner().run(sleeps, 0.01, [], timeout_s=5) == "finished"
    time.sleep(0.1)  # an alarm left armed would fire here


STEPS = [
    steps.reconcile,
    steps.create,
    steps.store,
    steps.wait_for_restarts,
    steps.verify,
    steps.revoke,
    steps.recheck_revoked,
    steps.finish,
    steps.rollback,
]


def test_every_step_declares_a_deadline() -> None:
    assert all(contract_of(fn).timeout_s > 0 for fn in STEPS)


def test_the_deadline_covers_the_waits_the_entry_configures(rotation_env: RotationEnv) -> None:
    entry = load_config(rotation_env.write_config()).entry(ENTRY)

    assert contract_of(steps.wait_for_restarts).deadline_s(entry) > entry.wait_timeout_s + entry.grace_period_s
    assert contract_of(steps.verify).deadline_s(entry) > entry.canary_timeout_s
    assert contract_of(steps.revoke).deadline_s(entry) > entry.revoke_recheck_s
    assert contract_of(steps.rollback).deadline_s(entry) > entry.wait_timeout_s + 60  # the rollback's store retries


def test_every_step_of_a_rotation_that_rolls_back_ran_under_a_deadline(
    rotation_env: RotationEnv, health_stub: HealthStub
) -> None:
    env = rotation_env
    health_stub.set(mode="ok", public_key=env.current().public_key)  # never switches: the run rolls back
    env.consumers = [{"name": "api", "health_url": health_stub.health_url, "restart_url": health_stub.restart_url}]
    env.entry_overrides = {"wait_timeout_s": 1}
    runner = RecordingRunner()

    result: RotationResult = execute("rotate", ENTRY, str(env.write_config()), runner)

    assert result.status == "rolled_back", result.error
    assert {"create", "store", "wait_for_restarts", "rollback"} <= set(runner.deadlines)
    assert all(limit is not None and limit > 0 for limit in runner.deadlines.values()), runner.deadlines


def test_a_rollback_past_its_deadline_fails_the_run_instead_of_hanging(
    rotation_env: RotationEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.rotation.steps

    env = rotation_env
    env.sim.configure(otel_delay_s=60)  # verify fails: the run rolls back
    env.entry_overrides = {"canary_timeout_s": 1}

    @step("rollback", timeout_s=0.5)
    def stuck_rollback(*args: Any, **kwargs: Any) -> Any:
        time.sleep(60)  # e.g. a store that never answers

    monkeypatch.setattr(flows.rotation.steps, "rollback", stuck_rollback)

    result = execute("rotate", ENTRY, str(env.write_config()), DirectRunner())

    assert result.status == "failed" and result.exit_code == 1
    assert "rollback failed: rollback timed out after 0.5s" in (result.error or "")


def test_prefect_tasks_carry_every_steps_deadline() -> None:
    runner = PrefectRunner()
    for fn in STEPS:
        assert runner._task(fn).timeout_seconds == contract_of(fn).timeout_s, contract_of(fn).name


def test_a_prefect_task_past_its_deadline_fails_with_a_timeout(
    prefect_server: PrefectServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect import flow

    for name, value in prefect_server.client_env({}).items():
        monkeypatch.setenv(name, value)
    done: list[str] = []

    @flow(persist_result=False)
    def one_step() -> str:
        try:
            # Prefect's timeout takes effect when the task's thread next runs Python code: a step
            # that sleeps in slices is interrupted at once, one in a single 30 s sleep only after it.
            PrefectRunner().run(sleeps_in_slices, 30, done, timeout_s=0.5)
        except Exception as exc:
            return type(exc).__name__
        return "no timeout"

    assert one_step() == "TaskRunTimeoutError"
    assert done == []
