"""An emergency contained in-process and recorded to the Prefect server over its REST API.

``import prefect`` costs ~2 s; containment must neither wait for it nor depend on it. With a
Prefect server configured (``PREFECT_API_URL``) and answering, the command line therefore runs
the emergency checklist directly in its own process, under the same per-entry Prefect lock (over
REST, ``flows.prefect.rest``), and records it as a flow run of ``langfuse-key-emergency``: created
Running before anything changes (so the audit log names it), named and tagged like a run of the
deployment (``emergency-<entry>-<YYYYMMDD-HHMM>``, ``project:``, ``mode:emergency``, ``store:``),
finished Completed or Failed with the same state message, with the step-table artifact. If the
server stops answering, containment goes on and only the record is missing.
"""

from __future__ import annotations

import contextlib

import httpx

from connectors.errors import PrefectApiError
from connectors.prefect_api import PrefectApi
from flows.config.model import RotationConfig
from flows.models import RotationResult
from flows.prefect.artifact import artifact_description, artifact_key, state_of, summary_markdown
from flows.rotation.entry_run import execute
from flows.rotation.run_names import run_name, run_tags
from flows.rotation.runners import DirectRunner

EMERGENCY_FLOW = "langfuse-key-emergency"


class _RecordedRunner(DirectRunner):
    """Steps run directly; the run is Prefect's (recorded)."""

    orchestrator = "prefect"


def emergency_recorded(
    api: PrefectApi, config: RotationConfig, project: str, config_path: str, public_key: str | None
) -> RotationResult:
    entry = config.entry(project)
    name = run_name("emergency", project)
    tags = run_tags(project, mode="emergency", store=entry.store)
    run_id: str | None = None
    with contextlib.suppress(httpx.HTTPError, PrefectApiError, KeyError, ValueError):
        flow_id = api.flow_id(EMERGENCY_FLOW)
        run_id = api.create_flow_run(
            flow_id,
            name=name,
            tags=tags,
            parameters={"project": project, "public_key": public_key, "config_path": config_path},
            state={"type": "RUNNING", "name": "Running"},
        )
    result: RotationResult | None = None
    try:
        try:
            result = execute(
                "emergency",
                project,
                config_path,
                _RecordedRunner() if run_id else DirectRunner(),
                flow_run_id=run_id,
                run_label=name,
                compromised_public_key=public_key,
                lock_with_prefect=True,
                config=config,
            )
        except (httpx.HTTPError, PrefectApiError):
            # The server stopped answering before the Prefect lock was taken (nothing changed yet):
            # contain under the host lock alone, as without a server.
            result = execute(
                "emergency",
                project,
                config_path,
                DirectRunner(),
                flow_run_id=run_id,
                run_label=name,
                compromised_public_key=public_key,
                lock_with_prefect=False,
                config=config,
            )
        return result
    finally:
        if run_id is not None:
            _finish(api, run_id, result)


def _finish(api: PrefectApi, run_id: str, result: RotationResult | None) -> None:
    with contextlib.suppress(httpx.HTTPError, PrefectApiError):
        if result is None:  # bad input or an unexpected error: the command reports it
            api.set_flow_run_state(
                run_id, {"type": "FAILED", "name": "Failed", "message": "failed: see the command's output"}
            )
            return
        api.create_artifact(
            run_id,
            key=artifact_key(result),
            markdown=summary_markdown(result),
            description=artifact_description(result),
        )
        api.set_flow_run_state(run_id, state_of(result).model_dump(exclude_none=True))
