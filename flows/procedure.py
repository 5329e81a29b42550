"""The two checklists, read top to bottom: scheduled rotation and emergency containment.

Both are written against a ``StepRunner`` so the same code runs as Prefect tasks or, when no
Prefect server is reachable, in-process. Everything before revocation rolls back on any failure;
revocation is the point of no return.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pydantic import BaseModel

from connectors.errors import ConnectorError
from connectors.store import RotationRecord
from flows import steps
from flows.context import EntryContext
from flows.contract import contract_of
from flows.crashpoints import crash_point
from flows.errors import BadInputError, StepFailed, Superseded
from flows.models import Mode, RotationPlan, RotationResult
from flows.notification import notify
from flows.runner import StepRunner
from flows.steps import ConsumerOutcome, RevokeOutcome, plan_rotation
from flows.tracking import RunTracker, one_line


class ApprovalDecision(BaseModel):
    approved: bool
    approver: str = ""
    reason: str = ""
    timed_out: bool = False


HandoverProbe = Callable[[], "str | None"]
"""Returns the emergency run that asked for the entry (``flows.handover``), or None."""

Approver = Callable[[RotationPlan, RotationRecord, HandoverProbe], ApprovalDecision]
"""Asks a person; gives up early (any decision) once the probe names an emergency."""


def _prepare(run: RunTracker, mode: Mode) -> RotationPlan:
    ctx = run.ctx
    began = time.monotonic()
    plan = plan_rotation(ctx, mode)
    run.record("plan", "done", began, plan.note or f"rotation {plan.rotation_id}")
    run.result.rotation_id = plan.rotation_id
    run.result.resumed = plan.resumed
    run.result.old_public_key = plan.old_public_key
    run.result.new_public_key = plan.new_public_key
    reconciled = run.step(steps.reconcile, ctx, plan)
    run.result.reconciled = reconciled.actions
    return plan


# --- scheduled rotation -------------------------------------------------------------------------


def run_scheduled(ctx: EntryContext, runner: StepRunner, *, approve: Approver | None = None) -> RotationResult:
    """create → store → wait for restarts → verify → revoke → finish → notify.

    An emergency of the same entry that asks for it (``flows.handover``) stops this run where it
    is, without rolling back: the emergency carries the staged rotation through."""
    if _pending_mode(ctx) == "emergency":
        # A killed emergency is carried through as one: this checklist could roll it back, which
        # would make the compromised key current again.
        return run_emergency(ctx, runner)
    run = RunTracker(ctx, runner, "scheduled")
    try:
        return _scheduled(run, approve)
    except Superseded as handed:
        return _handed_over(run, handed)


def _scheduled(run: RunTracker, approve: Approver | None) -> RotationResult:
    ctx = run.ctx
    plan: RotationPlan | None = None
    resumed: RotationRecord | None = None
    try:
        plan = _prepare(run, "scheduled")
        resumed = _resumed_after_delete(run, plan)
        if resumed is None:
            record = _until_verified(run, plan, approve)
    except Superseded:
        raise
    except BaseException as exc:
        if plan is not None and run.result.new_public_key is not None:
            plan = plan.model_copy(update={"new_public_key": run.result.new_public_key})
        result = _roll_back(run, plan, exc)
        notify(ctx, result)
        if not isinstance(exc, Exception):
            raise
        return result
    assert plan is not None
    if resumed is not None:
        return _go_forward(run, plan.model_copy(update={"new_public_key": resumed.new_public_key}), resumed)
    # Point of no return: the new pair is stored, adopted and verified.
    return _revoke_and_finish(run, plan.model_copy(update={"new_public_key": record.new_public_key}), record)


def _handed_over(run: RunTracker, handed: Superseded) -> RotationResult:
    """This rotation stopped for an emergency: nothing rolled back, the lock is let go."""
    ctx = run.ctx
    staged = run.result.rotation_id
    detail = (
        f"superseded by emergency {handed.emergency_run}: stopped in {run.current_step} without rolling back; "
        f"the emergency carries rotation {staged} through"
    )
    run.record("handover", "done", time.monotonic(), detail)
    result = run.finish("in_progress", detail)
    ctx.audit.record(
        "rotation", f"entry:{ctx.entry.name}", "superseded", emergency_run=handed.emergency_run, rotation_id=staged
    )
    notify(ctx, result)
    return result


def _until_verified(run: RunTracker, plan: RotationPlan, approve: Approver | None) -> RotationRecord:
    """Steps 1-4 of a scheduled rotation; any exception means: roll back."""
    ctx = run.ctx
    created = run.step(steps.create, ctx, plan)
    record = created.record
    plan = plan.model_copy(update={"new_public_key": record.new_public_key})
    run.result.new_public_key = record.new_public_key
    if approve is not None:
        _approval(run, approve, plan, record)
    promoted = run.step(steps.store, ctx, record)
    run.result.store_version = promoted.version
    lagging = _wait_for_restarts(run, record)
    if lagging is not None:
        run.result.steps[-1].outcome = "failed"  # the step ran to its end, but this is why the run fails
        raise StepFailed("wait_for_restarts", lagging)
    run.step(steps.verify, ctx, record)
    run.result.verified = True
    return record


def _pending_mode(ctx: EntryContext) -> str | None:
    """The staged rotation's mode; "emergency" also for a scheduled one an emergency took over."""
    try:
        desc = ctx.store.describe(ctx.location)
    except ConnectorError:
        return None  # the plan step reports it
    pending = desc.pending
    if pending is None:
        return None
    if desc.handover is not None and desc.handover.rotation_id == pending.rotation_id:
        return "emergency"
    return pending.mode


def _resumed_after_delete(run: RunTracker, plan: RotationPlan) -> RotationRecord | None:
    """The resumed rotation's record if its old key is already deleted from Langfuse (by the run
    that was killed, or by someone else) while its new pair is current.

    Such a rotation is past the point of no return and can only go forward: rolling it back would
    make a pair current that Langfuse no longer accepts and delete the only live key. Going forward
    still means waiting for consumers and verifying (``_go_forward``): whoever deleted the old key
    may have done so before anyone switched.
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
        f"old key {plan.old_public_key} is already deleted and {pending.new_public_key} is current: the rotation "
        "can only go forward; waiting for consumers and verifying before finishing it",
    )
    run.result.new_public_key = pending.new_public_key
    run.result.store_version = desc.current_version
    return pending


def _go_forward(run: RunTracker, plan: RotationPlan, record: RotationRecord) -> RotationResult:
    """Finish a rotation that cannot be rolled back, but report success only once every consumer
    switched and the new pair verified; otherwise the result needs a person (exit 4), the new pair
    stays current and the rotation stays staged, so a rerun checks again."""
    return _revoke_and_finish(run, plan, record, _forward_checks(run, record))


def _forward_checks(run: RunTracker, record: RotationRecord) -> list[str]:
    """Steps 3 and 4 for a promoted rotation whose old key is already deleted: wait for every
    consumer, then verify; returns what stops it from being finished (empty: finish it)."""
    problems: list[str] = []
    try:
        lagging = _wait_for_restarts(run, record)
        if lagging is not None:
            run.result.steps[-1].outcome = "failed"
            problems.append(lagging)
    except Exception as exc:
        problems.append(f"wait for restarts failed: {one_line(exc)}")
    try:
        run.step(steps.verify, run.ctx, record)
        run.result.verified = True
    except Exception as exc:
        problems.append(f"verify failed: {one_line(exc)}")
    if problems:
        problems.append(
            f"the old key {record.old_public_key} is already deleted, so nothing was rolled back: "
            f"{record.new_public_key} stays current; fix the above and rerun to finish"
        )
    return problems


def _approval(run: RunTracker, approve: Approver, plan: RotationPlan, record: RotationRecord) -> None:
    began = time.monotonic()
    run.current_step = "approval"
    decision = approve(plan, record, run.ctx.handover.requested_by)
    run.ctx.handover.check()  # an emergency ended the wait: hand over, neither approved nor rejected
    who = decision.approver or "unknown"
    if decision.timed_out:
        run.record("approval", "failed", began, f"timed out: {decision.reason}")
        raise StepFailed("approval", f"approval timed out: {decision.reason}")
    if not decision.approved:
        run.record("approval", "failed", began, f"rejected by {who}: {decision.reason}")
        raise StepFailed("approval", f"rotation not approved by {who}: {decision.reason or 'no reason given'}")
    run.record("approval", "done", began, f"approved by {who}: {decision.reason}")
    run.ctx.audit.record("approval", f"entry:{run.ctx.entry.name}", "approved", approver=who, reason=decision.reason)


def _wait_for_restarts(run: RunTracker, record: RotationRecord) -> str | None:
    """Step 3: restart hooks, then wait for every consumer; returns who lags (None: all switched)."""
    entry = run.ctx.entry
    consumers = run.step(steps.wait_for_restarts, run.ctx, record.new_public_key)
    run.result.consumers = consumers.wait.last_seen
    if consumers.wait.all_switched:
        return None
    run.result.lagging_consumers = consumers.wait.lagging
    return _lagging_message(consumers, record.new_public_key, entry.wait_timeout_s)


def _lagging_message(consumers: ConsumerOutcome, public_key: str, timeout_s: float) -> str:
    parts = []
    for name in consumers.wait.lagging:
        seen = consumers.wait.last_seen.get(name)
        error = consumers.wait.errors.get(name) or consumers.restart_errors.get(name)
        parts.append(f"{name} ({error or f'still on {seen}'})")
    return f"consumers did not switch to {public_key} within {timeout_s:g}s: {', '.join(parts)}"


def _roll_back(run: RunTracker, plan: RotationPlan | None, exc: BaseException) -> RotationResult:
    ctx = run.ctx
    failed_step = exc.step if isinstance(exc, StepFailed) else run.current_step
    run.result.failed_step = failed_step
    reason = f"{failed_step}: {one_line(exc)}"
    if plan is None:  # nothing changed yet
        return run.finish("failed", reason)
    # An emergency asked for the entry: it carries the rotation through; rolling back now would
    # make the compromised key current again under it.
    ctx.handover.check()
    began = time.monotonic()
    try:
        outcome = run.runner.run(steps.rollback, ctx, plan, timeout_s=contract_of(steps.rollback).deadline_s(ctx.entry))
    except Exception as rollback_exc:
        run.record("rollback", "failed", began, one_line(rollback_exc))
        return run.finish("failed", f"{reason}; rollback failed: {one_line(rollback_exc)}")
    clean = outcome.store_restored and outcome.new_key_deleted and not outcome.errors
    kept = outcome.new_key_kept if outcome.store_restored else None
    if clean:
        detail = f"old pair {plan.old_public_key} current again (version {outcome.restored_version}); new key deleted"
    elif kept is not None:
        restored = f"old pair {plan.old_public_key} current again (version {outcome.restored_version})"
        detail = "; ".join([restored, *outcome.errors])
    else:
        detail = "; ".join(outcome.errors)
    outcome_name = "rolled_back" if clean else ("needs_attention" if kept is not None else "failed")
    run.record("rollback", "rolled_back" if clean else ("attention" if kept is not None else "failed"), began, detail)
    ctx.audit.record("rotation", f"entry:{ctx.entry.name}", outcome_name, error=reason)
    if clean or kept is not None:
        run.result.new_public_key = plan.new_public_key
        run.result.store_version = outcome.restored_version
    if clean:
        return run.finish("rolled_back", f"{reason}; rolled back, old pair {plan.old_public_key} is current")
    if kept is not None:
        # The store is back on the old pair, but a key some consumer may run on is alive: a person decides.
        return run.finish("needs_attention", f"{reason}; rolled back the store, {detail}")
    return run.finish("failed", f"{reason}; rollback incomplete: {detail}")


def _revoke_and_finish(
    run: RunTracker, plan: RotationPlan, record: RotationRecord, problems: list[str] | None = None
) -> RotationResult:
    """Revoke the old key and finish; ``problems`` found before (the rotation is then not finished)."""
    ctx = run.ctx
    problems = list(problems or [])
    if plan.old_public_key is not None:
        try:
            revoked = run.step(steps.revoke, ctx, plan.old_public_key, plan.old_version)
            crash_point("after_revoke")
            run.result.old_key_rejected = revoked.rejected
            if revoked.rejected is not True:
                problems.append(f"old key {plan.old_public_key} {revoked.detail or 'not proven rejected'}")
        except Exception as exc:
            problems.append(f"revoke failed: {one_line(exc)}; the new pair is current and verified, rerun to finish")
    if not problems:
        try:
            run.step(steps.finish, ctx, record)
        except Exception as exc:
            problems.append(f"finish failed: {one_line(exc)}; rerun to finish")
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
    notify(ctx, result)
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
    if compromised_public_key is not None:
        _check_named_key(ctx, compromised_public_key)  # before anything changes, reconcile included
    run = RunTracker(ctx, runner, "emergency")
    entry = ctx.entry
    plan: RotationPlan | None = None
    try:
        plan = _prepare(run, "emergency")
        target = compromised_public_key or plan.old_public_key
        if target is None:
            raise StepFailed("plan", f"no compromised key given and none is stored at {ctx.store_label}")
        run.result.old_public_key = target
        if plan.resumed and target == plan.new_public_key:
            # Revoking it here would kill the pair the store may already serve as current.
            raise BadInputError(
                f"{target} is the new key of the unfinished rotation {plan.rotation_id}: run "
                f"'langfuse-rotate reconcile --project {ctx.entry.name}' (rolls it back and deletes that key), "
                "then contain the old key if it leaked too"
            )
        if plan.resumed:
            run.record(
                "resume",
                "done",
                time.monotonic(),
                f"an unfinished rotation was in flight: containing its old key {target}; "
                f"its new key {plan.new_public_key} replaces it (if that one leaked, run reconcile first)",
            )
        if target != plan.old_public_key:
            return _contain_stray_key(run, target)
        created = run.step(steps.create, ctx, plan)
        record = created.record
        plan = plan.model_copy(update={"new_public_key": record.new_public_key})
        run.result.new_public_key = record.new_public_key
        promoted = run.step(steps.store, ctx, record)
        run.result.store_version = promoted.version
    except BadInputError:
        raise
    except BaseException as exc:
        result = _roll_back(run, plan, exc)
        notify(ctx, result)
        if not isinstance(exc, Exception):
            raise
        return result
    problems: list[str] = []
    revoked: RevokeOutcome | None = None
    try:
        # Revoke now, without waiting for anyone; if Langfuse's cache still accepts the key and no
        # instance admin key can flush it, the idle re-probe waits until consumers were restarted.
        revoked = run.step(steps.revoke, ctx, target, plan.old_version, True)
        run.result.old_key_rejected = revoked.rejected
    except Exception as exc:
        problems.append(f"revoke failed: {one_line(exc)}")
    try:
        lagging = _wait_for_restarts(run, record)
        if lagging is not None:
            problems.append(lagging)
    except Exception as exc:
        problems.append(f"wait for restarts failed: {one_line(exc)}")
    try:
        run.step(steps.verify, ctx, record)
        run.result.verified = True
    except Exception as exc:
        problems.append(f"verify failed: {one_line(exc)}")
    if revoked is not None and revoked.idle_recheck_due:
        try:
            revoked = run.step(steps.recheck_revoked, ctx, target, plan.old_version)
            run.result.old_key_rejected = revoked.rejected
        except Exception as exc:
            problems.append(f"re-probe of the revoked key failed: {one_line(exc)}")
    if revoked is not None and revoked.rejected is not True:
        problems.insert(0, f"compromised key {target}: {revoked.detail or 'not proven rejected'}")
    try:
        run.step(steps.finish, ctx, record)
    except Exception as exc:
        problems.append(f"finish failed: {one_line(exc)}")
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
    notify(ctx, result)
    return result


def _check_named_key(ctx: EntryContext, target: str) -> None:
    """A compromised key named on the command line that is not one of this entry's own keys must
    be a key of the entry's project that no other configured entry holds as its current or staged
    key, whatever store that entry lives in (two store names may even point at the same server):
    deleting it would cut that entry's services off. That entry must be contained by its own name."""
    try:
        desc = ctx.store.describe(ctx.location)
    except ConnectorError:
        return  # the plan step reports it
    own = {desc.current_public_key}
    if desc.pending is not None:
        own |= {desc.pending.old_public_key, desc.pending.new_public_key}
    if target in own:
        return
    keys = ctx.admin.list_api_keys(ctx.entry.project_id)
    if not any(k.public_key == target for k in keys):
        raise BadInputError(f"{target} is not a key of Langfuse project {ctx.entry.project_id} (already deleted?)")
    for other in ctx.config.projects:
        if other.name == ctx.entry.name:
            continue
        try:
            theirs = ctx.store_for(other.store).describe(other.location())
        except (ConnectorError, ValueError) as exc:
            if other.project_id != ctx.entry.project_id:
                continue  # a key of this project cannot be the working key of another project's entry
            raise BadInputError(
                f"{target} may be a key of entry '{other.name}', whose store '{other.store}' cannot be read "
                f"({one_line(exc)}); nothing was changed: check that entry, or run emergency --project {other.name}"
            ) from None
        held = {theirs.current_public_key: "current"}
        if theirs.pending is not None:
            held.setdefault(theirs.pending.new_public_key, "staged")
            held.setdefault(theirs.pending.old_public_key, "current")
        if target in held:
            raise BadInputError(
                f"{target} is the {held[target]} key of entry '{other.name}' (store '{other.store}'), not a stray "
                f"key of '{ctx.entry.name}'; nothing was changed: run emergency --project {other.name}"
            )


def _contain_stray_key(run: RunTracker, target: str) -> RotationResult:
    """The compromised key is not the entry's current key: revoke it; the current key is untouched."""
    ctx = run.ctx
    try:
        revoked = run.step(steps.revoke, ctx, target, None)
    except Exception as exc:
        result = run.finish("failed", f"revoke failed: {one_line(exc)}")
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
    notify(ctx, result)
    return result


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
    run = RunTracker(ctx, runner, "scheduled")
    desc = ctx.store.describe(ctx.location)
    if not desc.exists:
        return run.finish("failed", f"no secret at {ctx.store_label}: nothing to reconcile")
    actions: list[str] = []
    kept: list[str] = []
    pending = desc.pending
    if pending is not None and pending.mode == "emergency":
        return _finish_emergency(ctx, runner, pending)
    if pending is not None:
        plan = plan_rotation(ctx, pending.mode)  # the staged rotation, as a rerun would resume it
        run.result.rotation_id = pending.rotation_id
        old_alive = pending.old_public_key is not None and (
            ctx.admin.find_api_key(ctx.entry.project_id, pending.old_public_key) is not None
        )
        if desc.pending_promoted and not old_alive:
            # Past the point of no return: it can only go forward, and only once consumers switched
            # and the new pair verified, as a rerun would (``_go_forward``).
            problems = _forward_checks(run, pending)
            if problems:
                run.result.old_public_key = pending.old_public_key
                run.result.new_public_key = pending.new_public_key
                run.result.store_version = desc.current_version
                result = run.finish("needs_attention", "; ".join(problems))
                ctx.audit.record("reconcile", f"entry:{ctx.entry.name}", result.status, error=result.error)
                notify(ctx, result)
                return result
            run.step(steps.finish, ctx, pending)
            actions.append(
                f"finished rotation {pending.rotation_id}: its old key was already revoked, consumers switched "
                "and the new pair verified"
            )
        else:
            outcome = run.step(steps.rollback, ctx, plan)
            if outcome.errors and outcome.new_key_kept is None:
                result = run.finish("failed", "; ".join(outcome.errors))
                notify(ctx, result)
                return result
            actions.append(
                f"rolled back unfinished rotation {pending.rotation_id}: {pending.old_public_key} is current"
            )
            if outcome.new_key_kept is not None:
                kept.append(outcome.new_key_kept)
                actions.append(outcome.new_key_kept)
    current = ctx.store.describe(ctx.location)
    orphans = run.step(steps.reconcile, ctx, plan_rotation(ctx, "scheduled"))
    actions += orphans.actions
    kept += orphans.kept
    run.result.reconciled = actions
    run.result.old_public_key = current.current_public_key
    run.result.store_version = current.current_version
    # A key kept because a consumer uses it, or cannot be proven not to, needs a person (exit 4).
    result = run.finish("needs_attention", "; ".join(kept)) if kept else run.finish("reconciled")
    ctx.audit.record("reconcile", f"entry:{ctx.entry.name}", "done" if not kept else result.status, actions=actions)
    if actions:
        notify(ctx, result)
    return result
