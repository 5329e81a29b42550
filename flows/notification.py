"""The apprise notification of a run's outcome: public facts only, scrubbed once more."""

from __future__ import annotations

from connectors.errors import ConnectorError
from connectors.notify import Notification
from flows.context import EntryContext
from flows.events import emit_rotation_event
from flows.models import RotationResult
from flows.redact import scrub
from flows.tracking import one_line

_VERBS = {
    "rotated": "rotated",
    "contained": "contained",
    "needs_attention": "needs attention",
    "rolled_back": "rolled back",
    "failed": "FAILED",
}


def notification_for(result: RotationResult) -> Notification:
    emergency = result.mode == "emergency"
    ok = result.status in {"rotated", "contained"}
    title = (
        f"{'EMERGENCY ' if emergency else ''}Langfuse key {_VERBS.get(result.status, result.status)}: {result.project}"
    )
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


def notify(ctx: EntryContext, result: RotationResult) -> None:
    """Send the run's notification; a delivery problem is audited, never fatal."""
    emit_rotation_event(result, ctx.entry.project_id)  # the run's Prefect event (best effort, never raises)
    try:
        outcome = ctx.notifier.send(notification_for(result))
    except (ConnectorError, ValueError) as exc:  # ValueError: an invalid notify URL (loaded lazily)
        ctx.audit.record("notify", f"entry:{ctx.entry.name}", "failed", error=one_line(exc))
        return
    ctx.audit.record("notify", f"entry:{ctx.entry.name}", outcome.status, delivered=outcome.delivered)
