"""Who started a Prefect flow run, for the audit log: a person through the command line (the run is
not a deployment run), or a deployment, possibly run by an automation on an event.

``flow_run_audit`` opens the run for ``flows.audit`` inside a flow and writes the run's final
audit line when the flow stops before ``execute`` could (bad configuration, unknown entry).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from flows.audit import RunContext, audit_failure, run_context
from flows.config.model import audit_path_for


def prefect_initiator(event_id: str | None = None, event_source: str | None = None) -> dict[str, Any] | None:
    """The deployment (and automation, event id and source) that started this flow run; None for a
    run that is not a deployment run (the command line's in-process flows: the caller's initiator)."""
    from prefect.runtime import deployment as runtime_deployment
    from prefect.runtime import flow_run as runtime_flow_run

    deployment_id = runtime_deployment.id
    if not deployment_id:
        return None
    initiator: dict[str, Any] = {
        "type": "prefect-deployment",
        "deployment": f"{runtime_flow_run.flow_name}/{runtime_deployment.name}",
        "deployment_id": str(deployment_id),
    }
    created_by = _created_by(str(runtime_flow_run.id))
    if created_by is not None and created_by.type == "AUTOMATION":
        initiator["type"] = "prefect-automation"
        initiator["automation"] = created_by.display_value
        initiator["automation_id"] = str(created_by.id) if created_by.id else None
    elif created_by is not None:
        initiator["created_by"] = f"{created_by.type}:{created_by.display_value}"
    if event_id:
        initiator["event_id"] = event_id
    if event_source:
        initiator["event_source"] = event_source
    initiator["user"] = (
        f"automation:{initiator['automation']}"
        if initiator.get("automation")
        else f"deployment:{initiator['deployment']}"
    )
    return initiator


def _created_by(flow_run_id: str) -> Any:
    from uuid import UUID

    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            return client.read_flow_run(UUID(flow_run_id)).created_by
    except Exception:  # the audit line must not fail the run; the deployment is still named
        return None


@contextlib.contextmanager
def flow_run_audit(
    command: str,
    project: str | None,
    config_path: str | None,
    flow_run_id: str,
    *,
    event_id: str | None = None,
    event_source: str | None = None,
) -> Iterator[RunContext]:
    initiator = prefect_initiator(event_id, event_source)
    user = str(initiator["user"]) if initiator else None
    with run_context(command, run_id=flow_run_id, initiator=initiator, user=user) as run:
        try:
            yield run
        except BaseException as exc:
            if not run.final_written:
                audit_failure(command, project, exc, path=audit_path_for(config_path))
            raise
