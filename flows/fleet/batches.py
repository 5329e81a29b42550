"""Spreading a fleet over workers: batches of entries as separate deployment runs on the same pool.

With ``fleet.batch_size`` set and a Prefect server configured, the fleet run starts one run of
``fleet.batch_deployment`` per batch (``run_deployment(..., timeout=0)``: Prefect schedules them on
whichever workers poll the pool; no home-made queue), waits for them, and reads each batch's
``langfuse-fleet-summary`` artifact back into the fleet result. Batches pace through the shared
Prefect global concurrency limits (``flows.fleet.pacing``), so all workers stay within one budget; the
fleet run sends the one summary notification (batches send none).

The batches spread because of how the pool is served (docs/fleet.md "Spread over workers"): the batch
deployment has its own work queue, polled by workers started with ``--limit 1``, so a worker that
holds a batch leaves the next one to another worker. The fleet run itself runs on the ``default``
queue, never in a batch slot, so it cannot deadlock the workers it waits for. Before it hands out
anything it checks that some worker polls that queue: otherwise it would wait for ever.
"""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

from flows.config.model import RotationConfig
from flows.config.templates import expand, organization_projects
from flows.errors import RotateError
from flows.fleet.run import FleetResult, counts_of, fleet_status, refused_results, send_summary
from flows.fleet.summary import SUMMARY_KEY, summary_rows
from flows.models import OK_STATUSES, RotationResult

POLL_S = 2.0


def _batches_of(names: list[str], size: int) -> list[list[str]]:
    return [names[i : i + size] for i in range(0, len(names), size)]


def run_in_batches(
    config: RotationConfig,
    *,
    config_path: str | None,
    concurrency: int | None,
    fleet_run_id: str,
) -> FleetResult:
    from prefect.deployments import run_deployment

    from flows.audit import AuditLog

    started = time.monotonic()
    _check_batch_queue_is_served(config.fleet.batch_deployment)
    refused: list[RotationResult] = []
    if config.project_template is not None:
        config, generated = expand(config, organization_projects(config))
        refused = refused_results(generated, "prefect")
    size = config.fleet.batch_size
    assert size is not None
    runs: list[Any] = [
        run_deployment(
            config.fleet.batch_deployment,
            parameters={"config_path": config_path, "entries": batch, "concurrency": concurrency, "summary": False},
            timeout=0,
            as_subflow=True,
            tags=[f"fleet:{fleet_run_id}"],
        )
        for batch in _batches_of([e.name for e in config.projects], size)
    ]
    batches = {
        str(run.id): batch
        for run, batch in zip(runs, _batches_of([e.name for e in config.projects], size), strict=True)
    }
    finished = _wait(list(batches))
    entries: list[RotationResult] = []
    for run_id, batch in batches.items():
        entries += _batch_entries(run_id, batch, finished[run_id])
    entries += refused
    result = FleetResult(
        status=fleet_status(entries),
        total=len(entries),
        counts=counts_of(entries),
        entries=entries,
        duration_s=round(time.monotonic() - started, 3),
        prefect_flow_run_id=fleet_run_id,
    )
    failed = sorted(e.project for e in entries if e.status not in OK_STATUSES)
    AuditLog(config.audit.path, run_id=fleet_run_id).final(
        "rotate-all", None, "failed" if failed else "rotated", entries=len(entries), failed_entries=failed or None
    )
    send_summary(config, result)
    return result


def _check_batch_queue_is_served(deployment_name: str) -> None:
    """Refuse (one line, before any batch exists) a batch deployment whose work queue no worker polls.

    Prefect marks a work queue ``READY`` while workers poll it and ``NOT_READY`` once none has for
    60 s (its foreman service, ``work_queue_last_polled_timeout_seconds``); a paused queue is
    ``PAUSED``. Batches on a queue that is not ``READY`` would stay Scheduled, and the fleet run would
    wait for them for ever.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import WorkQueueStatus
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(deployment_name)
        except ObjectNotFound:
            raise RotateError(
                f"fleet.batch_deployment {deployment_name} is not deployed on the Prefect server: "
                "deploy deployments/prefect.yaml, or unset fleet.batch_size"
            ) from None
        queue_name, pool = deployment.work_queue_name, deployment.work_pool_name
        try:
            queue = client.read_work_queue_by_name(queue_name, work_pool_name=pool) if queue_name else None
        except ObjectNotFound:
            queue = None
    if queue is None or queue.status != WorkQueueStatus.READY:
        state = "no such queue" if queue is None or queue.status is None else queue.status.value
        raise RotateError(
            f"no worker polls work queue {queue_name} of pool {pool} ({state}), which runs {deployment_name}: "
            f"start one with 'prefect worker start --pool {pool} --work-queue {queue_name} --limit 1' "
            '(docs/fleet.md "Spread over workers"), or unset fleet.batch_size; no batch was started'
        )


def _wait(run_ids: list[str]) -> dict[str, Any]:
    from prefect.client.orchestration import get_client

    done: dict[str, Any] = {}
    with get_client(sync_client=True) as client:
        while len(done) < len(run_ids):
            for run_id in run_ids:
                if run_id in done:
                    continue
                run = client.read_flow_run(UUID(run_id))
                if run.state is not None and run.state.is_final():
                    done[run_id] = run
            if len(done) < len(run_ids):
                time.sleep(POLL_S)
    return done


def _batch_entries(run_id: str, batch: list[str], run: Any) -> list[RotationResult]:
    """The batch's entries as its summary artifact recorded them; entries it never reported fail."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(run_id)]), key=ArtifactFilterKey(any_=[SUMMARY_KEY])
            )
        )
    seen = {row.entry: row for row in (summary_rows(artifacts[0].data) if artifacts else [])}
    results = []
    for name in batch:
        row = seen.get(name)
        if row is None:
            state = run.state.name if run.state is not None else "unknown"
            results.append(
                RotationResult(
                    status="failed",
                    project=name,
                    prefect_flow_run_id=run_id,
                    error=f"batch run {run.name} ended {state} without reporting this entry",
                )
            )
            continue
        results.append(row.result())
    return results
