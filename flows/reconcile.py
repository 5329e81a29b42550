"""Reconcile as a Prefect flow (daily): clean up what crashed runs left, for every entry."""

from __future__ import annotations

from prefect import flow

from flows.config import load_config
from flows.execute import execute
from flows.hooks import notify_unhandled_failure
from flows.orchestration import current_flow_run, publish_summary, reconcile_run_name
from flows.runner import PrefectRunner
from flows.trust import refuse_job_overrides


@flow(
    name="langfuse-key-reconcile",
    flow_run_name=reconcile_run_name,
    persist_result=False,
    log_prints=False,
    on_failure=[notify_unhandled_failure],
    on_crashed=[notify_unhandled_failure],
)
def reconcile(config_path: str | None = None, project: str | None = None) -> dict[str, str]:
    refuse_job_overrides()
    flow_run_id, label = current_flow_run()
    config = load_config(config_path)
    names = [project] if project else [e.name for e in config.projects]
    statuses: dict[str, str] = {}
    for name in names:
        result = execute("reconcile", name, config_path, PrefectRunner(), flow_run_id=flow_run_id, run_label=label)
        publish_summary(result)
        statuses[name] = result.status
    return statuses
