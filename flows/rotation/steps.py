"""The rotation's steps, as plain functions: one job each, and each starts with "already done?".

Every step's docstring says where that check is: in its own first lines (``create``, ``revoke``),
in the one store call whose check-and-set makes it atomic (``take_over``, ``store``, ``finish``:
a separate read first would only open a race), or why the step has none (it changes nothing
that could be found done: ``wait_for_restarts``, ``verify``, ``recheck_revoked``).

Each declares its contract where it is defined (``@step``: the task name users see, retries,
timeout); ``flows.rotation.runners`` runs it as a Prefect task, or in-process when no Prefect is reachable,
by that contract. The invariants they keep together:
- A new pair is written ahead to the store's staging place *before* it exists in Langfuse, so
  every key this tool creates has its secret recoverable and is tracked by a durable record.
- Secrets live only inside a step's frame: steps read them from the store when they need them and
  return public facts only (public keys, key ids, versions, timings).
- A key the store says is current is never deleted, except the compromised key in an emergency.
"""

from __future__ import annotations

import contextlib
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel

from connectors.consumers import WaitOutcome
from connectors.errors import ConnectorError, ConsumerError, StoreError
from connectors.keypair import KeyPair
from connectors.langfuse import LangfuseProjectClient
from connectors.store import RotationRecord, StoreVersion
from flows.errors import StepFailed
from flows.models import RotationPlan
from flows.redact import register_secret, scrub
from flows.rotation.canary_timing import timing_for
from flows.rotation.context import EntryContext
from flows.rotation.contract import step
from flows.rotation.crashpoints import crash_point
from flows.rotation.progress import consumer_round
from flows.rotation.trace_evidence import TraceVerdict
from flows.rotation.trace_steps import TRACE_CLOCK_SKEW_S, trace_evidence_wait

NOTE_PREFIX = "langfuse-rotate"
_NOTE_PATTERN = re.compile(rf"^{NOTE_PREFIX} entry=(?P<entry>\S+) rotation=(?P<rotation>\S+)")


def key_note(entry: str, rotation_id: str, run_label: str) -> str:
    """The Langfuse key's note: names the entry and the run, and lets reconcile find our keys."""
    return f"{NOTE_PREFIX} entry={entry} rotation={rotation_id} run={run_label}"


def parse_note(note: str | None) -> tuple[str, str] | None:
    """(entry, rotation id) of a note this tool wrote, else None."""
    match = _NOTE_PATTERN.match(note or "")
    return (match.group("entry"), match.group("rotation")) if match else None


def connector_failure(step_name: str, exc: ConnectorError) -> StepFailed:
    """The step's failure, keeping whether the connector's failure is transient (worth a retry)."""
    return StepFailed(step_name, str(exc), retryable=exc.retryable, error_type=type(exc).__name__)


# --- plan & reconcile ---------------------------------------------------------------------------


class ReconcileOutcome(BaseModel):
    actions: list[str] = []
    kept: list[str] = []
    """Orphan keys kept because a consumer uses them or cannot be proven not to (also in ``actions``)."""
    key_ids: dict[str, str] = {}
    """Langfuse's ids of the keys this run tracks (current, old, new), by public key: ``revoke``
    deletes by id without listing the project's keys again (ids never change)."""

    def describe(self) -> str:
        return "; ".join(self.actions) or "nothing left over"

    def facts(self) -> dict[str, Any]:
        return {"reconciled": list(self.actions)}


@step("reconcile", retries=1, timeout_s=120, plus=("wait_timeout_s",))  # may move consumers back first
def reconcile(ctx: EntryContext, plan: RotationPlan) -> ReconcileOutcome:
    """Delete keys this tool created for this entry that nothing tracks any more.

    A key is ours if its note names this entry. It is kept if it is the store's current key, or
    the old or new key of the rotation in flight; anything else is a leftover of a crashed run
    (e.g. a rollback that restored the store but died before deleting the new key). A leftover is
    deleted only when every consumer is proven (by its health endpoint) not to use it: one that
    reports it, or whose health check fails, keeps it alive.

    Already done? Its first lines list what exists now: an orphan already deleted is no longer
    listed, so a rerun finds nothing left to do.
    """
    try:
        desc = ctx.store.describe(ctx.location)
        keys = ctx.admin.list_api_keys(ctx.entry.project_id)
    except ConnectorError as exc:
        raise connector_failure("reconcile", exc) from None
    keep = {desc.current_public_key, plan.old_public_key, plan.new_public_key}
    if desc.pending is not None:
        keep |= {desc.pending.old_public_key, desc.pending.new_public_key}
    key_ids = {key.public_key: key.id for key in keys if key.public_key in keep}
    actions: list[str] = []
    orphans = [
        (key, owner)
        for key in keys
        if (owner := parse_note(key.note)) is not None and owner[0] == ctx.entry.name and key.public_key not in keep
    ]
    # A rollback killed after restoring the store but before moving consumers back leaves them on a
    # key that is an orphan now: move them to the current pair before that key is deleted.
    kept: list[str] = []
    in_use, unknown = _keys_in_use(ctx, {key.public_key for key, _ in orphans})
    if in_use and desc.current_public_key is not None:
        _move_consumers_back(ctx, desc.current_public_key, ctx.entry.wait_timeout_s)
        in_use, unknown = _keys_in_use(ctx, {key.public_key for key, _ in orphans})
    for key, owner in orphans:
        if key.public_key in in_use or unknown:
            why = (
                f"{', '.join(in_use[key.public_key])} still use it"
                if key.public_key in in_use
                else "cannot prove no consumer uses it: "
                + ", ".join(f"{name} ({error})" for name, error in unknown.items())
            )
            kept.append(scrub(f"kept orphan key {key.public_key} of rotation {owner[1]}: {why}"))
            actions.append(kept[-1])
            continue
        try:
            ctx.admin.delete_api_key(ctx.entry.project_id, key.id)
        except ConnectorError as exc:
            raise connector_failure("reconcile", exc) from None
        crash_point("after_orphan_delete")
        actions.append(f"deleted orphan key {key.public_key} left by rotation {owner[1]}")
        ctx.audit.record(
            "reconcile.delete_orphan", _resource(ctx), "done", public_key=key.public_key, rotation_id=owner[1]
        )
    return ReconcileOutcome(actions=actions, kept=kept, key_ids=key_ids)


# --- takeover (emergency) ------------------------------------------------------------------------


class TakeoverOutcome(BaseModel):
    record: RotationRecord
    taken_now: bool

    def describe(self) -> str:
        who = self.record.taken_over_by or "an emergency"
        state = "took over" if self.taken_now else "already taken over:"
        return (
            f"{state} rotation {self.record.rotation_id} (staged by a scheduled run): its staged record now says "
            f"emergency, taken over by {who}, so no rerun or reconcile rolls it back"
        )


@step("take_over", retries=2, timeout_s=60)
def take_over(ctx: EntryContext, rotation_id: str, emergency_run: str) -> TakeoverOutcome:
    """An emergency carrying a scheduled rotation through writes that fact into the staged record
    first (``SecretStore.take_over``), before it changes anything else: if it dies afterwards, the
    record makes every later run (reconcile, a rerun, the fleet) carry the rotation on as an
    emergency instead of rolling it back onto the leaked key.

    Already done? The store's ``take_over`` is the check, atomic with the write: a record an
    emergency staged or took over already comes back unchanged (the first takeover is kept), and
    nothing is written."""
    try:
        record = ctx.store.take_over(ctx.location, rotation_id, emergency_run)
    except StoreError as exc:
        raise connector_failure("take_over", exc) from None
    taken_now = record.taken_over_by == emergency_run[:100]
    if taken_now:
        crash_point("after_take_over")
        ctx.audit.record(
            "store.take_over", _resource(ctx), "done", rotation_id=rotation_id, emergency_run=emergency_run
        )
    return TakeoverOutcome(record=record, taken_now=taken_now)


# --- 1. create ----------------------------------------------------------------------------------


class CreateOutcome(BaseModel):
    record: RotationRecord
    key_id: str
    display_secret_key: str
    staged_now: bool
    created_now: bool

    def describe(self) -> str:
        state = "created" if self.created_now else "already in Langfuse"
        return f"{self.record.new_public_key} ({self.display_secret_key}) {state}"

    def facts(self) -> dict[str, Any]:
        return {"new_public_key": self.record.new_public_key}


@step("create", retries=0, timeout_s=180)  # the Langfuse connector retries safely inside
def create(ctx: EntryContext, plan: RotationPlan) -> CreateOutcome:
    """Generate the pair, write it ahead to the store's staging place, then create it in Langfuse.

    Already done? A staged pair of this rotation is reused; a key already in Langfuse is not
    created again (the predefined pair makes creation idempotent).
    """
    name = "create"
    try:
        # Only a resumed plan can find its pair staged: for a new rotation the plan's under-lock read
        # found nothing staged, and ``stage`` refuses (check-and-set) a rotation staged since.
        staged = ctx.store.read_staged(ctx.location) if plan.resumed else None
        if staged is not None:
            record, stored = staged
            if record.rotation_id != plan.rotation_id:
                raise StepFailed(name, f"another rotation ({record.rotation_id}) is staged at {ctx.store_label}")
            pair = stored.key_pair()
            staged_now = False
        else:
            pair = KeyPair.generate()
            record = RotationRecord(
                rotation_id=plan.rotation_id,
                entry=ctx.entry.name,
                mode=plan.mode,
                old_public_key=plan.old_public_key,
                new_public_key=pair.public_key,
                old_version=plan.old_version,
                started_at=datetime.now(UTC),
                flow_run_id=ctx.flow_run_id,
            )
            register_secret(pair.secret_key)
            ctx.store.stage(ctx.location, record, pair, ctx.host)
            staged_now = True
            crash_point("after_stage")
        register_secret(pair.secret_key)
        ctx.audit.record("stage", _resource(ctx), "done", public_key=pair.public_key, rotation_id=plan.rotation_id)
        # A pair generated just now cannot be in Langfuse yet: only a resumed one is looked up.
        existing = None if staged_now else ctx.admin.find_api_key(ctx.entry.project_id, pair.public_key)
        if existing is not None:
            return CreateOutcome(
                record=record,
                key_id=existing.id,
                display_secret_key=existing.display_secret_key,
                staged_now=staged_now,
                created_now=False,
            )
        note = key_note(ctx.entry.name, plan.rotation_id, ctx.run_label)
        summary = ctx.admin.create_api_key(ctx.entry.project_id, pair, note)
        crash_point("after_create")
    except ConnectorError as exc:
        raise connector_failure(name, exc) from None
    ctx.audit.record("langfuse.create", _resource(ctx), "done", public_key=pair.public_key, key_id=summary.id)
    return CreateOutcome(
        record=record,
        key_id=summary.id,
        display_secret_key=summary.display_secret_key,
        staged_now=staged_now,
        created_now=True,
    )


# --- 2. store -----------------------------------------------------------------------------------


class PromoteOutcome(BaseModel):
    version: StoreVersion
    previous_version: StoreVersion | None

    def describe(self) -> str:
        return f"current version {self.version} (previous {self.previous_version})"

    def facts(self) -> dict[str, Any]:
        return {"store_version": self.version}


@step("store", retries=2, timeout_s=120)
def store(ctx: EntryContext, record: RotationRecord) -> PromoteOutcome:
    """Make the staged pair the current secret (fenced by check-and-set).

    Already done? The store's ``promote`` is the check, atomic with the write: a staged pair that
    is current already returns its version unchanged."""
    try:
        version = ctx.store.promote(ctx.location, record)
        crash_point("after_promote")
    except StoreError as exc:
        raise connector_failure("store", exc) from None
    ctx.audit.record("store.promote", _resource(ctx), "done", public_key=record.new_public_key, store_version=version)
    return PromoteOutcome(version=version, previous_version=record.old_version)


# --- 3. wait for restarts -----------------------------------------------------------------------


class ConsumerOutcome(BaseModel):
    wait: WaitOutcome
    restart_errors: dict[str, str] = {}
    grace_period_s: float | None = None
    public_key: str = ""
    timeout_s: float = 0.0
    old_public_key: str | None = None
    traces: dict[str, TraceVerdict] = {}
    """Trace evidence of the consumers with ``traces`` (``key_source`` sdk or metadata)."""
    blind: list[str] = []
    """Consumers that give no evidence before revoke (``key_source: none``, no health endpoint)."""

    def _trace_lagging(self) -> list[str]:
        return [name for name, verdict in self.traces.items() if not verdict.switched]

    def all_switched(self) -> bool:
        return self.wait.all_switched and not self._trace_lagging()

    def describe(self) -> str:
        if self.grace_period_s is not None and not (self.wait.last_seen or self.traces or self.blind):
            return f"no consumers listed; waited {self.grace_period_s:g}s grace period"
        parts: list[str] = []
        if self.wait.last_seen:
            seen = ", ".join(f"{k}={v}" for k, v in self.wait.last_seen.items())
            state = "all switched" if self.wait.all_switched else "lagging: " + ", ".join(self.wait.lagging)
            parts.append(f"{state}; {seen}")
        parts += [verdict.evidence() for verdict in self.traces.values()]
        if self.blind:
            parts.append(
                f"{', '.join(self.blind)}: no evidence before revoke (key_source none); "
                f"waited {self.grace_period_s or 0:g}s grace period"
            )
        return "; ".join(parts)

    def _trace_keys(self) -> dict[str, str | None]:
        keys: dict[str, str | None] = {}
        for name, verdict in self.traces.items():
            seen = verdict.public_key_seen
            keys[name] = self.public_key if seen == "new" else (self.old_public_key if seen == "old" else None)
        return keys

    def facts(self) -> dict[str, Any]:
        consumers = {**self._trace_keys(), **{k: v for k, v in self.wait.last_seen.items()}}
        facts: dict[str, Any] = {"consumers": consumers}
        lagging = [*self.wait.lagging, *(n for n in self._trace_lagging() if n not in self.wait.lagging)]
        if lagging:
            facts["lagging_consumers"] = lagging
        return facts

    def lagging(self) -> str | None:
        """Who did not switch, and why, as one line; None when every consumer switched."""
        if self.all_switched():
            return None
        parts = []
        for name in self.wait.lagging:
            seen = self.wait.last_seen.get(name)
            error = self.wait.errors.get(name) or self.restart_errors.get(name)
            parts.append(f"{name} ({error or f'still on {seen}'})")
        for name in self._trace_lagging():
            why = self.traces[name].why_not(old=f"the old key {self.old_public_key or ''}".rstrip())
            parts.append(f"{name} (traces: {why})")
        return f"consumers did not switch to {self.public_key} within {self.timeout_s:g}s: {', '.join(parts)}"


@step("wait_for_restarts", retries=0, timeout_s=60, plus=("wait_timeout_s", "grace_period_s"))
def wait_for_restarts(ctx: EntryContext, public_key: str, old_public_key: str | None = None) -> ConsumerOutcome:
    """Fire restart hooks, then wait until every consumer shows ``public_key``: on its health
    endpoint, and in its traces (a trace sent with ``public_key`` since the wait began, none with
    ``old_public_key`` in the last ``quiet_s``; docs/trace-evidence.md).

    Never raises: the caller decides what a lagging consumer means (roll back, or report).
    With no consumers listed, waits the configured grace period instead; so it does too when a
    consumer gives no evidence before revoke (``key_source: none`` without a health endpoint).

    No "already done?" check: it writes nothing that a rerun could find, and what it proves (every
    consumer on ``public_key``) must hold now, so a rerun restarts the consumers and waits again.
    """
    timeout_s = ctx.entry.wait_timeout_s
    if not ctx.all_consumers:
        ctx.handover.sleep(ctx.entry.grace_period_s)
        empty = WaitOutcome(all_switched=True, last_seen={}, errors={}, elapsed_s=ctx.entry.grace_period_s, lagging=[])
        return ConsumerOutcome(
            wait=empty, grace_period_s=ctx.entry.grace_period_s, public_key=public_key, timeout_s=timeout_s
        )
    began = time.monotonic()
    since = datetime.now(UTC) - timedelta(seconds=TRACE_CLOCK_SKEW_S)
    restart_errors: dict[str, str] = {}
    for consumer in ctx.all_consumers:
        try:
            ctx.consumer_client.restart(consumer)
        except ConsumerError as exc:
            restart_errors[consumer.name] = str(exc)
    crash_point("after_restarts")
    outcome = ctx.consumer_client.wait_for_public_key(
        ctx.consumers, public_key, timeout_s=timeout_s, on_round=consumer_round(public_key)
    )
    evidence = [w for w in ctx.trace_watches if w.gives_evidence_before_revoke]
    verdicts = (
        trace_evidence_wait(ctx, evidence, public_key, old_public_key, since, timeout_s - (time.monotonic() - began))
        if evidence
        else {}
    )
    blind = [w.name for w in ctx.trace_watches if not w.gives_evidence_before_revoke and not w.has_health]
    grace: float | None = None
    if blind:
        grace = ctx.entry.grace_period_s
        ctx.handover.sleep(max(grace - (time.monotonic() - began), 0.0))
    return ConsumerOutcome(
        wait=outcome,
        restart_errors=restart_errors,
        public_key=public_key,
        timeout_s=timeout_s,
        old_public_key=old_public_key,
        traces=verdicts,
        blind=blind,
        grace_period_s=grace,
    )


# --- 4. verify ----------------------------------------------------------------------------------


class VerifyOutcome(BaseModel):
    project_id: str
    canary_trace_id: str
    canary_seconds: float

    def describe(self) -> str:
        return f"project {self.project_id}; canary {self.canary_trace_id} readable after {self.canary_seconds}s"

    def facts(self) -> dict[str, Any]:
        return {"verified": True}


@step("verify", retries=1, timeout_s=60, plus=("canary_timeout_s",))
def verify(ctx: EntryContext, record: RotationRecord) -> VerifyOutcome:
    """The current stored pair is the new one, authenticates to the expected project, and a
    canary trace sent with it is readable within the configured time.

    The canary is read with the new pair when it can be there (``flows.rotation.canary_timing``: the fleet
    learns Langfuse's ingestion delay from its first canaries). Read back with that pair, rows
    naming the expected project prove the pair authenticates to it, so no separate auth check is
    made; a server whose rows name no project gets one.

    No "already done?" check: it changes nothing (a canary trace is evidence, not state), and a
    proof from an earlier run says nothing about the pair now."""
    name = "verify"
    try:
        current = ctx.store.read_current(ctx.location)
        register_secret(current.secret_key)
        if current.public_key != record.new_public_key:
            raise StepFailed(name, f"the store's current key is {current.public_key}, not the new key")
        with LangfuseProjectClient(ctx.host, current.key_pair(), timeout_s=ctx.config.langfuse.timeout_s) as client:
            timing = timing_for(ctx.host)
            trace_id = client.send_canary(
                attributes={"langfuse_rotate.entry": ctx.entry.name, "langfuse_rotate.rotation_id": record.rotation_id}
            )
            # Ages count from when Langfuse accepted the canary: on a busy host the send itself can
            # take longer than the ingestion delay varies, and a read at the learnt age would miss.
            sent_at = timing.clock()
            sighting, seconds = timing.wait_readable(
                lambda budget_s: client.read_canary(trace_id, within_s=budget_s),
                sent_at=sent_at,
                timeout_s=ctx.entry.canary_timeout_s,
                trace_id=trace_id,
                sent_with=f"project key {current.public_key} on Langfuse at {ctx.host}",
            )
            projects = sighting.project_ids or (client.auth_check().id,)
            if projects != (ctx.entry.project_id,):
                raise StepFailed(
                    name, f"the new key authenticates to project {', '.join(projects)}, expected {ctx.entry.project_id}"
                )
        crash_point("after_verify")
    except ConnectorError as exc:
        raise connector_failure(name, exc) from None
    return VerifyOutcome(project_id=projects[0], canary_trace_id=trace_id, canary_seconds=round(seconds, 3))


# --- 5. revoke ----------------------------------------------------------------------------------


class RevokeOutcome(BaseModel):
    public_key: str
    key_id: str | None
    deleted_now: bool
    rejected: bool | None
    idle_recheck_due: bool = False
    detail: str = ""

    def describe(self) -> str:
        return self.detail or ("rejected" if self.rejected else str(self.rejected))

    def facts(self) -> dict[str, Any]:
        return {"old_key_rejected": self.rejected}


@step("revoke", retries=2, timeout_s=120, plus=("revoke_recheck_s",))  # the idle re-probe waits revoke_recheck_s
def revoke(
    ctx: EntryContext,
    public_key: str,
    secret_version: StoreVersion | None,
    defer_idle_recheck: bool = False,
    key_id: str | None = None,
) -> RevokeOutcome:
    """Delete ``public_key`` from Langfuse, then prove it is rejected.

    Probes once (a successful probe refreshes a stale cache entry on Langfuse <= 4.16, so never in
    a loop). If the revoked key is still accepted (docs/rotation.md "The revocation race": the API-key cache):
    with an instance admin key, invalidate the whole cache and probe again; otherwise keep the key
    idle for ``revoke_recheck_s`` (the cache TTL plus a margin) and probe once more.

    ``defer_idle_recheck`` (emergency): return at once with ``idle_recheck_due`` set instead of
    sleeping, so the caller can first move the consumers off the key (idle means nobody uses it)
    and then call ``recheck_revoked``. Without the secret of ``public_key`` nothing can be
    probed: with an instance admin key the cache is invalidated anyway (the row is gone, so that
    makes the key rejected), otherwise ``rejected`` stays None.

    ``key_id``: Langfuse's id of ``public_key`` as this run's reconcile listed it; without it the
    project's keys are listed to find it.

    Already done? Its first lines look the key up: already deleted, nothing is deleted now (the
    proof that it is rejected is made again either way).
    """
    name = "revoke"
    project = ctx.entry.project_id
    try:
        if key_id is None:
            summary = ctx.admin.find_api_key(project, public_key)
            key_id = summary.id if summary is not None else None
        deleted_now = ctx.admin.delete_api_key(project, key_id) if key_id is not None else False
    except ConnectorError as exc:
        raise connector_failure(name, exc) from None
    crash_point("after_delete")
    ctx.audit.record("langfuse.delete_key", _resource(ctx), "done", public_key=public_key, key_id=key_id)
    pair = _stored_pair(ctx, public_key, secret_version)
    if pair is None:
        if ctx.instance_admin is None:
            return RevokeOutcome(
                public_key=public_key,
                key_id=key_id,
                deleted_now=deleted_now,
                rejected=None,
                detail="deleted; its secret is not in the store, so rejection could not be probed, and Langfuse "
                "may accept it from its API-key cache until it has been idle for the cache TTL",
            )
        try:
            ctx.instance_admin.invalidate_all_cached_keys()
        except ConnectorError as exc:
            raise connector_failure(name, exc) from None
        action = "invalidated Langfuse's API-key cache with the instance admin key"
        ctx.audit.record("langfuse.invalidate_cache", _resource(ctx), "done", public_key=public_key)
        return RevokeOutcome(
            public_key=public_key,
            key_id=key_id,
            deleted_now=deleted_now,
            rejected=True,
            detail=f"deleted; its secret is not in the store, so it was not probed; {action}",
        )
    with LangfuseProjectClient(ctx.host, pair, timeout_s=ctx.config.langfuse.timeout_s) as client:
        try:
            if not client.probe().accepted:
                return RevokeOutcome(public_key=public_key, key_id=key_id, deleted_now=deleted_now, rejected=True)
            ctx.audit.record("langfuse.revoked_key_still_accepted", _resource(ctx), "attention", public_key=public_key)
            if ctx.instance_admin is not None:
                ctx.instance_admin.invalidate_all_cached_keys()
                action = "invalidated Langfuse's API-key cache with the instance admin key"
            elif defer_idle_recheck:
                return RevokeOutcome(
                    public_key=public_key,
                    key_id=key_id,
                    deleted_now=deleted_now,
                    rejected=False,
                    idle_recheck_due=True,
                    detail="revoked key still accepted right after delete (Langfuse's API-key cache); no instance "
                    f"admin key is configured: it will be kept idle for {ctx.entry.revoke_recheck_s:g}s and "
                    "probed again once consumers have been restarted",
                )
            else:
                ctx.handover.sleep(ctx.entry.revoke_recheck_s)
                action = _idle_action(ctx)
            rejected = not client.probe().accepted
        except ConnectorError as exc:
            raise connector_failure(name, exc) from None
    return _after_cache_handling(public_key, key_id, deleted_now, rejected, action)


@step("recheck_revoked", retries=0, timeout_s=60, plus=("revoke_recheck_s",))
def recheck_revoked(ctx: EntryContext, public_key: str, secret_version: StoreVersion | None) -> RevokeOutcome:
    """The deferred half of ``revoke``: keep the deleted key idle for ``revoke_recheck_s``
    (the cache TTL plus a margin), then probe it once more.

    No "already done?" check: it deletes nothing; it proves the key rejected now, which an earlier
    probe cannot."""
    pair = _stored_pair(ctx, public_key, secret_version)
    if pair is None:
        raise StepFailed("recheck_revoked", f"the secret of {public_key} is no longer in the store")
    ctx.handover.sleep(ctx.entry.revoke_recheck_s)
    try:
        with LangfuseProjectClient(ctx.host, pair, timeout_s=ctx.config.langfuse.timeout_s) as client:
            rejected = not client.probe().accepted
    except ConnectorError as exc:
        raise connector_failure("recheck_revoked", exc) from None
    outcome = _after_cache_handling(public_key, None, False, rejected, _idle_action(ctx))
    ctx.audit.record(
        "langfuse.recheck_revoked", _resource(ctx), "done" if rejected else "attention", public_key=public_key
    )
    return outcome


def _idle_action(ctx: EntryContext) -> str:
    return (
        f"kept the key idle for {ctx.entry.revoke_recheck_s:g}s (cache TTL) "
        "before probing again; no instance admin key is configured"
    )


def _after_cache_handling(
    public_key: str, key_id: str | None, deleted_now: bool, rejected: bool, action: str
) -> RevokeOutcome:
    detail = "rejected after cache handling" if rejected else "STILL ACCEPTED: Langfuse keeps it cached"
    return RevokeOutcome(
        public_key=public_key,
        key_id=key_id,
        deleted_now=deleted_now,
        rejected=rejected,
        detail=f"revoked key was still accepted right after delete; {action}; {detail}",
    )


def _stored_pair(ctx: EntryContext, public_key: str, version: StoreVersion | None) -> KeyPair | None:
    if version is None:
        return None
    try:
        stored = ctx.store.read_version(ctx.location, version)
    except StoreError:
        return None
    if stored.public_key != public_key:
        return None
    register_secret(stored.secret_key)
    return stored.key_pair()


# --- finish & rollback --------------------------------------------------------------------------


@step("finish", retries=2, timeout_s=120)
def finish(ctx: EntryContext, record: RotationRecord) -> None:
    """Clear the staging and record the rotation's public facts on the current secret.

    Already done? The store's ``finish`` is the check: facts already recorded for this rotation are
    not written again, and a staging already cleared is left as it is."""
    try:
        ctx.store.finish(ctx.location, record)
        crash_point("after_finish")
    except StoreError as exc:
        raise connector_failure("finish", exc) from None
    ctx.audit.record("store.finish", _resource(ctx), "done", rotation_id=record.rotation_id)


class RollbackOutcome(BaseModel):
    store_restored: bool
    restored_version: StoreVersion | None = None
    new_key_deleted: bool
    errors: list[str] = []
    new_key_kept: str | None = None
    """Why the new key was kept although the store was restored: a consumer is not proven back on
    the old key (set only in that case; the run then needs a person, not a retry)."""
    old_public_key: str | None = None

    @property
    def clean(self) -> bool:
        """The old pair is current again and the new key is gone: nothing is left to do."""
        return self.store_restored and self.new_key_deleted and not self.errors

    @property
    def status(self) -> Literal["rolled_back", "needs_attention", "failed"]:
        """``needs_attention``: the store is back on the old pair, but a key some consumer may run
        on is alive, and a person decides; ``failed``: the rollback is incomplete."""
        if self.clean:
            return "rolled_back"
        return "needs_attention" if self.new_key_kept is not None else "failed"

    def describe(self) -> str:
        restored = f"old pair {self.old_public_key} current again (version {self.restored_version})"
        if self.clean:
            return f"{restored}; new key deleted"
        if self.new_key_kept is not None:
            return "; ".join([restored, *self.errors])
        return "; ".join(self.errors)


ROLLBACK_STORE_RETRY_S = 60.0
"""How long a rollback keeps retrying a store that does not answer (e.g. sealed) before it reports."""


@step("rollback", retries=1, timeout_s=180, plus=("wait_timeout_s",))  # store calls retry 60 s inside
def rollback(ctx: EntryContext, plan: RotationPlan) -> RollbackOutcome:
    """Return to the old pair: store first, then consumers, then delete the new key.

    The store is restored before the new key is deleted so a consumer that already adopted the new
    key is moved back before that key dies. The new key is never deleted while the store may still
    serve it as current, nor unless every consumer is proven (by its health endpoint) back on the
    old key once the new pair had been promoted: a consumer whose health check fails may be running
    on the new key, so the key is kept and ``new_key_kept`` says why. Store calls are retried for
    ``ROLLBACK_STORE_RETRY_S`` (a sealed Vault is often unsealed within minutes); consumers get the
    entry's ``wait_timeout_s`` (the time they got to switch) to come back; what cannot be undone is
    reported, and ``reconcile`` finishes it.

    Already done? Its first lines read the staged record: none of this rotation staged means the
    store is restored already (it is left as it is), and a new key no longer in Langfuse is not
    deleted again.
    """
    errors: list[str] = []
    record: RotationRecord | None = None
    new_public_key = plan.new_public_key
    store_restored = False
    restored_version: StoreVersion | None = None
    was_promoted = False
    deadline = time.monotonic() + ROLLBACK_STORE_RETRY_S
    while True:
        try:
            desc = ctx.store.describe(ctx.location)
            if desc.pending is not None and desc.pending.rotation_id == plan.rotation_id:
                record = desc.pending
                new_public_key = record.new_public_key
                was_promoted = desc.pending_promoted
                if was_promoted and record.old_public_key is not None:
                    refused = _refuse_restoring_a_dead_key(ctx, record)
                    if refused is not None:
                        return RollbackOutcome(store_restored=False, new_key_deleted=False, errors=[refused])
                restored_version = ctx.store.rollback(ctx.location, record)
                crash_point("after_store_rollback")
            else:
                restored_version = desc.current_version
            store_restored = desc.pending is None or record is not None
            current_public_key = ctx.store.describe(ctx.location).current_public_key
            break
        except StoreError as exc:
            if time.monotonic() >= deadline:
                errors.append(f"store not restored: {exc}")
                current_public_key = None
                break
            time.sleep(2.0)
    if store_restored:
        ctx.audit.record("store.rollback", _resource(ctx), "done", store_version=restored_version)
    not_back: dict[str, str] = {}
    if store_restored and was_promoted and ctx.all_consumers and plan.old_public_key is not None:
        not_back = _move_consumers_back(ctx, plan.old_public_key, ctx.entry.wait_timeout_s, new_public_key)
        crash_point("after_rollback_restarts")
    new_key_deleted = False
    kept: str | None = None
    if new_public_key is not None and not_back:
        kept = scrub(
            f"new key {new_public_key} kept: not every consumer is proven back on the old key "
            f"{plan.old_public_key}: {', '.join(f'{name} ({why})' for name, why in not_back.items())}; "
            "run reconcile once they report the old key"
        )
        errors.append(kept)
    elif new_public_key is not None and store_restored and current_public_key != new_public_key:
        try:
            summary = ctx.admin.find_api_key(ctx.entry.project_id, new_public_key)
            if summary is not None:
                ctx.admin.delete_api_key(ctx.entry.project_id, summary.id)
            new_key_deleted = True
            ctx.audit.record("langfuse.delete_new_key", _resource(ctx), "done", public_key=new_public_key)
        except ConnectorError as exc:
            errors.append(f"new key {new_public_key} not deleted: {exc}")
    elif new_public_key is not None:
        errors.append(f"new key {new_public_key} kept: the store may still serve it; run reconcile")
    return RollbackOutcome(
        store_restored=store_restored,
        restored_version=restored_version,
        new_key_deleted=new_key_deleted or new_public_key is None,
        errors=[scrub(e) for e in errors],
        new_key_kept=kept if store_restored else None,
        old_public_key=plan.old_public_key,
    )


def _refuse_restoring_a_dead_key(ctx: EntryContext, record: RotationRecord) -> str | None:
    """Why the promoted ``record`` must not be rolled back, or None if it may.

    Only a pair Langfuse still has may become current again; a run killed after deleting the old key
    leaves a promoted rotation whose old key is gone, and restoring it would leave no working pair.
    """
    try:
        alive = ctx.admin.find_api_key(ctx.entry.project_id, record.old_public_key or "") is not None
    except ConnectorError as exc:
        why = f"cannot be confirmed in Langfuse ({exc})"
    else:
        if alive:
            return None
        why = "is already deleted from Langfuse"
    return scrub(
        f"not rolled back: the old key {record.old_public_key} {why}; the new pair {record.new_public_key} "
        "stays current; rerun the rotation or reconcile to finish it"
    )


def _keys_in_use(ctx: EntryContext, public_keys: set[str]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Which of ``public_keys`` the consumers report now (public key to consumer names), and the
    consumers whose health endpoint says no key at all (name to what went wrong)."""
    in_use: dict[str, list[str]] = {}
    unknown: dict[str, str] = {}
    if not public_keys:
        return in_use, unknown
    for consumer in ctx.consumers:
        observed = ctx.consumer_client.observe(consumer)
        if observed.public_key is None:
            unknown[consumer.name] = observed.error or "no key reported"
        elif observed.public_key in public_keys:
            in_use.setdefault(observed.public_key, []).append(consumer.name)
    return in_use, unknown


def _move_consumers_back(
    ctx: EntryContext, old_public_key: str, wait_s: float, new_public_key: str | None = None
) -> dict[str, str]:
    """Restart every consumer and wait until each reports ``old_public_key`` (and, given the
    ``new_public_key`` it moves off, until the traces of each consumer that carries its key show
    it back: sent with the old key, none with the new one for ``quiet_s``); returns the ones not
    proven back, each with what its health endpoint or traces said last (empty: all are back)."""
    began = time.monotonic()
    since = datetime.now(UTC) - timedelta(seconds=TRACE_CLOCK_SKEW_S)
    for consumer in ctx.all_consumers:
        with contextlib.suppress(ConsumerError):  # the wait below names whoever did not come back
            ctx.consumer_client.restart(consumer)
    outcome = ctx.consumer_client.wait_for_public_key(ctx.consumers, old_public_key, timeout_s=wait_s)
    not_back = {
        name: outcome.errors.get(name) or f"reports {outcome.last_seen.get(name) or 'no key'}"
        for name in outcome.lagging
    }
    evidence = [w for w in ctx.trace_watches if w.gives_evidence_before_revoke]
    if evidence and new_public_key is not None:
        left = wait_s - (time.monotonic() - began)
        verdicts = trace_evidence_wait(ctx, evidence, old_public_key, new_public_key, since, left)
        for name, verdict in verdicts.items():
            if not verdict.switched:
                why = verdict.why_not(old=f"the new key {new_public_key}", new=f"the old key {old_public_key}")
                not_back.setdefault(name, f"traces: {why}")
    return not_back


def _resource(ctx: EntryContext) -> str:
    return f"langfuse-project:{ctx.entry.project_id}/entry:{ctx.entry.name}"
