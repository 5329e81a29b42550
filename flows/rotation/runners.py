"""How a step is executed: as a Prefect task, or directly when no Prefect is reachable.

Both runners read the step's own contract (``flows.rotation.contract.step``: name, retries, timeout) and
retry only failures that say they are retryable. Every task touches secrets (or could), so none
caches and none persists its result.
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
from typing import Any, Protocol, TypeVar, cast

from flows.errors import StepFailed, StepTimeout, Superseded
from flows.rotation.contract import contract_of

T = TypeVar("T")


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
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

    def run(self, fn: Callable[..., T], *args: Any, timeout_s: float | None = None, **kwargs: Any) -> T:
        """Run the step ``fn`` (declared with ``@step``) with its contract; ``timeout_s`` replaces the
        contract's own deadline (the caller adds the entry's configured waits)."""
        ...


def retryable(exc: BaseException) -> bool:
    """Whether a step's failure is worth another attempt: only a transient connector failure is."""
    return isinstance(exc, StepFailed) and exc.retryable


class DirectRunner:
    """Runs steps in-process without Prefect, with the same retry budget and deadlines."""

    orchestrator = "none"

    def run(self, fn: Callable[..., T], *args: Any, timeout_s: float | None = None, **kwargs: Any) -> T:
        contract = contract_of(fn)
        limit = timeout_s if timeout_s is not None else contract.timeout_s
        attempt = 0
        while True:
            try:
                try:
                    with _deadline(limit):
                        return fn(*args, **kwargs)
                except StepTimeout:
                    raise StepFailed(
                        contract.name, f"{contract.name} timed out after {limit:g}s", error_type="StepTimeout"
                    ) from None
            except Exception as exc:
                if attempt >= contract.retries or not retryable(exc):
                    raise
                attempt += 1
                time.sleep(contract.retry_delay_s)


class PrefectRunner:
    """Runs each step as a Prefect task named after its contract, with its retries and timeout.
    Tasks are keyed by the step function itself (two steps may never share a task)."""

    orchestrator = "prefect"

    def __init__(self) -> None:
        self._tasks: dict[Callable[..., Any], Any] = {}

    def _task(self, fn: Callable[..., Any]) -> Any:
        if fn not in self._tasks:
            from prefect import Task
            from prefect.cache_policies import NO_CACHE

            contract = contract_of(fn)
            self._tasks[fn] = Task(
                fn=_handing_over(fn),
                name=contract.name,
                cache_policy=NO_CACHE,
                persist_result=False,
                retries=contract.retries,
                retry_delay_seconds=contract.retry_delay_s,
                retry_condition_fn=_retry_condition,
                timeout_seconds=contract.timeout_s,
                log_prints=False,
            )
        return self._tasks[fn]

    def run(self, fn: Callable[..., T], *args: Any, timeout_s: float | None = None, **kwargs: Any) -> T:
        task = self._task(fn)
        if timeout_s is not None:
            task = task.with_options(timeout_seconds=timeout_s)
        result = task(*args, **kwargs)
        if isinstance(result, _HandedOver):
            raise Superseded(result.emergency_run)
        return cast(T, result)


@dataclass(frozen=True)
class _HandedOver:
    emergency_run: str


def _handing_over(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The step as a task body: a step stopped for an emergency (``Superseded``, a BaseException
    that Prefect would record as a crash) ends the task normally; ``run`` raises it again."""

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
        return retryable(exc)
    return False
