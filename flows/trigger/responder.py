"""The warm responder: ``langfuse-rotate respond`` contains a key reported by a
``langfuse.key.compromised`` event in its own, already running process (docs/responder.md).

It subscribes to the event on Prefect's events websocket (``connectors.prefect_events``), and for
each event does what a run of the ``emergency-rotation`` deployment started by the automation
does, in the same order and against the same server state:

1. records a flow run of that deployment over REST (``flows.prefect.rest``), Running, with the
   parameters the automation renders from the event and the tag ``trigger:event``;
2. takes the entry's emergency slot (the global concurrency limit ``langfuse-emergency-<entry>``,
   over REST), so it and a deployment run for the same event never check or contain at once;
3. passes the checks of ``flows.trigger.checks`` (live key, not another entry's, one containment per key,
   ``emergency.max_per_hour``), reading earlier containments from the server's flow runs: a run
   that passes is tagged ``trigger:event-containment``, which is what the other path's check sees;
4. contains with ``flows.rotation.entry_run.execute`` (the same checklist, under the entry's Prefect lock),
   then writes the step-table artifact and the final state.

So whichever of the responder and the automation's run comes second finds the first's
containment and ends ``Refused`` saying the key was already contained by that run (a duplicate:
audited, not notified). Nothing here imports ``prefect``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from connectors.errors import PrefectApiError
from connectors.prefect_api import PrefectApi
from connectors.prefect_events import EventStream, StreamedEvent
from flows.audit import run_context
from flows.config.model import ProjectEntry, RotationConfig
from flows.errors import EventRefused
from flows.models import RotationResult
from flows.prefect.artifact import artifact_description, artifact_key, refused_state, state_of, summary_markdown
from flows.rotation.entry_run import execute
from flows.rotation.lock import held_lease
from flows.rotation.run_names import project_tag, run_name, run_tags
from flows.rotation.runners import DirectRunner
from flows.shown import ENTRY_NAME, EVENT_ID, shown_key, shown_matching
from flows.trigger.automation import DEFAULT_DEPLOYMENT, EVENT, PROJECT_LABEL, RESOURCE_PREFIX
from flows.trigger.checks import (
    EMERGENCY_FLOW,
    TAG_CONTAINMENT,
    TAG_EVENT,
    WINDOW,
    EarlierRun,
    check_entry,
    check_key,
    refused_message,
    report_refusal,
    slot_name,
)


class _RecordedRunner(DirectRunner):
    """Steps run directly; the run is Prefect's (recorded)."""

    orchestrator = "prefect"


class _RestLedger:
    """``flows.trigger.checks.RunLedger`` over REST: the same flow runs Prefect's client reads."""

    def __init__(self, api: PrefectApi) -> None:
        self._api = api

    def earlier_containments(self, entry: str, flow_run_id: str) -> list[EarlierRun]:
        since = datetime.now(UTC) - WINDOW
        body = {
            "flows": {"name": {"any_": [EMERGENCY_FLOW]}},
            "flow_runs": {
                "tags": {"all_": [project_tag(entry), TAG_CONTAINMENT]},
                "start_time": {"after_": since.isoformat()},
            },
        }
        try:
            runs = self._api.read_flow_runs(body)
        except (httpx.HTTPError, PrefectApiError, ValueError) as exc:
            raise EventRefused(f"cannot read earlier containments from Prefect: {exc}", page=True) from None
        return [
            EarlierRun(name=str(run.get("name")), public_key=(run.get("parameters") or {}).get("public_key"))
            for run in runs
            if str(run.get("id")) != flow_run_id
        ]

    def add_tags(self, flow_run_id: str, tags: list[str]) -> None:
        try:
            run = self._api.read_flow_run(flow_run_id) or {}
            self._api.set_flow_run_tags(flow_run_id, sorted({*run.get("tags", []), *tags}))
        except (httpx.HTTPError, PrefectApiError, ValueError) as exc:
            # Untagged, the containment would not count for the other path: do not contain.
            raise EventRefused(f"cannot mark the run as a containment in Prefect: {exc}", page=True) from None


@contextlib.contextmanager
def _rest_emergency_slot(api: PrefectApi, entry: str, *, wait_s: float, lease_s: int) -> Iterator[None]:
    """``flows.trigger.checks.emergency_slot`` over REST: the same leased global concurrency limit."""
    try:
        lease = api.acquire(slot_name(entry), lease_s=lease_s, timeout_s=max(wait_s, 1.0))
    except (httpx.HTTPError, PrefectApiError, ValueError) as exc:
        raise EventRefused(f"cannot take the emergency slot of '{entry}' in Prefect: {exc}", page=True) from None
    if lease is None:
        raise EventRefused(f"another emergency run of '{entry}' is still running after {wait_s:g}s")
    with held_lease(api, lease, lease_s, label=f"emergency-slot-{entry}"):
        yield


@dataclass(frozen=True)
class Handled:
    """What the responder did with one event (one line in its log)."""

    event_id: str
    project: str
    outcome: str
    """``contained`` (or the result's status), ``refused``, ``duplicate``, ``skipped``."""
    detail: str
    run_id: str | None = None
    seconds: float = 0.0

    def line(self) -> str:
        run = f" run {self.run_id}" if self.run_id else ""
        return (
            f"event {shown_matching(EVENT_ID, self.event_id)} {shown_matching(ENTRY_NAME, self.project)}: "
            f"{self.outcome} in {self.seconds:.2f}s{run}: {self.detail}"
        )


class Responder:
    """Handles ``langfuse.key.compromised`` events with the configuration loaded once."""

    def __init__(
        self,
        config: RotationConfig,
        config_path: str,
        api: PrefectApi,
        *,
        deployment: str = DEFAULT_DEPLOYMENT,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.api = api
        self.deployment = deployment
        self.host = socket.gethostname()
        self._flow_id: str | None = None
        self._deployment_id: str | None = None

    def warm_up(self) -> None:
        """Everything a containment needs before the first event: the flow and deployment ids,
        and the modules the checklist and the stores import on first use."""
        with contextlib.suppress(httpx.HTTPError, PrefectApiError, KeyError, ValueError):
            self._ids()
        import connectors.notify  # noqa: F401  (apprise: ~0.3 s on first use)
        import flows.rotation.checklists
        import flows.rotation.context  # noqa: F401
        from flows.config.stores import build_store

        for settings in self.config.stores.values():
            with contextlib.suppress(Exception):  # a store that is down now is reported by the event's run
                build_store(settings)

    def _ids(self) -> tuple[str, str | None]:
        if self._flow_id is None:
            self._flow_id = self.api.flow_id(EMERGENCY_FLOW)
        if self._deployment_id is None:
            self._deployment_id = self.api.deployment_id(self.deployment)
        return self._flow_id, self._deployment_id

    def handle(self, event: StreamedEvent) -> Handled:
        started = time.monotonic()
        resource_id = event.resource.get("prefect.resource.id", "")
        project = event.resource.get(PROJECT_LABEL, "")
        if event.event != EVENT or not resource_id.startswith(RESOURCE_PREFIX):
            return Handled(event.id, project, "skipped", "not an event the emergency trigger matches")
        raw_key = event.payload.get("public_key")
        public_key = raw_key if isinstance(raw_key, str) and raw_key else None
        raw_source = event.payload.get("source")
        source = raw_source if isinstance(raw_source, str) and raw_source else None
        initiator = {
            "type": "langfuse-rotate-respond",
            "host": self.host,
            "deployment": self.deployment,
            "event_id": event.id,
            "event_source": source,
            "user": f"responder@{self.host}",
        }
        try:
            entry: ProjectEntry | None = check_entry(self.config_path, project, config=self.config)[1]
            refused: EventRefused | None = None
        except EventRefused as exc:
            entry, refused = None, exc
        run_id, name = self._record(event, project, public_key, source, entry)
        if run_id is None:
            # Without a run on the server the other path could not see this containment, nor this
            # one the other's: leave the event to the automation's run.
            return Handled(event.id, project, "skipped", "Prefect did not take the run record: left to the automation")
        with run_context("emergency", run_id=run_id, initiator=initiator, user=str(initiator["user"])):
            result: RotationResult | None = None
            try:
                if refused is not None:
                    raise refused
                assert entry is not None
                slot = _rest_emergency_slot(
                    self.api, entry.name, wait_s=_slot_wait_s(entry), lease_s=self.config.lock.lease_s
                )
                with slot:
                    check_key(self.config, entry, public_key, run_id, _RestLedger(self.api))
                    result = execute(
                        "emergency",
                        entry.name,
                        self.config_path,
                        _RecordedRunner(),
                        flow_run_id=run_id,
                        run_label=name,
                        compromised_public_key=public_key,
                        lock_with_prefect=True,
                        config=self.config,
                    )
            except EventRefused as exc:
                report_refusal(project, self.config_path, public_key, event.id, source, exc, config=self.config)
                self._finish(run_id, None, refused_state(refused_message(exc)).model_dump(exclude_none=True))
                outcome = "duplicate" if exc.duplicate else "refused"
                return Handled(event.id, project, outcome, str(exc), run_id, time.monotonic() - started)
            except BaseException:
                self._finish(run_id, None, {"type": "FAILED", "name": "Failed", "message": "failed: see the logs"})
                raise
            self._finish(run_id, result, state_of(result).model_dump(exclude_none=True))
            detail = f"{shown_key(result.old_public_key)} -> {shown_key(result.new_public_key)}"
            if result.error:
                detail += f"; {result.error}"
            return Handled(event.id, project, result.status, detail, run_id, time.monotonic() - started)

    def _record(
        self,
        event: StreamedEvent,
        project: str,
        public_key: str | None,
        source: str | None,
        entry: ProjectEntry | None,
    ) -> tuple[str | None, str]:
        name = run_name("emergency", shown_matching(ENTRY_NAME, project))
        tags = {TAG_EVENT}
        if entry is not None:
            tags |= set(run_tags(entry.name, mode="emergency", store=entry.store))
        # The parameters the automation renders from the event (flows.trigger.automation.RUN_PARAMETERS).
        parameters: dict[str, object] = {
            "project": project,
            "public_key": public_key or "",
            "event_id": event.id,
            "event_source": source or "",
        }
        try:
            flow_id, deployment_id = self._ids()
            run_id = self.api.create_flow_run(
                flow_id,
                name=name,
                tags=sorted(tags),
                parameters=parameters,
                state={"type": "RUNNING", "name": "Running"},
                deployment_id=deployment_id,
            )
        except (httpx.HTTPError, PrefectApiError, KeyError, ValueError):
            return None, name
        return run_id, name

    def _finish(self, run_id: str, result: RotationResult | None, state: dict[str, object]) -> None:
        with contextlib.suppress(httpx.HTTPError, PrefectApiError):
            if result is not None:
                self.api.create_artifact(
                    run_id,
                    key=artifact_key(result),
                    markdown=summary_markdown(result),
                    description=artifact_description(result),
                )
            self.api.set_flow_run_state(run_id, state)


def _slot_wait_s(entry: ProjectEntry) -> float:
    """As long as the deployment's run waits for the slot (``flows.emergency``)."""
    return entry.wait_timeout_s + entry.canary_timeout_s + entry.revoke_recheck_s + 300


def serve(
    responder: Responder,
    stream: EventStream,
    stop: threading.Event,
    *,
    say: Callable[[str], None],
    workers: int = 4,
) -> None:
    """Handle events from ``stream`` until ``stop`` is set; events of different entries are
    contained at once (each entry's runs queue on its slot). In-flight containments finish before
    this returns."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="respond")
    pending: set[Future[Handled]] = set()

    def done(future: Future[Handled]) -> None:
        pending.discard(future)
        try:
            say(future.result().line())
        except Exception as exc:  # an unexpected error ends one event, never the responder
            say(f"an event failed unexpectedly: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")

    try:
        for event in stream.events(stop):
            future = pool.submit(responder.handle, event)
            pending.add(future)
            future.add_done_callback(done)
    finally:
        pool.shutdown(wait=True)
