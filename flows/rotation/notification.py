"""The apprise notification of a run's outcome: public facts only, scrubbed once more.

Every failed run notifies, once: the checklists notify the outcomes they reach themselves
(``notify``); ``notified_run`` (around ``flows.rotation.entry_run.execute``) notifies a failed or refused
result nobody notified yet (a setup failure, a run refused because another holds the key).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TypeVar

from connectors.errors import ConnectorError
from connectors.notify import Notification, NotificationKind, NotifyTarget
from flows.audit import current_run, resource_id
from flows.config.model import RotationConfig, load_config
from flows.errors import ConfigError
from flows.models import DONE_STATUSES, RotationResult
from flows.redact import scrub
from flows.rotation.context import EntryContext
from flows.rotation.events import emit_rotation_event
from flows.rotation.step_table import one_line
from flows.shown import shown_key, shown_version, single_line

NOTIFY_URLS_ENV_VAR = "LANGFUSE_ROTATE_NOTIFY_URLS"
"""Whitespace-separated apprise URLs for failures that happen before any configuration could be
read (e.g. the config file is missing on the worker)."""

_VERBS = {
    "rotated": "rotated",
    "contained": "contained",
    "needs_attention": "needs attention",
    "rolled_back": "rolled back",
    "failed": "FAILED",
    "in_progress": "refused (another run holds the key)",
}
_OK = DONE_STATUSES


def flow_run_ui_url(flow_run_id: str | None) -> str | None:
    """The run's page in the Prefect UI, when the UI's address is known (``PREFECT_UI_URL``, or
    derived by Prefect from ``PREFECT_API_URL``). Prefect is only asked when already loaded."""
    if not flow_run_id or "prefect" not in sys.modules:
        return None
    try:
        from prefect.settings import get_current_settings

        ui = get_current_settings().ui_url
    except Exception:
        return None
    return f"{str(ui).rstrip('/')}/runs/flow-run/{flow_run_id}" if ui else None


def notification_for(result: RotationResult) -> Notification:
    emergency = result.mode == "emergency"
    ok = result.status in _OK
    title = (
        f"{'EMERGENCY ' if emergency else ''}Langfuse key {_VERBS.get(result.status, result.status)}: {result.project}"
    )
    # Keys and versions come from the store, Langfuse and consumers: shown only as checked
    # (flows.shown), every value on its own line.
    lines = [
        f"project: {result.project} ({result.mode})",
        f"resource: {resource_id(result.project)}",
        f"status: {result.status}",
        f"old public key: {shown_key(result.old_public_key)}",
        f"new public key: {shown_key(result.new_public_key)}",
        f"store: {result.store} {single_line(result.store_location)} version {shown_version(result.store_version)}",
        f"verified: {result.verified}; old key rejected: {result.old_key_rejected}",
    ]
    if result.consumers:
        lines.append("consumers: " + ", ".join(f"{single_line(k)}={shown_key(v)}" for k, v in result.consumers.items()))
    if result.lagging_consumers:
        lines.append("STILL ON THE OLD KEY: " + ", ".join(single_line(name) for name in result.lagging_consumers))
    if result.silent_consumers:
        silent = ", ".join(
            f"{single_line(name)} (last trace {single_line(at)})" for name, at in result.silent_consumers.items()
        )
        lines.append("SILENT SINCE THE REVOKE: " + silent)
    lines.append("steps: " + "; ".join(f"{s.step} {s.outcome} {s.duration_s:.2f}s" for s in result.steps))
    lines.append(f"duration: {result.duration_s:.2f}s; rotation id {result.rotation_id}")
    if result.prefect_flow_run_id:
        lines.append(f"prefect flow run: {result.prefect_flow_run_id}")
        link = flow_run_ui_url(result.prefect_flow_run_id)
        if link:
            lines.append(f"run in the Prefect UI: {link}")
    run = current_run()
    if run is not None:
        lines.append(f"run id: {run.run_id}; started by: {run.user}")
    if result.error:
        lines.append(f"error: {single_line(result.error)}")
    kind: NotificationKind = "emergency" if emergency else ("success" if ok else "failure")
    return Notification(title=title, body=scrub("\n".join(lines)), kind=kind)


def _mark_notified() -> None:
    run = current_run()
    while run is not None:
        run.notified = True
        run = run.parent


held_for_summary: ContextVar[list[RotationResult] | None] = ContextVar("held_for_summary", default=None)
"""Set by a fleet run (``flows.fleet.run``): entries' notifications are collected for its one summary."""


def notify(ctx: EntryContext, result: RotationResult) -> None:
    """Send the run's notification; a delivery problem is audited, never fatal. Inside a fleet run
    the result is held for the fleet's one summary notification instead (its event still goes out)."""
    emit_rotation_event(result, ctx.entry.project_id)  # the run's Prefect event (best effort, never raises)
    _mark_notified()
    held = held_for_summary.get()
    if held is not None:
        held.append(result)
        ctx.audit.record("notify", f"entry:{ctx.entry.name}", "held for the fleet summary")
        return
    try:
        outcome = ctx.notifier.send(notification_for(result))
    except (ConnectorError, ValueError) as exc:  # ValueError: an invalid notify URL (loaded lazily)
        ctx.audit.record("notify", f"entry:{ctx.entry.name}", "failed", error=one_line(exc))
        return
    ctx.audit.record("notify", f"entry:{ctx.entry.name}", outcome.status, delivered=outcome.delivered)


def targets_for(config_path: str | None) -> list[NotifyTarget]:
    """Where to report: the run's config, else the worker's ``LANGFUSE_ROTATE_CONFIG``, else
    ``LANGFUSE_ROTATE_NOTIFY_URLS``."""
    for path in [config_path, None] if config_path else [None]:
        try:
            return load_config(path).notify.targets()
        except (ConfigError, ValueError):
            continue
    targets = []
    for url in os.environ.get(NOTIFY_URLS_ENV_VAR, "").split():
        try:
            targets.append(NotifyTarget.parse(url))
        except ValueError:
            continue
    return targets


def send_to(config_path: str | None, notification: Notification, *, config: RotationConfig | None = None) -> None:
    """Send outside a run's context (no entry context could be built); never raises. ``config``:
    the run's configuration, already loaded (else it is read from ``config_path``)."""
    from connectors.notify import Notifier

    targets: list[NotifyTarget] | None = None
    if config is not None:
        with contextlib.suppress(ValueError):  # an invalid URL: the fallbacks of ``targets_for``
            targets = config.notify.targets()
    if targets is None:
        targets = targets_for(config_path)
    if targets:
        _mark_notified()
        Notifier(targets).send(notification)


F = TypeVar("F", bound=Callable[..., Any])


def notified_run(fn: F) -> F:
    """For ``execute``: a result that is not a success and that nobody notified is notified here,
    so a setup failure or a refused run is heard of (exactly once)."""

    @functools.wraps(fn)
    def wrapper(kind: str, project: str, config_path: str | None, *args: Any, **kwargs: Any) -> Any:
        result = fn(kind, project, config_path, *args, **kwargs)
        run = current_run()
        if isinstance(result, RotationResult) and result.status not in _OK and not (run and run.notified):
            send_to(config_path, notification_for(result), config=kwargs.get("config"))
        return result

    return wrapper  # type: ignore[return-value]
