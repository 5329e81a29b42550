"""The two checklists, read top to bottom: scheduled rotation and emergency containment.

Both are written against a ``StepRunner`` so the same code runs as Prefect tasks or, when no
Prefect server is reachable, in-process. Everything before revocation rolls back on any failure;
revocation is the point of no return.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel

from connectors.errors import ConnectorError
from connectors.notify import Notification
from connectors.store import RotationRecord
from flows.context import EntryContext
from flows.crashpoints import crash_point
from flows.models import Mode, RotationPlan, RotationResult, StepRecord
from flows.redact import scrub
from flows.runner import StepRunner
from flows.steps import (
    ConsumerOutcome,
    CreateOutcome,
    PromoteOutcome,
    ReconcileOutcome,
    RevokeOutcome,
    StepFailed,
    VerifyOutcome,
    create_key,
    finish_rotation,
    plan_rotation,
    promote_key,
    recheck_revoked_key,
    reconcile_orphans,
    revoke_key,
    rollback_rotation,
    verify_key,
    wait_for_consumers,
)

T = TypeVar("T")


class ApprovalDecision(BaseModel):
    approved: bool
    approver: str = ""
    reason: str = ""
    timed_out: bool = False


Approver = Callable[[RotationPlan, RotationRecord], ApprovalDecision]


class _Run:
    """Book-keeping of one run: the step table, the result, and the runner."""

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

    def step(self, name: str, fn: Callable[..., T], *args: Any, timeout_s: float | None = None) -> T:
        self.current_step = name
        began = time.monotonic()
        try:
            value = self.runner.run(name, fn, *args, timeout_s=timeout_s)
        except BaseException as exc:
            self.record(name, "failed", began, _one_line(exc))
            raise
        self.record(name, "done", began, _describe(value))
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


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return scrub(" ".join(text.split()))


def _describe(value: Any) -> str:
    if isinstance(value, CreateOutcome):
        state = "created" if value.created_now else "already in Langfuse"
        return f"{value.record.new_public_key} ({value.display_secret_key}) {state}"
    if isinstance(value, PromoteOutcome):
        return f"current version {value.version} (previous {value.previous_version})"
    if isinstance(value, ConsumerOutcome):
        if value.grace_period_s is not None:
            return f"no consumers listed; waited {value.grace_period_s:g}s grace period"
        seen = ", ".join(f"{k}={v}" for k, v in value.wait.last_seen.items())
        return f"{'all switched' if value.wait.all_switched else 'lagging: ' + ', '.join(value.wait.lagging)}; {seen}"
    if isinstance(value, VerifyOutcome):
        return f"project {value.project_id}; canary {value.canary_trace_id} readable after {value.canary_seconds}s"
    if isinstance(value, RevokeOutcome):
        return value.detail or ("rejected" if value.rejected else str(value.rejected))
    if isinstance(value, ReconcileOutcome):
        return "; ".join(value.actions) or "nothing left over"
    return ""


def _prepare(run: _Run, mode: Mode) -> RotationPlan:
    ctx = run.ctx
    began = time.monotonic()
    plan = plan_rotation(ctx, mode)
    run.record("plan", "done", began, plan.note or f"rotation {plan.rotation_id}")
    run.result.rotation_id = plan.rotation_id
    run.result.resumed = plan.resumed
    run.result.old_public_key = plan.old_public_key
    run.result.new_public_key = plan.new_public_key
    reconciled = run.step("reconcile", reconcile_orphans, ctx, plan)
    run.result.reconciled = reconciled.actions
    return plan


# --- scheduled rotation -------------------------------------------------------------------------


def run_scheduled(ctx: EntryContext, runner: StepRunner, *, approve: Approver | None = None) -> RotationResult:
    """create → store → wait for restarts → verify → revoke → finish → notify."""
    if _pending_mode(ctx) == "emergency":
        # A killed emergency is carried through as one: this checklist could roll it back, which
        # would make the compromised key current again.
        return run_emergency(ctx, runner)
    run = _Run(ctx, runner, "scheduled")
    entry = ctx.entry
    plan: RotationPlan | None = None
    try:
        plan = _prepare(run, "scheduled")
        resumed = _resumed_after_delete(run, plan)
        if resumed is not None:
            record = resumed
            plan = plan.model_copy(update={"new_public_key": record.new_public_key})
        else:
            created = run.step("create", create_key, ctx, plan)
            record = created.record
            plan = plan.model_copy(update={"new_public_key": record.new_public_key})
            run.result.new_public_key = record.new_public_key
            if approve is not None:
                _approval(run, approve, plan, record)
            promoted = run.step("store", promote_key, ctx, record)
            run.result.store_version = promoted.version
            consumers = run.step(
                "wait_for_restarts",
                wait_for_consumers,
                ctx,
                record.new_public_key,
                timeout_s=entry.wait_timeout_s + entry.grace_period_s + 60,
            )
            run.result.consumers = consumers.wait.last_seen
            if not consumers.wait.all_switched:
                run.result.lagging_consumers = consumers.wait.lagging
                run.result.steps[-1].outcome = "failed"  # the step ran to its end, but this is why the run fails
                raise StepFailed(
                    "wait_for_restarts", _lagging_message(consumers, record.new_public_key, entry.wait_timeout_s)
                )
            run.step("verify", verify_key, ctx, record, timeout_s=entry.canary_timeout_s + 60)
            run.result.verified = True
    except BaseException as exc:
        result = _roll_back(run, plan, exc)
        _notify(ctx, result)
        if not isinstance(exc, Exception):
            raise
        return result
    # Point of no return: the new pair is stored, adopted and verified.
    assert plan is not None
    return _revoke_and_finish(run, plan, record)


def _pending_mode(ctx: EntryContext) -> str | None:
    try:
        pending = ctx.store.describe(ctx.location).pending
    except ConnectorError:
        return None  # the plan step reports it
    return pending.mode if pending is not None else None


def _resumed_after_delete(run: _Run, plan: RotationPlan) -> RotationRecord | None:
    """The resumed rotation's record if the run that was killed had already deleted its old key.

    The checklist deletes the old key only after every consumer switched and the new pair was
    verified, so such a rotation is past the point of no return and can only be finished: rolling
    it back would make a pair current that Langfuse no longer accepts and delete the only live key.
    """
    ctx = run.ctx
    if not plan.resumed or plan.old_public_key is None:
        return None
    began = time.monotonic()
    desc = ctx.store.describe(ctx.location)
    pending = desc.pending
    if pending is None or pending.rotation_id != plan.rotation_id or not desc.pending_promoted:
        return None
    if ctx.admin.find_api_key(ctx.entry.project_id, plan.old_public_key) is not None:
        return None
    run.record(
        "resume",
        "already_done",
        began,
        f"old key {plan.old_public_key} already deleted after {pending.new_public_key} was adopted and verified; "
        "finishing the rotation",
    )
    run.result.new_public_key = pending.new_public_key
    run.result.store_version = desc.current_version
    run.result.verified = True
    return pending


def _approval(run: _Run, approve: Approver, plan: RotationPlan, record: RotationRecord) -> None:
    began = time.monotonic()
    run.current_step = "approval"
    decision = approve(plan, record)
    who = decision.approver or "unknown"
    if decision.timed_out:
        run.record("approval", "failed", began, f"timed out: {decision.reason}")
        raise StepFailed("approval", f"approval timed out: {decision.reason}")
    if not decision.approved:
        run.record("approval", "failed", began, f"rejected by {who}: {decision.reason}")
        raise StepFailed("approval", f"rotation not approved by {who}: {decision.reason or 'no reason given'}")
    run.record("approval", "done", began, f"approved by {who}: {decision.reason}")
    run.ctx.audit.record("approval", f"entry:{run.ctx.entry.name}", "approved", approver=who, reason=decision.reason)


def _lagging_message(consumers: ConsumerOutcome, public_key: str, timeout_s: float) -> str:
    parts = []
    for name in consumers.wait.lagging:
        seen = consumers.wait.last_seen.get(name)
        error = consumers.wait.errors.get(name) or consumers.restart_errors.get(name)
        parts.append(f"{name} ({error or f'still on {seen}'})")
    return f"consumers did not switch to {public_key} within {timeout_s:g}s: {', '.join(parts)}"


def _roll_back(run: _Run, plan: RotationPlan | None, exc: BaseException) -> RotationResult:
    ctx = run.ctx
    failed_step = exc.step if isinstance(exc, StepFailed) else run.current_step
    run.result.failed_step = failed_step
    reason = f"{failed_step}: {_one_line(exc)}"
    if plan is None:  # nothing changed yet
        return run.finish("failed", reason)
    began = time.monotonic()
    try:
        outcome = run.runner.run("rollback", rollback_rotation, ctx, plan)
    except Exception as rollback_exc:
        run.record("rollback", "failed", began, _one_line(rollback_exc))
        return run.finish("failed", f"{reason}; rollback failed: {_one_line(rollback_exc)}")
    clean = outcome.store_restored and outcome.new_key_deleted and not outcome.errors
    detail = (
        f"old pair {plan.old_public_key} current again (version {outcome.restored_version}); new key deleted"
        if clean
        else "; ".join(outcome.errors)
    )
    run.record("rollback", "rolled_back" if clean else "failed", began, detail)
    ctx.audit.record("rotation", f"entry:{ctx.entry.name}", "rolled_back" if clean else "failed", error=reason)
    if clean:
        run.result.new_public_key = plan.new_public_key
        run.result.store_version = outcome.restored_version
        return run.finish("rolled_back", f"{reason}; rolled back, old pair {plan.old_public_key} is current")
    return run.finish("failed", f"{reason}; rollback incomplete: {detail}")


def _revoke_and_finish(run: _Run, plan: RotationPlan, record: RotationRecord) -> RotationResult:
    ctx = run.ctx
    problems: list[str] = []
    if plan.old_public_key is not None:
        try:
            revoked = run.step("revoke", revoke_key, ctx, plan.old_public_key, plan.old_version)
            crash_point("after_revoke")
            run.result.old_key_rejected = revoked.rejected
            if revoked.rejected is not True:
                problems.append(f"old key {plan.old_public_key} {revoked.detail or 'not proven rejected'}")
        except Exception as exc:
            problems.append(f"revoke failed: {_one_line(exc)}; the new pair is current and verified, rerun to finish")
    if not problems:
        try:
            run.step("finish", finish_rotation, ctx, record)
        except Exception as exc:
            problems.append(f"finish failed: {_one_line(exc)}; rerun to finish")
    status = "needs_attention" if problems else "rotated"
    result = run.finish(status, "; ".join(problems) or None)
    ctx.audit.record(
        "rotation",
        f"entry:{ctx.entry.name}",
        status,
        old_public_key=plan.old_public_key,
        new_public_key=record.new_public_key,
        store_version=result.store_version,
    )
    _notify(ctx, result)
    return result


# --- emergency containment ----------------------------------------------------------------------


def run_emergency(
    ctx: EntryContext, runner: StepRunner, *, compromised_public_key: str | None = None
) -> RotationResult:
    """create → store → REVOKE NOW → prove rejected → restarts + wait (report) → verify → notify.

    A key still accepted after the delete (Langfuse's API-key cache) is flushed at once with the
    instance admin key; without one it must go idle for the cache TTL, which cannot happen while
    consumers still use it, so that re-probe runs after the restarts, and the result says so.
    """
    run = _Run(ctx, runner, "emergency")
    entry = ctx.entry
    plan: RotationPlan | None = None
    try:
        plan = _prepare(run, "emergency")
        target = compromised_public_key or plan.old_public_key
        if target is None:
            raise StepFailed("plan", f"no compromised key given and none is stored at {ctx.store_label}")
        run.result.old_public_key = target
        if target != plan.old_public_key:
            _check_stray_key(ctx, target)
            return _contain_stray_key(run, target)
        created = run.step("create", create_key, ctx, plan)
        record = created.record
        plan = plan.model_copy(update={"new_public_key": record.new_public_key})
        run.result.new_public_key = record.new_public_key
        promoted = run.step("store", promote_key, ctx, record)
        run.result.store_version = promoted.version
    except BadInputError:
        raise
    except BaseException as exc:
        result = _roll_back(run, plan, exc)
        _notify(ctx, result)
        if not isinstance(exc, Exception):
            raise
        return result
    problems: list[str] = []
    revoked: RevokeOutcome | None = None
    try:
        # Revoke now, without waiting for anyone; if Langfuse's cache still accepts the key and no
        # instance admin key can flush it, the idle re-probe waits until consumers were restarted.
        revoked = run.step("revoke", revoke_key, ctx, target, plan.old_version, True)
        run.result.old_key_rejected = revoked.rejected
    except Exception as exc:
        problems.append(f"revoke failed: {_one_line(exc)}")
    try:
        consumers = run.step(
            "wait_for_restarts",
            wait_for_consumers,
            ctx,
            record.new_public_key,
            timeout_s=entry.wait_timeout_s + entry.grace_period_s + 60,
        )
        run.result.consumers = consumers.wait.last_seen
        if not consumers.wait.all_switched:
            run.result.lagging_consumers = consumers.wait.lagging
            problems.append(_lagging_message(consumers, record.new_public_key, entry.wait_timeout_s))
    except Exception as exc:
        problems.append(f"wait for restarts failed: {_one_line(exc)}")
    try:
        run.step("verify", verify_key, ctx, record, timeout_s=entry.canary_timeout_s + 60)
        run.result.verified = True
    except Exception as exc:
        problems.append(f"verify failed: {_one_line(exc)}")
    if revoked is not None and revoked.idle_recheck_due:
        try:
            revoked = run.step(
                "recheck_revoked",
                recheck_revoked_key,
                ctx,
                target,
                plan.old_version,
                timeout_s=entry.revoke_recheck_s + 60,
            )
            run.result.old_key_rejected = revoked.rejected
        except Exception as exc:
            problems.append(f"re-probe of the revoked key failed: {_one_line(exc)}")
    if revoked is not None and revoked.rejected is not True:
        problems.insert(0, f"compromised key {target}: {revoked.detail or 'not proven rejected'}")
    try:
        run.step("finish", finish_rotation, ctx, record)
    except Exception as exc:
        problems.append(f"finish failed: {_one_line(exc)}")
    status = "needs_attention" if problems else "contained"
    result = run.finish(status, "; ".join(problems) or None)
    ctx.audit.record(
        "emergency",
        f"entry:{entry.name}",
        status,
        compromised_public_key=target,
        new_public_key=record.new_public_key,
        old_key_rejected=result.old_key_rejected,
        lagging=result.lagging_consumers,
        orchestrator=result.orchestrator,
    )
    _notify(ctx, result)
    return result


class BadInputError(Exception):
    """The request cannot be carried out as given; nothing was changed (exit code 2)."""


def _check_stray_key(ctx: EntryContext, target: str) -> None:
    """A compromised key that is not this entry's current key must be a key of the project that
    no other configured entry currently uses (that entry must be contained by its own name)."""
    keys = ctx.admin.list_api_keys(ctx.entry.project_id)
    if not any(k.public_key == target for k in keys):
        raise BadInputError(f"{target} is not a key of Langfuse project {ctx.entry.project_id} (already deleted?)")
    for other in ctx.config.projects:
        if other.name == ctx.entry.name or other.project_id != ctx.entry.project_id:
            continue
        if other.store == ctx.entry.store:
            current = ctx.store.describe(other.location()).current_public_key
            if current == target:
                raise BadInputError(
                    f"{target} is the current key of entry '{other.name}': run emergency --project {other.name}"
                )


def _contain_stray_key(run: _Run, target: str) -> RotationResult:
    """The compromised key is not the entry's current key: revoke it; the current key is untouched."""
    ctx = run.ctx
    try:
        revoked = run.step("revoke", revoke_key, ctx, target, None)
    except Exception as exc:
        result = run.finish("failed", f"revoke failed: {_one_line(exc)}")
    else:
        run.result.old_key_rejected = revoked.rejected
        if revoked.rejected is True:
            result = run.finish("contained", None)
        else:
            result = run.finish("needs_attention", f"compromised key {target}: {revoked.detail}")
    ctx.audit.record(
        "emergency",
        f"entry:{ctx.entry.name}",
        result.status,
        compromised_public_key=target,
        old_key_rejected=result.old_key_rejected,
        orchestrator=result.orchestrator,
        error=result.error,
    )
    _notify(ctx, result)
    return result


# --- notification -------------------------------------------------------------------------------


def notification_for(result: RotationResult) -> Notification:
    emergency = result.mode == "emergency"
    ok = result.status in {"rotated", "contained"}
    verb = {
        "rotated": "rotated",
        "contained": "contained",
        "needs_attention": "needs attention",
        "rolled_back": "rolled back",
        "failed": "FAILED",
    }.get(result.status, result.status)
    title = f"{'EMERGENCY ' if emergency else ''}Langfuse key {verb}: {result.project}"
    lines = [
        f"project: {result.project} ({result.mode})",
        f"status: {result.status}",
        f"old public key: {result.old_public_key}",
        f"new public key: {result.new_public_key}",
        f"store: {result.store} {result.store_location} version {result.store_version}",
        f"verified: {result.verified}; old key rejected: {result.old_key_rejected}",
    ]
    if result.consumers:
        lines.append("consumers: " + ", ".join(f"{k}={v}" for k, v in result.consumers.items()))
    if result.lagging_consumers:
        lines.append("STILL ON THE OLD KEY: " + ", ".join(result.lagging_consumers))
    lines.append("steps: " + "; ".join(f"{s.step} {s.outcome} {s.duration_s:.2f}s" for s in result.steps))
    lines.append(f"duration: {result.duration_s:.2f}s; rotation id {result.rotation_id}")
    if result.prefect_flow_run_id:
        lines.append(f"prefect flow run: {result.prefect_flow_run_id}")
    if result.error:
        lines.append(f"error: {result.error}")
    kind = "emergency" if emergency else ("success" if ok else "failure")
    return Notification(title=title, body=scrub("\n".join(lines)), kind=kind)


def _notify(ctx: EntryContext, result: RotationResult) -> None:
    try:
        outcome = ctx.notifier.send(notification_for(result))
    except (ConnectorError, ValueError) as exc:  # ValueError: an invalid notify URL (loaded lazily)
        ctx.audit.record("notify", f"entry:{ctx.entry.name}", "failed", error=_one_line(exc))
        return
    ctx.audit.record("notify", f"entry:{ctx.entry.name}", outcome.status, delivered=outcome.delivered)


# --- reconcile ----------------------------------------------------------------------------------


def _finish_emergency(ctx: EntryContext, runner: StepRunner, pending: RotationRecord) -> RotationResult:
    """An emergency a crashed run left unfinished is carried through, never rolled back: rolling it
    back would make the compromised key current again. The containment resumes where it stopped
    (the compromised key is the staged record's old key)."""
    result = run_emergency(ctx, runner)
    result.reconciled.insert(0, f"finished the emergency containment {pending.rotation_id} a crashed run left")
    if result.status == "contained":
        result.status = "reconciled"
    ctx.audit.record("reconcile", f"entry:{ctx.entry.name}", result.status, actions=result.reconciled)
    return result


def run_reconcile(ctx: EntryContext, runner: StepRunner) -> RotationResult:
    """Return one entry to a clean state without rotating: finish a rotation that crashed after
    revoking the old key, roll back one that crashed before, carry an unfinished emergency through
    (its old key is compromised), and delete orphan keys."""
    run = _Run(ctx, runner, "scheduled")
    desc = ctx.store.describe(ctx.location)
    actions: list[str] = []
    pending = desc.pending
    if pending is not None and pending.mode == "emergency":
        return _finish_emergency(ctx, runner, pending)
    if pending is not None:
        plan = RotationPlan(
            rotation_id=pending.rotation_id,
            entry=ctx.entry.name,
            project_id=ctx.entry.project_id,
            mode=pending.mode,
            store_name=ctx.store_name,
            store_location=ctx.store_label,
            old_public_key=pending.old_public_key,
            old_version=pending.old_version,
            new_public_key=pending.new_public_key,
            resumed=True,
        )
        run.result.rotation_id = pending.rotation_id
        old_alive = pending.old_public_key is not None and (
            ctx.admin.find_api_key(ctx.entry.project_id, pending.old_public_key) is not None
        )
        if desc.pending_promoted and not old_alive:
            run.step("finish", finish_rotation, ctx, pending)
            actions.append(f"finished rotation {pending.rotation_id}: its old key was already revoked")
        else:
            outcome = run.step("rollback", rollback_rotation, ctx, plan)
            if outcome.errors:
                result = run.finish("failed", "; ".join(outcome.errors))
                _notify(ctx, result)
                return result
            actions.append(
                f"rolled back unfinished rotation {pending.rotation_id}: {pending.old_public_key} is current"
            )
    current = ctx.store.describe(ctx.location)
    plan = RotationPlan(
        rotation_id="reconcile",
        entry=ctx.entry.name,
        project_id=ctx.entry.project_id,
        mode="scheduled",
        store_name=ctx.store_name,
        store_location=ctx.store_label,
        old_public_key=current.current_public_key,
        old_version=current.current_version,
    )
    orphans = run.step("reconcile", reconcile_orphans, ctx, plan)
    actions += orphans.actions
    run.result.reconciled = actions
    run.result.old_public_key = current.current_public_key
    run.result.store_version = current.current_version
    result = run.finish("reconciled")
    ctx.audit.record("reconcile", f"entry:{ctx.entry.name}", "done", actions=actions)
    if actions:
        _notify(ctx, result)
    return result
