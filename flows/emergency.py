"""Emergency containment as a Prefect flow. The checklist is ``flows.procedure.run_emergency``:

    plan + reconcile → create (write ahead) → promote → REVOKE the compromised key now
    → prove it is rejected → restart hooks + wait (report who is still on the old key)
    → verify → notify with failure priority and the ``emergency`` tag

The same procedure runs without Prefect (``langfuse-rotate emergency`` when no server answers),
so containment never depends on the orchestrator being up.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.config import load_config
from flows.execute import execute
from flows.hooks import notify_unhandled_failure
from flows.orchestration import (
    current_flow_run,
    emergency_run_name,
    final_state,
    publish_summary,
    tag_flow_run,
)
from flows.runner import PrefectRunner
from flows.trust import refuse_job_overrides


@flow(
    name="langfuse-key-emergency",
    flow_run_name=emergency_run_name,
    persist_result=False,
    log_prints=False,
    on_failure=[notify_unhandled_failure],
    on_crashed=[notify_unhandled_failure],
)
def emergency(project: str, config_path: str | None = None, public_key: str | None = None) -> Any:
    """Contain a compromised key of one entry: the key is revoked without waiting for consumers.

    ``public_key`` "" means the key in the store, as None does (the automation in
    ``flows.automation`` renders a missing ``payload.public_key`` as "")."""
    refuse_job_overrides()
    flow_run_id, label = current_flow_run()
    config = load_config(config_path)
    entry = config.entry(project)
    tag_flow_run(flow_run_id, project=project, mode="emergency", store=entry.store)
    result = execute(
        "emergency",
        project,
        config_path,
        PrefectRunner(),
        flow_run_id=flow_run_id,
        run_label=label,
        compromised_public_key=public_key or None,
    )
    publish_summary(result)
    return final_state(result)
