"""Flow state hooks: a run that fails, crashes or is cancelled outside the checklist still notifies.

The checklists notify every outcome they reach themselves and ``flows.rotation.notification.notified_run``
notifies results nobody did; their flow states' messages start with the status, so the hook skips
them. Anything else (a bad config on a worker, a crash, a cancellation) is reported here, once.
"""

from __future__ import annotations

from typing import Any

from connectors.notify import Notification, Notifier
from flows.audit import resource_id
from flows.models import STATUS_EXIT
from flows.prefect.trust import config_path_for_hook
from flows.redact import scrub
from flows.rotation.notification import flow_run_ui_url, targets_for
from flows.shown import ENTRY_NAME, shown_matching, single_line

HANDLED_PREFIXES = {*STATUS_EXIT, "refused"}


def notify_unhandled_failure(flow: Any, flow_run: Any, state: Any) -> None:
    message = str(getattr(state, "message", "") or "")
    if message.split(":", 1)[0] in HANDLED_PREFIXES:
        return
    parameters = dict(getattr(flow_run, "parameters", {}) or {})
    deployment_run = getattr(flow_run, "deployment_id", None) is not None
    targets = targets_for(config_path_for_hook(parameters.get("config_path"), deployment_run=deployment_run))
    if not targets:
        return
    # Run parameters are anyone's who may start a run: shown only as checked, on one line.
    project = shown_matching(ENTRY_NAME, str(parameters["project"])) if parameters.get("project") else "all"
    message = single_line(message)
    state_name = getattr(state, "name", "failed")
    title = f"Langfuse key rotation run {getattr(flow_run, 'name', '')} {state_name}"
    lines = [
        f"project: {project}",
        f"resource: {resource_id(project) if project != 'all' else 'all entries'}",
        f"flow run: {getattr(flow_run, 'id', '')}",
    ]
    link = flow_run_ui_url(str(getattr(flow_run, "id", "") or ""))
    if link:
        lines.append(f"run in the Prefect UI: {link}")
    lines += [f"state: {state_name}", message]
    body = scrub("\n".join(lines))
    # A run started by an event pages people only once the event was checked: a failure before that
    # (e.g. an event naming an unknown entry) is a warning, not an emergency.
    event_started = bool(parameters.get("event_id"))
    emergency = "emergency" in str(getattr(flow, "name", "")) and not event_started
    Notifier(targets).send(Notification(title=title, body=body, kind="emergency" if emergency else "failure"))
