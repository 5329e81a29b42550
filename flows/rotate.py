"""The scheduled rotation as a Prefect flow. The checklist itself is ``flows.rotation.checklists.run_scheduled``:

    plan + reconcile → 1 create (write ahead, then Langfuse) → [approval] → 2 store (promote)
    → 3 wait for restarts → 4 verify (auth + canary) → 5 revoke + prove rejected → finish → notify

Any failure before revocation rolls back. Parameters carry names only, never a secret.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.config.model import load_config
from flows.prefect.flow_run import (
    current_flow_run,
    final_state,
    pause_for_approval,
    publish_summary,
    rotate_run_name,
    tag_flow_run,
)
from flows.prefect.hooks import notify_unhandled_failure
from flows.prefect.initiator import flow_run_audit
from flows.prefect.trust import trusted_config_path
from flows.rotation.entry_run import execute
from flows.rotation.runners import PrefectRunner


@flow(
    name="langfuse-key-rotation",
    flow_run_name=rotate_run_name,
    persist_result=False,
    log_prints=False,
    on_failure=[notify_unhandled_failure],
    on_crashed=[notify_unhandled_failure],
    on_cancellation=[notify_unhandled_failure],
)
def rotate(project: str, config_path: str | None = None) -> Any:
    """Rotate one configured Langfuse key (``project`` names the entry in the config file)."""
    config_path = trusted_config_path("rotate", project, config_path)
    flow_run_id, label = current_flow_run()
    with flow_run_audit("rotate", project, config_path, flow_run_id):
        config = load_config(config_path)
        entry = config.entry(project)
        tag_flow_run(flow_run_id, project=project, mode="scheduled", store=entry.store)
        approve = pause_for_approval(entry.approval_timeout_s) if entry.approval == "required" else None
        result = execute(
            "rotate",
            project,
            config_path,
            PrefectRunner(),
            flow_run_id=flow_run_id,
            run_label=label,
            approve=approve,
            config=config,
        )
    publish_summary(result)
    return final_state(result)


@flow(
    name="langfuse-key-rotation-all",
    flow_run_name=rotate_run_name,
    persist_result=False,
    log_prints=False,
    on_failure=[notify_unhandled_failure],
    on_crashed=[notify_unhandled_failure],
    on_cancellation=[notify_unhandled_failure],
)
def rotate_all(
    config_path: str | None = None,
    entries: list[str] | None = None,
    concurrency: int | None = None,
    show_progress: bool = False,
    summary: bool = True,
) -> Any:
    """Rotate every configured entry concurrently (docs/fleet.md); ``entries`` limits the
    run to some of them (a batch: ``summary`` off, the fleet run that started it notifies). Each
    entry is recorded as its own flow run."""
    from flows.fleet.prefect_run import run_fleet_flow

    config_path = trusted_config_path("rotate-all", None, config_path)
    flow_run_id, _ = current_flow_run()
    with flow_run_audit("rotate", None, config_path, flow_run_id):
        config = load_config(config_path)  # a bad config is audited and fails here, as for one entry
    with flow_run_audit("rotate-all", None, config_path, flow_run_id):  # the fleet's final line names its initiator
        return run_fleet_flow(
            flow_run_id,
            config,
            config_path=config_path,
            entries=entries,
            concurrency=concurrency,
            show_progress=show_progress,
            summary=summary,
        )
