"""Each step declares its contract where it is defined: ``@step(name=..., retries=..., timeout_s=...)``.

Both runners (``flows.rotation.runners``) read it: the Prefect runner turns it into the task's name, retries
and timeout; the in-process runner retries and enforces the deadline the same way. Prefect-free on
purpose, so the steps stay plain functions a script or a test can call directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from flows.config.model import ProjectEntry

F = TypeVar("F", bound=Callable[..., Any])

_ATTRIBUTE = "__step_contract__"


@dataclass(frozen=True)
class StepContract:
    """What a runner needs to know about one step.

    ``timeout_s`` is the step's own work; ``plus`` names the entry's configured waits the step
    spends on top of it (e.g. ``wait_timeout_s``), so the deadline of one attempt is their sum.
    A failure is retried (``retries`` times, ``retry_delay_s`` apart) only when it says it is
    ``retryable`` (``flows.errors.StepFailed``): a failure that states a fact would fail again.
    """

    name: str
    retries: int = 0
    retry_delay_s: float = 1.0
    timeout_s: float = 120.0
    plus: tuple[str, ...] = ()

    def deadline_s(self, entry: ProjectEntry) -> float:
        """The deadline of one attempt of this step for ``entry``."""
        return self.timeout_s + sum(float(getattr(entry, field)) for field in self.plus)


def step(
    name: str, *, retries: int = 0, retry_delay_s: float = 1.0, timeout_s: float = 120.0, plus: tuple[str, ...] = ()
) -> Callable[[F], F]:
    """Declare ``fn`` a step with this contract (the function itself is unchanged)."""
    contract = StepContract(name=name, retries=retries, retry_delay_s=retry_delay_s, timeout_s=timeout_s, plus=plus)

    def declare(fn: F) -> F:
        setattr(fn, _ATTRIBUTE, contract)
        return fn

    return declare


def contract_of(fn: Callable[..., Any]) -> StepContract:
    """The contract ``fn`` was declared with; a function without one is a programming error."""
    contract = getattr(fn, _ATTRIBUTE, None)
    if not isinstance(contract, StepContract):
        raise TypeError(f"{getattr(fn, '__qualname__', fn)!r} is not a step: declare it with @step(...)")
    return contract
