"""How a step is executed: as a Prefect task, or directly when no Prefect is reachable.

Retries and timeouts are declared here once per step and apply in both modes. Every task
touches secrets (or could), so none caches and none persists its result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class StepOptions:
    retries: int = 0
    retry_delay_s: float = 1.0
    timeout_s: float | None = None


STEP_OPTIONS: dict[str, StepOptions] = {
    "reconcile": StepOptions(retries=1, timeout_s=120),
    "create": StepOptions(retries=0, timeout_s=180),  # the connector retries safely inside
    "store": StepOptions(retries=2, timeout_s=120),
    "wait_for_restarts": StepOptions(retries=0),  # bounded by the entry's wait_timeout_s
    "verify": StepOptions(retries=1, timeout_s=None),  # bounded by canary_timeout_s
    "revoke": StepOptions(retries=2),
    "finish": StepOptions(retries=2, timeout_s=120),
    "rollback": StepOptions(retries=1),
    "notify": StepOptions(retries=0, timeout_s=60),
}


class StepRunner(Protocol):
    orchestrator: str

    def run(self, step: str, fn: Callable[..., T], *args: Any, timeout_s: float | None = None) -> T: ...


def _retryable(exc: BaseException) -> bool:
    from flows.steps import StepFailed

    # Only connector-level failures are worth a retry; a StepFailed that states a fact
    # (wrong project, another rotation staged) would fail the same way again.
    return isinstance(exc, StepFailed) and exc.facts.get("error_type") in {
        "LangfuseServerError",
        "LangfuseUnreachableError",
        "LangfuseRateLimitedError",
        "StoreUnavailableError",
    }


class DirectRunner:
    """Runs steps in-process without Prefect, with the same retry budget."""

    orchestrator = "none"

    def run(self, step: str, fn: Callable[..., T], *args: Any, timeout_s: float | None = None) -> T:
        options = STEP_OPTIONS.get(step, StepOptions())
        attempt = 0
        while True:
            try:
                return fn(*args)
            except Exception as exc:
                if attempt >= options.retries or not _retryable(exc):
                    raise
                attempt += 1
                time.sleep(options.retry_delay_s)


class PrefectRunner:
    """Runs each step as a Prefect task: visible in the UI, with declared retries and timeouts."""

    orchestrator = "prefect"

    def __init__(self) -> None:
        self._tasks: dict[str, Any] = {}

    def _task(self, step: str, fn: Callable[..., Any]) -> Any:
        if step not in self._tasks:
            from prefect import Task
            from prefect.cache_policies import NO_CACHE

            options = STEP_OPTIONS.get(step, StepOptions())
            self._tasks[step] = Task(
                fn=fn,
                name=step,
                cache_policy=NO_CACHE,
                persist_result=False,
                retries=options.retries,
                retry_delay_seconds=options.retry_delay_s,
                retry_condition_fn=_retry_condition,
                timeout_seconds=options.timeout_s,
                log_prints=False,
            )
        return self._tasks[step]

    def run(self, step: str, fn: Callable[..., T], *args: Any, timeout_s: float | None = None) -> T:
        task = self._task(step, fn)
        if timeout_s is not None:
            task = task.with_options(timeout_seconds=timeout_s)
        result: T = task(*args)
        return result


def _retry_condition(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except Exception as exc:
        return _retryable(exc)
    return False
