"""Book-keeping of one run: the step table, the result, and how each step's outcome reads."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from flows.context import EntryContext
from flows.contract import contract_of
from flows.models import Mode, RotationResult, StepRecord
from flows.progress import progress
from flows.redact import scrub
from flows.runner import StepRunner
from flows.steps import (
    ConsumerOutcome,
    CreateOutcome,
    PromoteOutcome,
    ReconcileOutcome,
    RevokeOutcome,
    VerifyOutcome,
)

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
        self.ctx.handover.check()  # an emergency asked for the entry: stop before the next step
        began = time.monotonic()
        progress(f"{name}: started")
        try:
            value = self.runner.run(fn, *args, timeout_s=contract.deadline_s(self.ctx.entry), **kwargs)
        except BaseException as exc:
            self.record(name, "failed", began, one_line(exc))
            progress(f"{name}: failed after {time.monotonic() - began:.2f}s: {one_line(exc)}")
            raise
        self.record(name, "done", began, describe(value))
        detail = self.result.steps[-1].detail
        progress(f"{name}: done in {time.monotonic() - began:.2f}s" + (f": {detail}" if detail else ""))
        return value

    def record(self, name: str, outcome: Any, began: float, detail: str = "") -> None:
        self.result.steps.append(
            StepRecord(step=name, outcome=outcome, duration_s=round(time.monotonic() - began, 3), detail=detail)
        )

    def finish(self, status: Any, error: str | None = None) -> RotationResult:
        self.result.status = status
        self.result.error = error
        self.result.duration_s = round(time.monotonic() - self.started, 3)
        return self.result


def one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return scrub(" ".join(text.split()))


def describe(value: Any) -> str:
    """A step outcome as one line of the step table."""
    if isinstance(value, CreateOutcome):
        state = "created" if value.created_now else "already in Langfuse"
        return f"{value.record.new_public_key} ({value.display_secret_key}) {state}"
    if isinstance(value, PromoteOutcome):
        return f"current version {value.version} (previous {value.previous_version})"
    if isinstance(value, ConsumerOutcome):
        if value.grace_period_s is not None:
            return f"no consumers listed; waited {value.grace_period_s:g}s grace period"
        seen = ", ".join(f"{k}={v}" for k, v in value.wait.last_seen.items())
        state = "all switched" if value.wait.all_switched else "lagging: " + ", ".join(value.wait.lagging)
        return f"{state}; {seen}"
    if isinstance(value, VerifyOutcome):
        return f"project {value.project_id}; canary {value.canary_trace_id} readable after {value.canary_seconds}s"
    if isinstance(value, RevokeOutcome):
        return value.detail or ("rejected" if value.rejected else str(value.rejected))
    if isinstance(value, ReconcileOutcome):
        return "; ".join(value.actions) or "nothing left over"
    return ""
