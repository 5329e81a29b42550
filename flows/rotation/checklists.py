"""The two checklists, each read top to bottom as its steps in order: scheduled rotation
(``run_scheduled``) and emergency containment (``run_emergency``); ``run_reconcile`` returns an
entry to a clean state.

Each step is a function of ``flows.rotation.steps`` that declares its contract (name, retries, deadline)
and starts with "already done?". ``run.step`` runs it through the ``StepRunner`` (a Prefect task,
or in-process when no Prefect server is reachable) and records its outcome in the run's result
(``flows.rotation.step_table``). Everything before revocation rolls back on any failure (``_rolled_back``);
revocation is the point of no return, after which problems are reported for a person (exit 4).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from pydantic import BaseModel

from connectors.store import RotationRecord, StoreDescription
from flows.errors import BadInputError, StepFailed, Superseded
from flows.models import Mode, RotationPlan, RotationResult
from flows.rotation import steps, trace_steps
from flows.rotation.context import EntryContext
from flows.rotation.contract import contract_of
from flows.rotation.crashpoints import crash_point
from flows.rotation.handover import requester_name
from flows.rotation.notification import notify
from flows.rotation.plan import check_compromised_key, entry_state, past_revocation, plan_rotation, staged_mode
from flows.rotation.runners import StepRunner
from flows.rotation.step_table import RunTracker, one_line


class ApprovalDecision(BaseModel):
    approved: bool
    approver: str = ""
    reason: str = ""
    timed_out: bool = False


HandoverProbe = Callable[[], "str | None"]
"""Returns the emergency run that asked for the entry (``flows.rotation.handover``), or None."""

Approver = Callable[[RotationPlan, RotationRecord, HandoverProbe], ApprovalDecision]
"""Asks a person; gives up early (any decision) once the probe names an emergency."""


# --- scheduled rotation -------------------------------------------------------------------------


def run_scheduled(
    ctx: EntryContext,
    runner: StepRunner,
    *,
    approve: Approver | None = None,
    state: StoreDescription | None = None,
) -> RotationResult:
    """plan → 1 create → [approval] → 2 store → 3 wait for restarts → 4 verify → 5 revoke → finish → notify.

    Before revocation any failure rolls back (``_rolled_back``): the old pair is current again and
    the new key deleted. A rerun resumes the staged rotation; one whose old key is already deleted
    (by the run that was killed, or by someone else) can only go forward, and still waits for
    consumers and verifies before it finishes, else it needs a person (exit 4). An emergency of
    the same entry that asks for it (``flows.rotation.handover``) stops this run where it is, without
    rolling back: the emergency carries the staged rotation through.

    ``state``: the entry's state as read once the run held the lock, nothing changed since (the
    plan uses it instead of reading the store again); None: the plan reads it.
    """
    if staged_mode(ctx, state) == "emergency":
        # A killed emergency is carried through as one: this checklist could roll it back, which
        # would make the compromised key current again.
        return run_emergency(ctx, runner, state=state)
    run = RunTracker(ctx, runner, "scheduled")
    with _until_superseded() as handover:
        plan: RotationPlan | None = None
        problems: list[str] = []  # past the point of no return: reported for a person (exit 4)
        try:
            plan, key_ids = _prepare(run, "scheduled", state)
            forward_only = _resumed_past_revocation(run, plan)
            if forward_only is None:
                # 1 create (written ahead to the store, then in Langfuse), [approval], 2 store (promote)
                record = _create_and_store(run, plan, approve)
                # 3 wait for restarts: every consumer must report the new key, else roll back
                consumers = run.step(steps.wait_for_restarts, ctx, record.new_public_key, record.old_public_key)
                if (lagging := consumers.lagging()) is not None:
                    run.result.steps[-1].outcome = "failed"  # it ran to its end, but this is why the run fails
                    raise StepFailed("wait_for_restarts", lagging)
                # 4 verify: the stored pair authenticates and its canary trace is readable
                run.step(steps.verify, ctx, record)
            else:
                # The old key is already deleted: nothing can roll back, so 3 and 4 only report.
                record = forward_only
                problems = _wait_and_verify_forward_only(run, record)
        except Superseded:
            raise
        except BaseException as exc:
            return _rolled_back(run, plan, exc)
        # Point of no return: the new pair is stored, adopted and verified.
        # 5 revoke the old key, and prove Langfuse rejects it
        revoked = None
        if plan.old_public_key is not None:
            revoked = run.attempt(
                problems,
                steps.revoke,
                ctx,
                plan.old_public_key,
                plan.old_version,
                key_id=key_ids.get(plan.old_public_key),
                then="the new pair is current and verified, rerun to finish",
            )
            # after-revoke traces count from when the old key was proven rejected (or given up on)
            revoked_at = datetime.now(UTC)
            if revoked is not None:
                crash_point("after_revoke")
            if revoked is not None and revoked.rejected is not True:
                problems.append(f"old key {plan.old_public_key} {revoked.detail or 'not proven rejected'}")
        # finish: clear the staging, record the rotation on the secret (only once nothing is left to do)
        if not problems:
            run.attempt(problems, steps.finish, ctx, record, then="rerun to finish")
        # [after revoke: the consumers' traces keep arriving, with the new key]
        if plan.old_public_key is not None and revoked is not None:
            _check_ingestion(run, problems, record, revoked_at)
        # notify
        result = run.finish("needs_attention" if problems else "rotated", "; ".join(problems) or None)
        ctx.audit.record(
            "rotation",
            f"entry:{ctx.entry.name}",
            result.status,
            old_public_key=plan.old_public_key,
            new_public_key=record.new_public_key,
            store_version=result.store_version,
        )
        notify(ctx, result)
        return result
    return _handed_over(run, handover.emergency_run)


# --- emergency containment ----------------------------------------------------------------------


def run_emergency(
    ctx: EntryContext,
    runner: StepRunner,
    *,
    compromised_public_key: str | None = None,
    state: StoreDescription | None = None,
    emergency_run: str | None = None,
) -> RotationResult:
    """plan → [take over the staged rotation] → reconcile → 1 create → 2 store → 5 REVOKE NOW
    → prove rejected → 3 restarts + wait (report) → 4 verify → [re-probe the revoked key] → finish
    → notify.

    A scheduled rotation left staged (its run died, or handed the entry over) is carried through:
    before anything else changes, the staged record is marked as this emergency's (``take_over``),
    so if this run dies too, every later run carries it on as an emergency instead of rolling it
    back onto the compromised key. A key still accepted after the delete (Langfuse's API-key
    cache) is flushed at once with the instance admin key; without one it must go idle for the
    cache TTL, which cannot happen while consumers still use it, so that re-probe runs after the
    restarts, and the result says so. Once the key is revoked nothing rolls back: problems are
    reported (exit 4). ``state``: as for ``run_scheduled``; ``emergency_run``: how this run names
    itself in the takeover (``flows.rotation.handover.requester_name``).
    """
    if compromised_public_key is not None:
        # before anything changes, reconcile included
        check_compromised_key(ctx, compromised_public_key, state)
    run = RunTracker(ctx, runner, "emergency")
    # What a failure before the revoke rolls back: only a containment this run began. A staged
    # rotation carried on as an emergency stays staged (a rerun carries it on again), and a failure
    # before create changed nothing.
    undo: RotationPlan | None = None
    carried_on = ""
    try:
        began = time.monotonic()
        plan = plan_rotation(ctx, "emergency", state)
        run.planned(plan, began)
        target = _compromised_key(run, plan, compromised_public_key)  # bad input: nothing changed yet
        if target == plan.old_public_key and plan.resumed_mode == "scheduled":
            _take_over(run, plan, emergency_run or requester_name(ctx.flow_run_id, ctx.run_label))
        key_ids = run.step(steps.reconcile, ctx, plan).key_ids
        if target != plan.old_public_key:
            return _contain_stray_key(run, target)
        if plan.resumed:
            carried_on = (
                f"rotation {plan.rotation_id} stays staged as an emergency, not rolled back: run "
                f"'langfuse-rotate emergency --project {ctx.entry.name}' again to contain {target}"
            )
        else:
            undo = plan
        # 1 create (written ahead to the store, then in Langfuse), 2 store (promote)
        record = _create_and_store(run, plan)
    except BadInputError:
        raise
    except BaseException as exc:
        return _rolled_back(run, undo, exc, note=carried_on)
    # Point of no return: from here problems are reported for a person (exit 4), never rolled back.
    problems: list[str] = []
    # 5 revoke now, without waiting for anyone; if Langfuse's cache still accepts the key and no
    # instance admin key can flush it, the idle re-probe waits until consumers were restarted.
    revoked = run.attempt(
        problems, steps.revoke, ctx, target, plan.old_version, defer_idle_recheck=True, key_id=key_ids.get(target)
    )
    revoked_at = datetime.now(UTC)
    # 3 restart hooks and wait for restarts: who lags is reported
    consumers = run.attempt(problems, steps.wait_for_restarts, ctx, record.new_public_key, target)
    if consumers is not None and (lagging := consumers.lagging()) is not None:
        problems.append(lagging)
    # 4 verify: the stored pair authenticates and its canary trace is readable
    run.attempt(problems, steps.verify, ctx, record)
    # [re-probe the revoked key, idle for the cache TTL now that consumers moved off it]
    if revoked is not None and revoked.idle_recheck_due:
        rechecked = run.attempt(
            problems, steps.recheck_revoked, ctx, target, plan.old_version, what="re-probe of the revoked key"
        )
        revoked = rechecked or revoked
        revoked_at = datetime.now(UTC)
    if revoked is not None and revoked.rejected is not True:
        problems.insert(0, f"compromised key {target}: {revoked.detail or 'not proven rejected'}")
    # finish: clear the staging, record the containment on the secret
    run.attempt(problems, steps.finish, ctx, record)
    # [after revoke: which consumers broke (their traces stopped)]
    if revoked is not None:
        _check_ingestion(run, problems, record, revoked_at)
    # notify (with failure priority and the ``emergency`` tag)
    result = run.finish("needs_attention" if problems else "contained", "; ".join(problems) or None)
    ctx.audit.record(
        "emergency",
        f"entry:{ctx.entry.name}",
        result.status,
        compromised_public_key=target,
        new_public_key=record.new_public_key,
        old_key_rejected=result.old_key_rejected,
        lagging=result.lagging_consumers,
        orchestrator=result.orchestrator,
    )
    notify(ctx, result)
    return result


# --- the parts both checklists share ------------------------------------------------------------


def _prepare(run: RunTracker, mode: Mode, state: StoreDescription | None) -> tuple[RotationPlan, dict[str, str]]:
    """Plan (resume the staged rotation, or start one), then delete what crashed runs left.
    Also returns the Langfuse ids of the keys the run tracks, by public key (for ``revoke``)."""
    began = time.monotonic()
    plan = plan_rotation(run.ctx, mode, state)
    run.planned(plan, began)
    reconciled = run.step(steps.reconcile, run.ctx, plan)
    return plan, reconciled.key_ids


def _create_and_store(run: RunTracker, plan: RotationPlan, approve: Approver | None = None) -> RotationRecord:
    """1 create (written ahead to the store, then in Langfuse) → [approval] → 2 store (promote)."""
    record = run.step(steps.create, run.ctx, plan).record
    if approve is not None:
        _approval(run, approve, plan.model_copy(update={"new_public_key": record.new_public_key}), record)
    run.step(steps.store, run.ctx, record)
    return record


def _rolled_back(run: RunTracker, plan: RotationPlan | None, exc: BaseException, note: str = "") -> RotationResult:
    """A failure before the point of no return: roll back ``plan`` (None: nothing to roll back),
    notify, return the result (an interrupt, e.g. Ctrl-C, is raised again once the rollback is
    done). ``note``: why nothing was rolled back, for the result's error."""
    if plan is not None and run.result.new_public_key is not None:
        plan = plan.model_copy(update={"new_public_key": run.result.new_public_key})
    result = _roll_back(run, plan, exc, note)
    notify(run.ctx, result)
    if not isinstance(exc, Exception):
        raise exc
    return result


def _roll_back(run: RunTracker, plan: RotationPlan | None, exc: BaseException, note: str = "") -> RotationResult:
    ctx = run.ctx
    failed_step = exc.step if isinstance(exc, StepFailed) else run.current_step
    run.result.failed_step = failed_step
    reason = f"{failed_step}: {one_line(exc)}"
    if plan is None:  # nothing to roll back
        return run.finish("failed", f"{reason}; {note}" if note else reason)
    # An emergency asked for the entry: it carries the rotation through; rolling back now would
    # make the compromised key current again under it.
    ctx.handover.check()
    began = time.monotonic()
    try:
        outcome = run.runner.run(steps.rollback, ctx, plan, timeout_s=contract_of(steps.rollback).deadline_s(ctx.entry))
    except Exception as rollback_exc:
        run.record("rollback", "failed", began, one_line(rollback_exc))
        return run.finish("failed", f"{reason}; rollback failed: {one_line(rollback_exc)}")
    row = {"rolled_back": "rolled_back", "needs_attention": "attention", "failed": "failed"}[outcome.status]
    run.record("rollback", row, began, outcome.describe())
    ctx.audit.record("rotation", f"entry:{ctx.entry.name}", outcome.status, error=reason)
    if outcome.status != "failed":
        run.result.new_public_key = plan.new_public_key
        run.result.store_version = outcome.restored_version
    if outcome.status == "rolled_back":
        return run.finish("rolled_back", f"{reason}; rolled back, old pair {plan.old_public_key} is current")
    if outcome.status == "needs_attention":
        # The store is back on the old pair, but a key some consumer may run on is alive: a person decides.
        return run.finish("needs_attention", f"{reason}; rolled back the store, {outcome.describe()}")
    return run.finish("failed", f"{reason}; rollback incomplete: {outcome.describe()}")


def _wait_and_verify_forward_only(run: RunTracker, record: RotationRecord) -> list[str]:
    """3 wait for restarts and 4 verify, for a promoted rotation whose old key is already deleted:
    it cannot roll back, so what goes wrong is returned for a person (the rotation then stays
    staged and the new pair current, so a rerun checks again); empty: finish it."""
    problems: list[str] = []
    consumers = run.attempt(problems, steps.wait_for_restarts, run.ctx, record.new_public_key, record.old_public_key)
    if consumers is not None and (lagging := consumers.lagging()) is not None:
        run.result.steps[-1].outcome = "failed"
        problems.append(lagging)
    run.attempt(problems, steps.verify, run.ctx, record)
    if problems:
        problems.append(
            f"the old key {record.old_public_key} is already deleted, so nothing was rolled back: "
            f"{record.new_public_key} stays current; fix the above and rerun to finish"
        )
    return problems


def _check_ingestion(run: RunTracker, problems: list[str], record: RotationRecord, revoked_at: datetime) -> None:
    """The after-revoke check (docs/trace-evidence.md), for an entry with ``traces`` consumers:
    each silent one is a problem for a person; nothing rolls back, the old key is gone."""
    if not run.ctx.trace_watches:
        return
    checked = run.attempt(problems, trace_steps.check_ingestion, run.ctx, record.new_public_key, revoked_at)
    if checked is not None and (problem := checked.problem()) is not None:
        run.result.steps[-1].outcome = "attention"
        problems.append(problem)


# --- scheduled rotation: its own parts ----------------------------------------------------------


class _Handover:
    emergency_run = ""


@contextlib.contextmanager
def _until_superseded() -> Iterator[_Handover]:
    """Ends the block when an emergency asks for the entry (``Superseded``) and says which one."""
    handover = _Handover()
    try:
        yield handover
    except Superseded as handed:
        handover.emergency_run = handed.emergency_run


def _handed_over(run: RunTracker, emergency_run: str) -> RotationResult:
    """This rotation stopped for an emergency: nothing rolled back, the lock is let go."""
    ctx = run.ctx
    staged = run.result.rotation_id
    detail = (
        f"superseded by emergency {emergency_run} (obeyed: {ctx.handover.obeyed_because or 'asked'}): stopped in "
        f"{run.current_step} without rolling back; the emergency carries rotation {staged} through"
    )
    run.record("handover", "done", time.monotonic(), detail)
    result = run.finish("in_progress", detail)
    ctx.audit.record(
        "rotation", f"entry:{ctx.entry.name}", "superseded", emergency_run=emergency_run, rotation_id=staged
    )
    notify(ctx, result)
    return result


def _resumed_past_revocation(run: RunTracker, plan: RotationPlan) -> RotationRecord | None:
    """The resumed rotation's record if its old key is already deleted from Langfuse while its new
    pair is current: it is past the point of no return and can only go forward (rolling it back
    would make a pair current that Langfuse no longer accepts and delete the only live key)."""
    if not plan.resumed or plan.old_public_key is None:
        return None
    began = time.monotonic()
    forward_only = past_revocation(run.ctx, plan.rotation_id)
    if forward_only is None:
        return None
    run.record("resume", "already_done", began, forward_only.describe())
    run.adopt(forward_only)
    return forward_only.record


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


# --- emergency containment: its own parts -------------------------------------------------------


def _compromised_key(run: RunTracker, plan: RotationPlan, named: str | None) -> str:
    """The key to contain: the one named, else the entry's current key (of the resumed rotation:
    its old key, which its new key replaces)."""
    target = named or plan.old_public_key
    if target is None:
        raise StepFailed("plan", f"no compromised key given and none is stored at {run.ctx.store_label}")
    run.result.old_public_key = target
    if plan.resumed and target == plan.new_public_key:
        # Revoking it here would kill the pair the store may already serve as current.
        raise BadInputError(
            f"{target} is the new key of the unfinished rotation {plan.rotation_id}: run "
            f"'langfuse-rotate reconcile --project {run.ctx.entry.name}' (rolls it back and deletes that key), "
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
    return target


def _take_over(run: RunTracker, plan: RotationPlan, emergency_run: str) -> None:
    """Mark the staged scheduled rotation as this emergency's. If the store cannot take the write,
    the emergency still goes ahead (containing matters more); the step table says so."""
    try:
        run.step(steps.take_over, run.ctx, plan.rotation_id, emergency_run)
    except Exception:
        run.result.steps[-1].detail += (
            "; going ahead without it: if this run dies before the old key is revoked, "
            f"run 'langfuse-rotate emergency --project {run.ctx.entry.name}' again, not reconcile"
        )


def _contain_stray_key(run: RunTracker, target: str) -> RotationResult:
    """The compromised key is not the entry's current key: revoke it; the current key is untouched."""
    ctx = run.ctx
    try:
        revoked = run.step(steps.revoke, ctx, target, None)
    except Exception as exc:
        result = run.finish("failed", f"revoke failed: {one_line(exc)}")
    else:
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


def _finish_emergency(
    ctx: EntryContext, runner: StepRunner, pending: RotationRecord, state: StoreDescription
) -> RotationResult:
    """An emergency a crashed run left unfinished is carried through, never rolled back: rolling it
    back would make the compromised key current again. The containment resumes where it stopped
    (the compromised key is the staged record's old key)."""
    result = run_emergency(ctx, runner, state=state)
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
    desc = entry_state(ctx)
    if not desc.exists:
        return run.finish("failed", f"no secret at {ctx.store_label}: nothing to reconcile")
    actions: list[str] = []
    kept: list[str] = []
    pending = desc.pending
    if pending is not None and staged_mode(ctx, desc) == "emergency":
        # An emergency's, or a scheduled one an emergency took over: never rolled back.
        return _finish_emergency(ctx, runner, pending, desc)
    if pending is not None:
        run.result.rotation_id = pending.rotation_id
        forward_only = past_revocation(ctx, pending.rotation_id)
        if forward_only is not None:
            # Past the point of no return: it can only go forward, and only once consumers switched
            # and the new pair verified, as a rerun would (``run_scheduled``).
            problems = _wait_and_verify_forward_only(run, pending)
            if problems:
                run.adopt(forward_only)
                run.result.old_public_key = pending.old_public_key
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
            plan = plan_rotation(ctx, pending.mode, desc)  # the staged rotation, as a rerun would resume it
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
    current = entry_state(ctx)
    orphans = run.step(steps.reconcile, ctx, plan_rotation(ctx, "scheduled", current))
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
