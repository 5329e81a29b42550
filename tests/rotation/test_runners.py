"""The two step runners read each step's own contract (``@step``) and behave alike: the same
retries for the same failures, keyword arguments passed through, one task per step function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from connectors.errors import (
    ConnectorError,
    LangfuseAuthError,
    LangfuseConflictError,
    LangfuseRateLimitedError,
    LangfuseServerError,
    LangfuseUnreachableError,
    StoreConflictError,
    StoreNotFoundError,
    StoreUnavailableError,
)
from devstack.prefect_server import PrefectServer
from flows.errors import StepFailed
from flows.rotation.contract import contract_of, step
from flows.rotation.runners import DirectRunner, PrefectRunner, StepRunner, retryable


def flaky(failures: list[BaseException], calls: list[str]) -> Callable[..., str]:
    """A step that raises each of ``failures`` in turn, then returns."""

    @step("flaky", retries=2, retry_delay_s=0.01, timeout_s=30)
    def flaky_step(label: str, *, suffix: str = "") -> str:
        calls.append(label)
        if failures:
            raise failures.pop(0)
        return label + suffix

    return flaky_step


def transient() -> StepFailed:
    return StepFailed("flaky", "Langfuse unreachable", retryable=True)


def factual() -> StepFailed:
    return StepFailed("flaky", "the new key authenticates to another project")


@pytest.mark.parametrize(
    ("error", "worth_a_retry"),
    [
        (LangfuseUnreachableError("x"), True),
        (LangfuseServerError("x"), True),
        (LangfuseRateLimitedError("x"), True),
        (StoreUnavailableError("x"), True),
        (LangfuseAuthError("x"), False),
        (LangfuseConflictError("x"), False),
        (StoreConflictError("x"), False),
        (StoreNotFoundError("x"), False),
    ],
)
def test_connector_errors_say_whether_a_retry_can_help(error: ConnectorError, worth_a_retry: bool) -> None:
    assert error.retryable is worth_a_retry


def test_only_a_step_failure_marked_retryable_is_retried() -> None:
    assert retryable(transient())
    assert not retryable(factual())
    assert not retryable(ValueError("a bug is never retried"))


def test_a_function_without_a_contract_is_not_a_step() -> None:
    def undeclared() -> None: ...

    with pytest.raises(TypeError, match="not a step"):
        DirectRunner().run(undeclared)


def test_the_contract_adds_the_waits_the_entry_configures() -> None:
    class Entry:
        wait_timeout_s = 300.0
        grace_period_s = 5.0

    @step("waits", timeout_s=60, plus=("wait_timeout_s", "grace_period_s"))
    def waits() -> None: ...

    assert contract_of(waits).deadline_s(Entry()) == 365.0  # type: ignore[arg-type]


def run_alike(runner: StepRunner, failures: list[BaseException]) -> tuple[str | type[BaseException], list[str]]:
    calls: list[str] = []
    fn = flaky(failures, calls)
    try:
        return runner.run(fn, "done", suffix="!"), calls
    except StepFailed as exc:
        return type(exc), calls


def test_the_in_process_runner_retries_a_transient_failure_within_the_contract() -> None:
    assert run_alike(DirectRunner(), [transient(), transient()]) == ("done!", ["done"] * 3)


def test_the_in_process_runner_gives_up_after_the_contracts_retries() -> None:
    assert run_alike(DirectRunner(), [transient(), transient(), transient()]) == (StepFailed, ["done"] * 3)


def test_the_in_process_runner_never_retries_a_failure_that_states_a_fact() -> None:
    assert run_alike(DirectRunner(), [factual()]) == (StepFailed, ["done"])


@pytest.mark.slow
def test_both_runners_retry_the_same_failures_the_same_way(
    prefect_server: PrefectServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect import flow

    cases: list[Callable[[], list[BaseException]]] = [
        lambda: [],
        lambda: [transient(), transient()],
        lambda: [transient(), transient(), transient()],
        lambda: [factual()],
    ]

    @flow(persist_result=False)
    def with_prefect(failures: list[Any]) -> tuple[Any, list[str]]:
        return run_alike(PrefectRunner(), failures)

    for make in cases:
        assert with_prefect(make()) == run_alike(DirectRunner(), make())


def test_the_prefect_runner_keys_its_tasks_by_step_function_not_by_name() -> None:
    @step("same-name", retries=1)
    def first() -> str:
        return "first"

    @step("same-name", retries=2)
    def second() -> str:
        return "second"

    runner = PrefectRunner()

    assert runner._task(first) is not runner._task(second)
    assert (runner._task(first).retries, runner._task(second).retries) == (1, 2)
    assert runner._task(first).name == "same-name"
