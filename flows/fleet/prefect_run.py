"""The fleet run under Prefect: one flow run for the fleet, one per entry, artifacts, batches.

Each entry's checklist runs directly in the fleet run's process (a flow run and eight task runs
per entry would cost the fleet more than the work itself: docs/fleet.md), and is
recorded as its own flow run when it finishes: ``rotate-<entry>-<YYYYMMDD-HHMM>``, tagged like a
single rotation plus ``fleet:<fleet run id>``, Completed or Failed with the same state message as a
single rotation, with the step-table artifact ``langfuse-rotation-<entry>``.
The fleet run itself publishes ``langfuse-fleet-progress`` (a
progress artifact updated as entries finish) and ``langfuse-fleet-summary`` (one row per entry).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from uuid import UUID

from connectors.prefect_api import RunRecords
from flows.config.model import ProjectEntry, RotationConfig
from flows.fleet.batches import run_in_batches
from flows.fleet.run import (
    ApprovalRunner,
    FleetProgress,
    FleetResult,
    ProgressSink,
    run_fleet,
    terminal_progress_sink,
)
from flows.fleet.summary import SUMMARY_KEY, summary_table
from flows.models import OK_STATUSES, RotationResult
from flows.prefect.artifact import artifact_description, artifact_key, state_of, summary_markdown
from flows.prefect.flow_run import tag_flow_run
from flows.rotation.lock import prefect_api, prefect_api_from_settings, prefect_server_configured
from flows.rotation.run_names import run_name, run_tags

ENTRY_FLOW_NAME = "langfuse-key-rotation"
PROGRESS_KEY = "langfuse-fleet-progress"


class PrefectEntryRecorder:
    """Records each entry of a fleet run as its own flow run: created Running when the entry
    starts, its artifact and final state written in the background when it ends (three API calls
    per entry: the Prefect server's throughput, not the rotations, bounds a large fleet; README
    "Fleet rotation"). ``close`` waits until every record is written.

    Talks to the server over its REST API (``connectors.prefect_api``: one pooled connection for the
    whole fleet, none of the Prefect client's per-thread set-up); Prefect's client only where there
    is no API URL (the ephemeral server)."""

    orchestrator = "prefect"
    writers = 4

    def __init__(self, fleet_run_id: str) -> None:
        self.fleet_run_id = fleet_run_id
        self._pool = ThreadPoolExecutor(max_workers=self.writers, thread_name_prefix="fleet-record")
        self._pending: list[Future[None]] = []
        self.failures = 0
        rest = prefect_api_from_settings()
        self._rest = rest
        self._api: RunRecords = rest if rest is not None else _ClientApi()
        self._flow_id = self._api.flow_id(ENTRY_FLOW_NAME)

    def started(self, entry: ProjectEntry) -> tuple[str | None, str | None]:
        """Create the entry's flow run (Running) before anything changes, so the audit log and the
        staged record name it; the fleet run stands in if the server does not answer."""
        name = run_name("rotate", entry.name)
        tags = run_tags(entry.name, mode="scheduled", store=entry.store, extra=(f"fleet:{self.fleet_run_id}",))
        try:
            run_id = self._api.create_flow_run(
                self._flow_id,
                name=name,
                tags=tags,
                parameters={"project": entry.name},
                state={"type": "RUNNING", "name": "Running"},
            )
            return run_id, name
        except Exception:  # a record that cannot be written never stops the rotation
            self.failures += 1
            return self.fleet_run_id, name

    def finished(self, entry: ProjectEntry, run_id: str | None, result: RotationResult) -> None:
        if run_id is None or run_id == self.fleet_run_id:
            return
        self._pending.append(self._pool.submit(self._record, run_id, result))

    def _record(self, run_id: str, result: RotationResult) -> None:
        try:
            self._api.create_artifact(
                run_id,
                key=artifact_key(result),
                markdown=summary_markdown(result),
                description=artifact_description(result),
            )
            self._api.set_flow_run_state(run_id, state_of(result).model_dump(exclude_none=True))
        except Exception:  # a record that cannot be written never changes the rotation's outcome
            self.failures += 1

    def close(self) -> None:
        for future in self._pending:
            future.result()
        self._pool.shutdown()
        if self._rest is not None:
            self._rest.close()
        if isinstance(self._api, _ClientApi):
            self._api.close()


class _ClientApi(RunRecords):
    """The record calls through Prefect's client (one per thread), for the ephemeral server, which
    has no URL to talk to."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._open: list[Any] = []
        self._lock = threading.Lock()

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            from prefect.client.orchestration import get_client

            client = get_client(sync_client=True)
            client.__enter__()
            self._local.client = client
            with self._lock:
                self._open.append(client)
        route: Any = f"/{path}"  # Prefect types its routes as literals; the record calls' are among them
        return client.request("POST", route, json=body)

    def close(self) -> None:
        with self._lock:
            while self._open:
                self._open.pop().__exit__(None, None, None)


def _progress_artifact_sink(fleet_run_id: str) -> ProgressSink:
    """A progress artifact on the fleet run, updated as entries finish."""
    write = _progress_writer(fleet_run_id)
    state: dict[str, Any] = {"done": -1}

    def sink(progress: FleetProgress, final: bool) -> None:
        snap = progress.snapshot()
        if snap["done"] == state["done"] and not final:
            return
        state["done"] = snap["done"]
        write(round(100.0 * snap["done"] / snap["total"], 1) if snap["total"] else 100.0, progress.line())

    return sink


def _progress_writer(fleet_run_id: str) -> Callable[[float, str], None]:
    """Creates the progress artifact, then updates it: over the REST client the entries' locks
    share (a Prefect client per update built a TLS context and fetched a CSRF token every second),
    through Prefect's client only for the ephemeral server."""
    artifact: dict[str, Any] = {"id": None}
    rest = prefect_api() if prefect_server_configured() else None
    if rest is not None:
        api = rest

        def write_rest(percent: float, line: str) -> None:
            if artifact["id"] is None:
                artifact["id"] = api.create_progress_artifact(
                    fleet_run_id, key=PROGRESS_KEY, percent=percent, description=line
                )
            else:
                api.update_artifact(artifact["id"], data=percent, description=line)

        return write_rest

    def write_client(percent: float, line: str) -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate

        with get_client(sync_client=True) as client:
            if artifact["id"] is None:
                created = ArtifactCreate(
                    key=PROGRESS_KEY, type="progress", data=percent, description=line, flow_run_id=UUID(fleet_run_id)
                )
                artifact["id"] = client.create_artifact(created).id
            else:
                client.update_artifact(artifact["id"], ArtifactUpdate(data=percent, description=line))

    return write_client


def _publish_fleet_summary(result: FleetResult) -> None:
    from prefect.artifacts import create_table_artifact

    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items()) or "no entries"
    create_table_artifact(
        key=SUMMARY_KEY,
        table=summary_table(result.entries),
        description=f"Langfuse fleet rotation: {result.status} ({counts}) in {result.duration_s:.1f}s",
    )


def _fleet_final_state(result: FleetResult) -> Any:
    """Completed when every entry is fine; a failed fleet's message starts with a status, so the
    failure hook does not notify what the summary already did."""
    from prefect.states import Completed, Failed

    if result.status in {"rotated", "planned"}:
        return result
    bad = [e for e in result.entries if e.status not in OK_STATUSES]
    named = ", ".join(f"{e.project} {e.status}" for e in bad[:20]) + (" ..." if len(bad) > 20 else "")
    detail = result.error or f"{len(bad)} of {result.total} entries: {named}"
    if result.status == "needs_attention":
        return Completed(
            message=f"needs_attention: fleet {result.status}: {detail}", name="NeedsAttention", data=result
        )
    return Failed(message=f"failed: fleet {result.status}: {detail}", data=result)


def approval_runner(rotate: Callable[..., Any], config_path: str | None) -> ApprovalRunner:
    """Entries with ``approval: required`` run as their own ``rotate`` flow run, which can pause.
    ``rotate``: that flow (``flows.rotate.rotate``), handed down by the fleet flow beside it."""

    def run(entry: ProjectEntry) -> RotationResult:
        from prefect.client.schemas.objects import State

        state = rotate(project=entry.name, config_path=config_path, return_state=True)
        assert isinstance(state, State)
        data = state.result(raise_on_failure=False)
        if isinstance(data, RotationResult):
            return data
        return RotationResult(status="failed", project=entry.name, store=entry.store, error=state.message or "failed")

    return run


def run_fleet_flow(
    flow_run_id: str,
    config: RotationConfig,
    *,
    config_path: str | None,
    entries: list[str] | None,
    concurrency: int | None,
    show_progress: bool,
    summary: bool = True,
    rotate: Callable[..., Any],
) -> Any:
    """The body of the ``langfuse-key-rotation-all`` flow: the whole fleet here, or (``fleet.batch_size``
    with a Prefect server) handed out in batches to the work pool. ``config``: as the flow loaded it.
    ``rotate``: the single-entry flow, which runs the entries that need approval."""
    tag_flow_run(flow_run_id, project="all", mode="scheduled", store="all")
    server = prefect_server_configured()
    if entries is None and config.fleet.batch_size and server:
        result = run_in_batches(config, config_path=config_path, concurrency=concurrency, fleet_run_id=flow_run_id)
        _publish_fleet_summary(result)
        return _fleet_final_state(result)
    recorder = PrefectEntryRecorder(flow_run_id)
    sinks: list[ProgressSink] = [_progress_artifact_sink(flow_run_id)]
    if show_progress:
        sinks.append(terminal_progress_sink())
    lock_api = prefect_api() if server else None
    if lock_api is not None:
        lock_api.expect_many_limits()
    try:
        result = run_fleet(
            config,
            config_path=config_path,
            concurrency=concurrency,
            only=entries,
            recorder=recorder,
            progress_sinks=sinks,
            shared_pacing=server,
            lock_with_prefect=server,
            approval_runner=approval_runner(rotate, config_path),
            fleet_run_id=flow_run_id,
            notify_summary=summary,
        )
    finally:
        recorder.close()
    _publish_fleet_summary(result)
    return _fleet_final_state(result)
