"""How a step is executed: as a Prefect task, or directly when no Prefect is reachable.

Retries and timeouts are declared here once per step and apply in both modes. Every task
touches secrets (or could), so none caches and none persists its result.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

if TYPE_CHECKING:
    from flows.config import ProjectEntry

T = TypeVar("T")


@dataclass(frozen=True)
class StepOptions:
    retries: int = 0
    retry_delay_s: float = 1.0
    timeout_s: float = 120.0
    """The step's own work; ``step_timeout_s`` adds the waits the entry configures."""


STEP_OPTIONS: dict[str, StepOptions] = {
    "reconcile": StepOptions(retries=1, timeout_s=120),  # + wait_timeout_s: may move consumers back
    "create": StepOptions(retries=0, timeout_s=180),  # the connector retries safely inside
    "store": StepOptions(retries=2, timeout_s=120),
    "wait_for_restarts": StepOptions(retries=0, timeout_s=60),  # + wait_timeout_s + grace_period_s
    "verify": StepOptions(retries=1, timeout_s=60),  # + canary_timeout_s
    "revoke": StepOptions(retries=2, timeout_s=120),  # + revoke_recheck_s (idle re-probe)
    "recheck_revoked": StepOptions(retries=0, timeout_s=60),  # + revoke_recheck_s
    "finish": StepOptions(retries=2, timeout_s=120),
    "rollback": StepOptions(retries=1, timeout_s=180),  # + wait_timeout_s (store retries 60 s inside)
    "notify": StepOptions(retries=0, timeout_s=60),
}


def step_timeout_s(step: str, entry: ProjectEntry) -> float:
    """The deadline of one attempt of ``step`` for ``entry``: the step's own budget plus the waits
    the entry configures for it. Every step, rollback included, has one in both modes."""
    waits = {
        "reconcile": entry.wait_timeout_s,
        "wait_for_restarts": entry.wait_timeout_s + entry.grace_period_s,
        "verify": entry.canary_timeout_s,
        "revoke": entry.revoke_recheck_s,
        "recheck_revoked": entry.revoke_recheck_s,
        "rollback": entry.wait_timeout_s,
    }
    return STEP_OPTIONS.get(step, StepOptions()).timeout_s + waits.get(step, 0.0)


class StepTimeout(BaseException):
    """Raised inside a step run by ``DirectRunner`` when its deadline passes. A BaseException so
    that no ``except Exception`` inside the step swallows it; the runner turns it into a
    ``StepFailed`` at once."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Interrupt the block with ``StepTimeout`` after ``seconds``: by ``SIGALRM`` in the main
    thread (which also breaks blocking socket reads and sleeps), otherwise by raising it
    asynchronously in this thread at its next Python instruction (as Prefect does for tasks)."""
    if threading.current_thread() is threading.main_thread():

        def expire(signum: int, frame: Any) -> None:
            raise StepTimeout()

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        return
    target = threading.get_ident()
    done = threading.Event()

    def expire_in_thread() -> None:
        if not done.wait(seconds):
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target), ctypes.py_object(StepTimeout))

    watcher = threading.Thread(target=expire_in_thread, name="step-deadline", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


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
    """Runs steps in-process without Prefect, with the same retry budget and deadlines."""

    orchestrator = "none"

    def run(self, step: str, fn: Callable[..., T], *args: Any, timeout_s: float | None = None) -> T:
        from flows.steps import StepFailed

        options = STEP_OPTIONS.get(step, StepOptions())
        limit = timeout_s if timeout_s is not None else options.timeout_s
        attempt = 0
        while True:
            try:
                try:
                    with deadline(limit):
                        return fn(*args)
                except StepTimeout:
                    raise StepFailed(step, f"{step} timed out after {limit:g}s", error_type="StepTimeout") from None
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
                fn=_handing_over(fn),
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
        result = task(*args)
        if isinstance(result, _HandedOver):
            from flows.handover import Superseded

            raise Superseded(result.emergency_run)
        return cast(T, result)


@dataclass(frozen=True)
class _HandedOver:
    emergency_run: str


def _handing_over(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The step as a task body: a step stopped for an emergency (``Superseded``, a BaseException
    that Prefect would record as a crash) ends the task normally; ``run`` raises it again."""
    from flows.handover import Superseded

    @functools.wraps(fn)
    def body(*args: Any, **kwargs: Any) -> Any:  # Prefect passes the step's parameters by name
        try:
            return fn(*args, **kwargs)
        except Superseded as handed:
            return _HandedOver(handed.emergency_run)

    return body


def _retry_condition(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except Exception as exc:
        return _retryable(exc)
    return False
