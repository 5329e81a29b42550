"""Book-keeping of one run: the step table and the result.

Each step's outcome describes itself (``describe``: its row in the step table) and names the
public facts it adds to the result (``facts``: e.g. the new public key, the store version); the
tracker records both, so the checklists only say which step runs when."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from flows.models import Mode, RotationPlan, RotationResult, StepRecord
from flows.redact import scrub
from flows.rotation.context import EntryContext
from flows.rotation.contract import contract_of
from flows.rotation.progress import progress
from flows.rotation.runners import StepRunner
from flows.shown import single_line

T = TypeVar("T")


class RunTracker:
    """Runs steps through the runner and records each one in the result's step table."""

    def __init__(self, ctx: EntryContext, runner: StepRunner, mode: Mode) -> None:
        self.ctx = ctx
        self.runner = runner
        self.started = time.monotonic()
        self.result = RotationResult(
            status="in_progress",
            project=ctx.entry.name,
            mode=mode,
            store=ctx.store_name,
            store_location=ctx.store_label,
            prefect_flow_run_id=ctx.flow_run_id,
            orchestrator="prefect" if runner.orchestrator == "prefect" else "none",
            started_at=datetime.now(UTC),
        )
        self.current_step = "plan"

    def step(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run the step ``fn`` by its contract, with its deadline for this entry, and record its outcome."""
        contract = contract_of(fn)
        name = self.current_step = contract.name
        if self.result.rotation_id:
            self.ctx.audit.rotation_id = self.result.rotation_id  # every audit line names its rotation
        self.ctx.handover.check_between_steps()  # an emergency asked for the entry: stop before the next step
        began = time.monotonic()
        progress(f"{name}: started")
        try:
            value = self.runner.run(fn, *args, timeout_s=contract.deadline_s(self.ctx.entry), **kwargs)
        except BaseException as exc:
            self.record(name, "failed", began, one_line(exc))
            progress(f"{name}: failed after {time.monotonic() - began:.2f}s: {one_line(exc)}")
            raise
        self.record(name, "done", began, _describe(value))
        self.adopt(value)
        detail = self.result.steps[-1].detail
        progress(f"{name}: done in {time.monotonic() - began:.2f}s" + (f": {detail}" if detail else ""))
        return value

    def attempt(
        self,
        problems: list[str],
        fn: Callable[..., T],
        *args: Any,
        what: str | None = None,
        then: str = "",
        **kwargs: Any,
    ) -> T | None:
        """A step past the point of no return: its failure is added to ``problems`` ("<what> failed:
        <why>[; <then>]", ``what`` defaults to the step's name) for a person to act on, instead of
        raised: there is nothing left to roll back."""
        try:
            return self.step(fn, *args, **kwargs)
        except Exception as exc:
            what = what or contract_of(fn).name.replace("_", " ")
            problems.append(f"{what} failed: {one_line(exc)}" + (f"; {then}" if then else ""))
            return None

    def planned(self, plan: RotationPlan, began: float) -> None:
        """The plan's row and its facts: which rotation this run does or resumes."""
        self.record("plan", "done", began, plan.note or f"rotation {plan.rotation_id}")
        self.result.rotation_id = plan.rotation_id
        self.result.resumed = plan.resumed
        self.result.old_public_key = plan.old_public_key
        self.result.new_public_key = plan.new_public_key

    def adopt(self, value: Any) -> None:
        """Copy a step outcome's public facts into the result."""
        for field, fact in _facts(value).items():
            setattr(self.result, field, fact)

    def record(self, name: str, outcome: Any, began: float, detail: str = "") -> None:
        """One row; its detail on one line (it may quote a store, Langfuse or a consumer)."""
        self.result.steps.append(
            StepRecord(
                step=name, outcome=outcome, duration_s=round(time.monotonic() - began, 3), detail=single_line(detail)
            )
        )

    def finish(self, status: Any, error: str | None = None) -> RotationResult:
        # Whose handover requests this run did not obey (README "Safety guarantees").
        for note in self.ctx.handover.ignored():
            if not any(row.step == "handover" and row.detail == note for row in self.result.steps):
                self.record("handover", "skipped", time.monotonic(), note)
        self.result.status = status
        self.result.error = error
        self.result.duration_s = round(time.monotonic() - self.started, 3)
        return self.result


def one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return scrub(" ".join(text.split()))


def _describe(value: Any) -> str:
    """A step outcome as one line of the step table: the outcome describes itself."""
    describe_self = getattr(value, "describe", None)
    return str(describe_self()) if callable(describe_self) else ""


def _facts(value: Any) -> dict[str, Any]:
    """The public facts a step outcome puts in the run's result (e.g. ``new_public_key``)."""
    facts_of = getattr(value, "facts", None)
    return dict(facts_of()) if callable(facts_of) else {}
