"""Flow state hooks: a run that fails or crashes outside the checklist still notifies."""

from __future__ import annotations

from typing import Any

from connectors.notify import Notification, Notifier, NotifyTarget
from flows.config import ConfigError, load_config
from flows.models import STATUS_EXIT
from flows.redact import scrub


def notify_unhandled_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """The procedure notifies every outcome it reaches itself (its state messages start with the
    status); anything else (a bad config on a worker, a crash, a cancellation) is reported here."""
    message = str(getattr(state, "message", "") or "")
    if message.split(":", 1)[0] in STATUS_EXIT:
        return
    parameters = dict(getattr(flow_run, "parameters", {}) or {})
    try:
        config = load_config(parameters.get("config_path"))
    except ConfigError:
        return
    project = parameters.get("project", "unknown")
    title = f"Langfuse key rotation run {getattr(flow_run, 'name', '')} {getattr(state, 'name', 'failed')}"
    body = scrub(f"project: {project}\nflow run: {getattr(flow_run, 'id', '')}\nstate: {state.name}\n{message}")
    kind = "emergency" if "emergency" in str(getattr(flow, "name", "")) else "failure"
    Notifier([NotifyTarget.parse(u) for u in config.notify.urls]).send(Notification(title=title, body=body, kind=kind))
