"""The plan: what a run will do, decided before anything changes, and the read-only checks the
checklists make before and between the steps (is an emergency's rotation staged? is the staged
rotation past revocation? is a named compromised key really this entry's?).

Nothing here changes anything, so these are not steps of their own (no task, no contract): the
checklists call them in-process, and their failures report as the "plan" step.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel

from connectors.errors import ConnectorError, StoreError
from connectors.store import RotationRecord, StoreDescription, StoreVersion
from flows.errors import BadInputError, StepFailed
from flows.models import Mode, RotationPlan
from flows.redact import scrub
from flows.rotation.context import EntryContext
from flows.rotation.steps import connector_failure


def plan_rotation(ctx: EntryContext, mode: Mode, state: StoreDescription | None = None) -> RotationPlan:
    """Decide what this run does: resume the staged rotation if there is one, else start a new one.

    ``state``: the entry's state as the run read it once it held the lock, with nothing changed
    since (saves reading it again); None reads it now."""
    try:
        desc = state if state is not None else ctx.store.describe(ctx.location)
    except StoreError as exc:
        raise connector_failure("plan", exc) from None
    if not desc.exists:
        raise StepFailed("plan", f"no secret at {ctx.store_label}: store the entry's current key there first")
    common: dict[str, Any] = {
        "entry": ctx.entry.name,
        "project_id": ctx.entry.project_id,
        "mode": mode,
        "store_name": ctx.store_name,
        "store_location": ctx.store_label,
        "consumers": [c.name for c in ctx.all_consumers],
    }
    pending = desc.pending
    if pending is not None:
        return RotationPlan(
            rotation_id=pending.rotation_id,
            old_public_key=pending.old_public_key,
            old_version=pending.old_version,
            new_public_key=pending.new_public_key,
            resumed=True,
            resumed_mode=pending.mode,
            note="resuming a rotation a previous run started",
            **common,
        )
    return RotationPlan(
        rotation_id=str(uuid.uuid4()),
        old_public_key=desc.current_public_key,
        old_version=desc.current_version,
        **common,
    )


def entry_state(ctx: EntryContext) -> StoreDescription:
    """What the store says about the entry now: its current public key and version, the staged
    rotation if one is in flight, an emergency's handover request. Public facts only; changes nothing."""
    try:
        return ctx.store.describe(ctx.location)
    except ConnectorError as exc:
        raise connector_failure("plan", exc) from None


def staged_mode(ctx: EntryContext, state: StoreDescription | None = None) -> Mode | None:
    """The staged rotation's mode ("emergency" also for a scheduled one an emergency took over),
    or None when nothing is staged or the store cannot say (the plan step then reports it).
    ``state``: as for ``plan_rotation``.

    Only the staged record counts (written by the rotator alone, ``SecretStore.take_over``), never
    a handover request in the store's metadata, which a weaker credential may be able to write: a
    forged request must not make a scheduled rotation revoke its old key first."""
    try:
        desc = state if state is not None else ctx.store.describe(ctx.location)
    except ConnectorError:
        return None
    return desc.pending.mode if desc.pending is not None else None


class ForwardOnly(BaseModel):
    """A promoted rotation whose old key is already deleted from Langfuse: past the point of no
    return, it can only go forward (rolling it back would make a dead pair current)."""

    record: RotationRecord
    store_version: StoreVersion | None

    def describe(self) -> str:
        return (
            f"old key {self.record.old_public_key} is already deleted and {self.record.new_public_key} is current: "
            "the rotation can only go forward; waiting for consumers and verifying before finishing it"
        )

    def facts(self) -> dict[str, Any]:
        return {"new_public_key": self.record.new_public_key, "store_version": self.store_version}


def past_revocation(ctx: EntryContext, rotation_id: str) -> ForwardOnly | None:
    """Already done? The staged rotation ``rotation_id`` is promoted and its old key is gone from
    Langfuse (deleted by the run that was killed, or by someone else): return it, to be carried
    forward. None: it is not staged, not promoted, or its old key is still alive."""
    desc = entry_state(ctx)
    pending = desc.pending
    if pending is None or pending.rotation_id != rotation_id or not desc.pending_promoted:
        return None
    try:
        alive = pending.old_public_key is not None and (
            ctx.admin.find_api_key(ctx.entry.project_id, pending.old_public_key) is not None
        )
    except ConnectorError as exc:
        raise connector_failure("plan", exc) from None
    return None if alive else ForwardOnly(record=pending, store_version=desc.current_version)


def check_compromised_key(ctx: EntryContext, target: str, state: StoreDescription | None = None) -> None:
    """A compromised key named on the command line that is not one of this entry's own keys must
    be a key of the entry's project that no other configured entry holds as its current or staged
    key, whatever store that entry lives in (two store names may even point at the same server):
    deleting it would cut that entry's services off. That entry must be contained by its own name.
    Raises ``BadInputError`` (nothing changed) otherwise; changes nothing. ``state``: as for
    ``plan_rotation``."""
    try:
        desc = state if state is not None else entry_state(ctx)
    except StepFailed:
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
            why = scrub(" ".join((str(exc) or type(exc).__name__).split()))
            raise BadInputError(
                f"{target} may be a key of entry '{other.name}', whose store '{other.store}' cannot be read "
                f"({why}); nothing was changed: check that entry, or run emergency --project {other.name}"
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
