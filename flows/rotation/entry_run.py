"""One entry point for every mode: load the config, open the entry, take the lock, run.

Used by the Prefect flows (with a ``PrefectRunner``) and by the command line when no Prefect
server is reachable (with a ``DirectRunner``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from connectors.errors import ConnectorError
from connectors.store import StoreDescription
from flows.audit import audit_failure, audit_result, default_audit_path, run_context
from flows.config.model import RotationConfig, load_config
from flows.errors import BadInputError, ConfigError, RotationInProgressError, StepFailed
from flows.models import DONE_STATUSES, Mode, RotationResult, Status
from flows.redact import install_redaction
from flows.rotation.checklists import Approver, run_emergency, run_reconcile, run_scheduled
from flows.rotation.context import EntryContext
from flows.rotation.handover import HandoverRequester, requester_name
from flows.rotation.lock import entry_lock
from flows.rotation.notification import held_for_summary, notification_for, notified_run, send_to
from flows.rotation.plan import entry_state
from flows.rotation.runners import StepRunner
from flows.rotation.step_table import one_line

_F = TypeVar("_F", bound=Callable[..., Any])


def audited_run(fn: _F) -> _F:
    """For ``flows.rotation.entry_run.execute(kind, project, config_path, runner, ..., config=None)``: loads
    the configuration once, unless the caller already did (``config``), and hands it down as
    ``config``; every call writes exactly one final line, whatever happens inside (result, bad
    input, a configuration that cannot be read, an unexpected error)."""

    @functools.wraps(fn)
    def wrapper(kind: str, project: str, config_path: str | None, *args: Any, **kwargs: Any) -> Any:
        install_redaction()
        with run_context(kind, run_id=kwargs.get("flow_run_id")) as run:
            config = kwargs.get("config")
            try:
                if config is None:
                    config = kwargs["config"] = load_config(config_path)
                result = fn(kind, project, config_path, *args, **kwargs)
            except BaseException as exc:
                if not run.final_written:
                    path = config.audit.path if config is not None else default_audit_path()
                    audit_failure(kind, project, exc, path=path)
                raise
            if not run.final_written:
                audit_result(kind, result, path=config.audit.path)
            if run.audit_error is not None:
                result = _audit_failed(result, run.audit_error, config, config_path)
            return result

    return wrapper  # type: ignore[return-value]


_DONE = DONE_STATUSES


def _audit_failed(result: Any, error: str, config: Any, config_path: str | None) -> Any:
    """The result of a run some audit line of which could not be written: a run that was done needs
    a person (exit 4: done, but its record is missing); a failed or refused one keeps its status
    (and exit code); either way the error says so, and a notification too (inside a fleet run, its
    summary does)."""
    said = f"the audit line could not be written: {error}"
    if result.status in _DONE:
        update = {"status": "needs_attention", "error": f"{result.status}, but {said}"}
    else:
        update = {"error": f"{result.error}; {said}" if result.error else said}
    changed = result.model_copy(update=update)
    if held_for_summary.get() is None:
        send_to(config_path, notification_for(changed), config=config)
    return changed


Kind = Literal["rotate", "emergency", "reconcile"]


@audited_run
@notified_run
def execute(
    kind: Kind,
    project: str,
    config_path: str | None,
    runner: StepRunner,
    *,
    flow_run_id: str | None = None,
    run_label: str | None = None,
    compromised_public_key: str | None = None,
    approve: Approver | None = None,
    lock_with_prefect: bool | None = None,
    config: RotationConfig | None = None,
    state_before: StoreDescription | None = None,
) -> RotationResult:
    """``lock_with_prefect``: also take the entry's Prefect concurrency limit (when a Prefect server
    is configured); by default only runs on the Prefect runner do. A reconcile run without Prefect
    passes True when the server answers: it changes the same state a rotation does.

    ``config`` is loaded once per run and handed down from here: by the caller that already read it
    (a flow, for its tags and approval; a fleet run, whose entries may come from a template), else by
    ``audited_run`` from ``config_path``. The entry's store and clients are built once, in
    ``EntryContext``.

    ``state_before``: the entry's state as the caller read it just before (a fleet run's skip
    check), taken as the state before the lock instead of reading it again; an earlier answer only
    makes the "replaced while this run waited" check stricter (``_check_not_replaced_meanwhile``)."""
    assert config is not None  # audited_run loads it when the caller did not
    entry = config.entry(project)
    mode: Mode = "emergency" if kind == "emergency" else "scheduled"
    try:
        # An emergency loads the notifier after containment (it costs ~0.3 s); other runs check it first.
        ctx = EntryContext(
            config, entry, flow_run_id=flow_run_id, run_label=run_label, eager_notifier=kind != "emergency"
        )
    except ConnectorError as exc:
        return RotationResult(
            status="failed",
            project=project,
            mode=mode,
            store=entry.store,
            prefect_flow_run_id=flow_run_id,
            orchestrator=_orchestrator(runner),
            error=f"setup: {exc}",
            failed_step="setup",
        )
    requester = _requester(ctx) if kind == "emergency" else None
    try:
        # An emergency asks a run that holds the entry to hand over (flows.rotation.handover) and waits for
        # it to let go, refreshing its request; it never waits behind a scheduled rotation.
        wait_s = max(config.lock.wait_s, 30.0) if kind == "emergency" else config.lock.wait_s
        use_prefect = runner.orchestrator == "prefect" if lock_with_prefect is None else lock_with_prefect
        # The entry before the wait; None when the store cannot say (the plan step reports it).
        before = (state_before or _state_or_none(ctx)) if kind != "reconcile" else None
        if requester is not None:
            requester.request()
        with entry_lock(
            entry.name,
            wait_s=wait_s,
            lease_s=config.lock.lease_s,
            use_prefect=use_prefect,
            on_wait=requester.refresh if requester is not None else None,
            take_over_after_s=TAKE_OVER_AFTER_S if requester is not None else None,
        ) as held:
            now = _state_or_none(ctx) if requester is not None or before is not None else None
            if requester is not None:
                if before is not None and now is not None and now.pending is None:
                    _check_not_replaced_meanwhile(ctx, now, before)
                # A staged rotation is carried through: the checklist's first write marks it as this
                # emergency's (``take_over``), so a rerun after a crash carries it on as an emergency too.
                result = run_emergency(
                    ctx,
                    runner,
                    compromised_public_key=compromised_public_key,
                    state=now,
                    emergency_run=requester.emergency_run,
                )
                if held.taken_over:
                    result.reconciled.insert(0, held.taken_over)
                return result
            if before is not None and now is not None:
                _check_not_replaced_meanwhile(ctx, now, before)
            if kind == "rotate":
                # ``now`` was read under the lock a moment ago, and nothing changed it since: the
                # plan and the handover watch start from it instead of reading the store again.
                ctx.handover.arm(now)
                return run_scheduled(ctx, runner, approve=approve, state=now)
            return run_reconcile(ctx, runner)
    except RotationInProgressError as exc:
        result = _unstarted(ctx, runner, mode, "in_progress", str(exc))
    except (ConnectorError, StepFailed) as exc:
        result = _unstarted(ctx, runner, mode, "failed", str(exc))
    except Exception as exc:
        if kind != "emergency" or isinstance(exc, BadInputError | ConfigError):
            raise
        # Whatever went wrong, an emergency that did not contain pages (``notified_run``) instead of
        # only leaving a traceback.
        result = _unstarted(ctx, runner, mode, "failed", f"unexpected error: {one_line(exc)}")
    finally:
        if requester is not None:
            requester.withdraw()
        ctx.close()
    # A result nobody notified yet (a refused or failed start) is notified by ``notified_run``: an
    # emergency's with kind emergency, like one that could not contain.
    return result


TAKE_OVER_AFTER_S = 5.0
"""How long an emergency waits for a Prefect slot whose holder does not hand over (dead on another
host, its lease not expired yet) before it goes ahead without it."""


def _requester(ctx: EntryContext) -> HandoverRequester:
    name = requester_name(ctx.flow_run_id, ctx.run_label)
    return HandoverRequester(ctx.store, ctx.location, name, flow_run_id=ctx.flow_run_id)


def _state_or_none(ctx: EntryContext) -> StoreDescription | None:
    """What the store says about the entry, or None when it cannot say (the plan step reports it)."""
    try:
        return entry_state(ctx)
    except StepFailed:
        return None


def _check_not_replaced_meanwhile(ctx: EntryContext, desc: StoreDescription, before: StoreDescription) -> None:
    """Another run of this entry that held the lock while this one waited may have replaced the key
    (``before``: the store's answer before the wait; ``desc``: once the lock is held): going on
    would rotate the pair it just put in place (an emergency would revoke it at once, under
    consumers that only just switched to it). Such a run is the one in progress; this one stops.

    Decided by the store's own facts, the current key and the last finished rotation's id, never
    by comparing the ``rotated_at`` another host wrote with this host's clock: a worker whose clock
    runs ahead (or a time edited into the metadata) must not stop an emergency. A rollback in
    between leaves both as they were (Vault writes the old pair as a new version, so the version
    number would not do)."""
    if desc.current_public_key != before.current_public_key or desc.last_rotation_id != before.last_rotation_id:
        raise RotationInProgressError(
            f"rotation already in progress for '{ctx.entry.name}': another run replaced its key "
            f"(now {desc.current_public_key}) while this one waited for the lock; nothing was changed "
            "(run again if still needed)"
        )


def _unstarted(ctx: EntryContext, runner: StepRunner, mode: Mode, status: Status, error: str) -> RotationResult:
    """The result of a run that stopped before its checklist changed anything."""
    return RotationResult(
        status=status,
        project=ctx.entry.name,
        mode=mode,
        store=ctx.store_name,
        store_location=ctx.store_label,
        prefect_flow_run_id=ctx.flow_run_id,
        orchestrator=_orchestrator(runner),
        error=error,
    )


def _orchestrator(runner: StepRunner) -> Literal["prefect", "none"]:
    return "prefect" if runner.orchestrator == "prefect" else "none"
