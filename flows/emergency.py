"""Emergency containment as a Prefect flow. The checklist is ``flows.rotation.checklists.run_emergency``:

    plan + reconcile → create (write ahead) → promote → REVOKE the compromised key now
    → prove it is rejected → restart hooks + wait (report who is still on the old key)
    → verify → notify with failure priority and the ``emergency`` tag

The same procedure runs without Prefect (``langfuse-rotate emergency`` when no server answers),
so containment never depends on the orchestrator being up.

A run started by a ``langfuse.key.compromised`` event (``event_id`` set, by the deployment's
trigger) first passes the checks of ``flows.trigger.checks``; a refused event changes nothing, is audited
and notified as a warning, and the run ends Completed with a message starting ``refused:``.
"""

from __future__ import annotations

import contextlib
from typing import Any

from prefect import flow

from flows.audit import audit_result
from flows.config.model import RotationConfig, load_config
from flows.errors import EventRefused
from flows.models import RotationResult
from flows.prefect.artifact import refused_state
from flows.prefect.flow_run import (
    current_flow_run,
    emergency_run_name,
    final_state,
    prefect_state,
    publish_summary,
    tag_flow_run,
)
from flows.prefect.hooks import notify_unhandled_failure
from flows.prefect.initiator import flow_run_audit
from flows.prefect.trust import trusted_config_path
from flows.rotation.entry_run import execute
from flows.rotation.lock import prefect_server_configured
from flows.rotation.notification import notification_for, send_to
from flows.rotation.runners import PrefectRunner
from flows.trigger.checks import (
    check_entry,
    check_key,
    emergency_slot,
    mark_event_started,
    refused_message,
    report_refusal,
)


@flow(
    name="langfuse-key-emergency",
    flow_run_name=emergency_run_name,
    persist_result=False,
    log_prints=False,
    on_failure=[notify_unhandled_failure],
    on_crashed=[notify_unhandled_failure],
    on_cancellation=[notify_unhandled_failure],
)
def emergency(
    project: str,
    config_path: str | None = None,
    public_key: str | None = None,
    event_id: str | None = None,
    event_source: str | None = None,
) -> Any:
    """Contain a compromised key of one entry: the key is revoked without waiting for consumers.

    ``public_key`` "" means the key in the store, as None does, for a run started by hand. A run
    started by an event (``event_id``, rendered by the deployment's trigger) must name the key."""
    config_path = trusted_config_path("emergency", project, config_path)
    flow_run_id, label = current_flow_run()
    with flow_run_audit(
        "emergency", project, config_path, flow_run_id, event_id=event_id or None, event_source=event_source or None
    ):
        if event_id:
            return _event_started(project, config_path, public_key or None, flow_run_id, label, event_id, event_source)
        config = load_config(config_path)
        entry = config.entry(project)
        tag_flow_run(flow_run_id, project=project, mode="emergency", store=entry.store)
        try:
            with _one_run_per_entry(project, config):
                return _contain(config, project, config_path, public_key or None, flow_run_id, label)
        except EventRefused as busy:  # another emergency of this entry is still running: exit 3
            result = RotationResult(
                status="in_progress",
                project=project,
                mode="emergency",
                store=entry.store,
                prefect_flow_run_id=flow_run_id,
                error=str(busy),
            )
            audit_result("emergency", result, path=config.audit.path)
            send_to(config_path, notification_for(result), config=config)
            publish_summary(result)
            return final_state(result)


def _contain(
    config: RotationConfig, project: str, config_path: str | None, public_key: str | None, flow_run_id: str, label: str
) -> Any:
    result = execute(
        "emergency",
        project,
        config_path,
        PrefectRunner(),
        flow_run_id=flow_run_id,
        run_label=label,
        compromised_public_key=public_key,
        config=config,
    )
    publish_summary(result)
    return final_state(result)


def _event_started(
    project: str,
    config_path: str | None,
    public_key: str | None,
    flow_run_id: str,
    label: str,
    event_id: str,
    event_source: str | None,
) -> Any:
    mark_event_started(flow_run_id)
    try:
        config, entry = check_entry(config_path, project)
        tag_flow_run(flow_run_id, project=project, mode="emergency", store=entry.store)
        with _one_run_per_entry(project, config):
            check_key(config, entry, public_key, flow_run_id)
            return _contain(config, project, config_path, public_key, flow_run_id, label)
    except EventRefused as refused:
        return _refuse(project, config_path, public_key, event_id, event_source, refused)


@contextlib.contextmanager
def _one_run_per_entry(project: str, config: RotationConfig) -> Any:
    if not prefect_server_configured():
        yield  # the embedded server serves this process only; the entry lock covers the rest
        return
    entry = config.entry(project)
    wait_s = entry.wait_timeout_s + entry.canary_timeout_s + entry.revoke_recheck_s + 300
    with emergency_slot(project, wait_s=wait_s, lease_s=config.lock.lease_s):
        yield


def _refuse(
    project: str,
    config_path: str | None,
    public_key: str | None,
    event_id: str,
    event_source: str | None,
    refused: EventRefused,
) -> Any:
    report_refusal(project, config_path, public_key, event_id, event_source, refused)
    return prefect_state(refused_state(refused_message(refused)))
