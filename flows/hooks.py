"""Flow state hooks: a run that fails or crashes outside the checklist still notifies."""

from __future__ import annotations

import os
from typing import Any

from connectors.notify import Notification, Notifier, NotifyTarget
from flows.config import ConfigError, load_config
from flows.models import STATUS_EXIT
from flows.redact import scrub

NOTIFY_URLS_ENV_VAR = "LANGFUSE_ROTATE_NOTIFY_URLS"
"""Whitespace-separated apprise URLs for failures that happen before any configuration could be
read (e.g. the config file is missing on the worker)."""


def notify_unhandled_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """The procedure notifies every outcome it reaches itself (its state messages start with the
    status); anything else (a bad config on a worker, a crash, a cancellation) is reported here."""
    message = str(getattr(state, "message", "") or "")
    if message.split(":", 1)[0] in STATUS_EXIT:
        return
    parameters = dict(getattr(flow_run, "parameters", {}) or {})
    targets = _targets(parameters.get("config_path"))
    if not targets:
        return
    project = parameters.get("project") or "all"
    title = f"Langfuse key rotation run {getattr(flow_run, 'name', '')} {getattr(state, 'name', 'failed')}"
    body = scrub(f"project: {project}\nflow run: {getattr(flow_run, 'id', '')}\nstate: {state.name}\n{message}")
    kind = "emergency" if "emergency" in str(getattr(flow, "name", "")) else "failure"
    Notifier(targets).send(Notification(title=title, body=body, kind=kind))


def _targets(config_path: str | None) -> list[NotifyTarget]:
    """Where to report: the run's config, else the worker's ``LANGFUSE_ROTATE_CONFIG``, else
    ``LANGFUSE_ROTATE_NOTIFY_URLS``."""
    for path in [config_path, None] if config_path else [None]:
        try:
            return [NotifyTarget.parse(u) for u in load_config(path).notify.urls]
        except ConfigError:
            continue
    targets = []
    for url in os.environ.get(NOTIFY_URLS_ENV_VAR, "").split():
        try:
            targets.append(NotifyTarget.parse(url))
        except ValueError:
            continue
    return targets
