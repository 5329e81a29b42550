"""Reconcile as a Prefect flow (daily): clean up what crashed runs left, for every entry.

The run ends Failed when any entry could not be reconciled, so the UI and automations see it; its
message starts with ``failed:`` (each entry's outcome was already notified by its own checklist)."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.states import Failed

from flows.config.model import load_config
from flows.prefect.flow_run import current_flow_run, publish_summary, reconcile_run_name
from flows.prefect.hooks import notify_unhandled_failure
from flows.prefect.initiator import flow_run_audit
from flows.prefect.trust import trusted_config_path
from flows.rotation.entry_run import execute
from flows.rotation.runners import PrefectRunner

_DONE = {"reconciled"}


@flow(
    name="langfuse-key-reconcile",
    flow_run_name=reconcile_run_name,
    persist_result=False,
    log_prints=False,
    on_failure=[notify_unhandled_failure],
    on_crashed=[notify_unhandled_failure],
    on_cancellation=[notify_unhandled_failure],
)
def reconcile(config_path: str | None = None, project: str | None = None) -> Any:
    config_path = trusted_config_path("reconcile", project, config_path)
    flow_run_id, label = current_flow_run()
    with flow_run_audit("reconcile", project, config_path, flow_run_id):
        config = load_config(config_path)
        names = [project] if project else [e.name for e in config.projects]
        if project:
            config.entry(project)
    statuses: dict[str, str] = {}
    for name in names:
        result = execute(
            "reconcile", name, config_path, PrefectRunner(), flow_run_id=flow_run_id, run_label=label, config=config
        )
        publish_summary(result)
        statuses[name] = result.status
    failed = {name: status for name, status in statuses.items() if status not in _DONE}
    if failed:
        summary = ", ".join(f"{name} {status}" for name, status in failed.items())
        return Failed(
            message=f"failed: {len(failed)} of {len(statuses)} entries not reconciled: {summary}", data=statuses
        )
    return statuses
