"""``--dry-run``: check everything the rotation will touch, print the plan, change nothing."""

from __future__ import annotations

import time
from collections.abc import Callable

from connectors.errors import ConnectorError
from connectors.langfuse import LangfuseProjectClient
from flows.models import RotationResult, StepRecord
from flows.redact import register_secret
from flows.rotation.context import EntryContext


def dry_run(ctx: EntryContext) -> RotationResult:
    entry = ctx.entry
    started = time.monotonic()
    result = RotationResult(
        status="planned", project=entry.name, store=ctx.store_name, store_location=ctx.store_label, orchestrator="none"
    )
    facts: dict[str, str] = {}

    def check(name: str, fn: Callable[[], str]) -> None:
        began = time.monotonic()
        try:
            detail = fn()
            outcome = "done"
        except (ConnectorError, CheckFailed) as exc:
            detail, outcome = str(exc), "failed"
        result.steps.append(
            StepRecord(step=name, outcome=outcome, duration_s=round(time.monotonic() - began, 3), detail=detail)
        )

    def org_key_and_project() -> str:
        projects = {p.id: p.name for p in ctx.admin.list_projects()}
        if entry.project_id not in projects:
            raise CheckFailed(f"project {entry.project_id} is not in the organization of the org key")
        return f"org key works; project {entry.project_id} ({projects[entry.project_id]})"

    def store_state() -> str:
        desc = ctx.store.describe(ctx.location)
        if not desc.exists:
            raise CheckFailed(f"no secret at {ctx.store_label}")
        facts["current"] = desc.current_public_key or ""
        result.old_public_key = desc.current_public_key
        result.store_version = desc.current_version
        pending = f"; unfinished rotation {desc.pending.rotation_id} will be resumed" if desc.pending else ""
        return f"{ctx.store_label} version {desc.current_version} holds {desc.current_public_key}{pending}"

    def key_in_langfuse() -> str:
        keys = ctx.admin.list_api_keys(entry.project_id)
        current = facts.get("current")
        if not any(k.public_key == current for k in keys):
            raise CheckFailed(f"the stored key {current} is not a key of project {entry.project_id}")
        return f"{len(keys)} key(s) in the project; the stored key is one of them; others are left alone"

    def stored_pair_works() -> str:
        stored = ctx.store.read_current(ctx.location)
        register_secret(stored.secret_key)
        with LangfuseProjectClient(ctx.host, stored.key_pair(), timeout_s=ctx.config.langfuse.timeout_s) as client:
            info = client.auth_check()
        if info.id != entry.project_id:
            raise CheckFailed(f"the stored pair authenticates to project {info.id}, expected {entry.project_id}")
        return f"the stored pair authenticates to {info.id}"

    def consumers() -> str:
        if not ctx.all_consumers:
            return f"no consumers listed: will wait a {entry.grace_period_s:g}s grace period"
        if not ctx.consumers:
            return "no health endpoints; read from their traces: " + ", ".join(w.name for w in ctx.trace_watches)
        seen = {c.name: ctx.consumer_client.observe(c) for c in ctx.consumers}
        result.consumers = {name: obs.public_key for name, obs in seen.items()}
        broken = [f"{n} ({o.error})" for n, o in seen.items() if o.error]
        if broken:
            raise CheckFailed("consumer health unreadable: " + ", ".join(broken))
        return ", ".join(f"{n} on {o.public_key}" for n, o in seen.items())

    check("org key and project", org_key_and_project)
    check("store", store_state)
    if "current" in facts:
        check("key in Langfuse", key_in_langfuse)
        check("stored pair", stored_pair_works)
    check("consumers", consumers)
    result.steps.append(StepRecord(step="plan", outcome="done", duration_s=0.0, detail=plan_text(ctx)))
    failed = [s for s in result.steps if s.outcome == "failed"]
    # "Cannot proceed" is a finding for a person, not a failed-and-rolled-back run: exit 4 (README).
    result.status = "needs_attention" if failed else "planned"
    result.error = "; ".join(f"{s.step}: {s.detail}" for s in failed) or None
    result.duration_s = round(time.monotonic() - started, 3)
    return result


class CheckFailed(Exception):
    pass


def plan_text(ctx: EntryContext) -> str:
    entry = ctx.entry
    waits = (
        f"wait up to {entry.wait_timeout_s:g}s for {', '.join(c.name for c in ctx.all_consumers)}"
        if ctx.all_consumers
        else f"wait {entry.grace_period_s:g}s"
    )
    approval = "; pause for approval before promoting" if entry.approval == "required" else ""
    return (
        f"create a new pair in project {entry.project_id} (written ahead to {ctx.store_label}){approval}; "
        f"promote it; fire restart hooks and {waits}; verify with a canary trace; "
        "revoke the old pair and prove it is rejected; notify"
    )
