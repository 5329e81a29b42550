"""The stored rows: the legacy `traces`/`observations` tables, the v4 `events` table, scores.

Metadata is stored as ClickHouse does: a `Map(String, String)` on traces and observations, and
flattened `(name, value)` pairs on events. Reads JSON-parse each value (`parseJsonPrioritised`).
Every row carries `visible_at` (receive time + the configured delay); reads skip rows not yet visible.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from devstack.langfuse_sim.model import iso_ms
from devstack.langfuse_sim.otel_map import parse_metadata_value

#: `fields` groups of `GET /api/public/traces` (`TRACE_FIELD_GROUPS`).
TRACE_FIELD_GROUPS = ("core", "io", "scores", "observations", "metrics")
#: `fields` groups of `GET /api/public/v2/observations` (`OBSERVATION_FIELD_GROUPS_PUBLIC_API`).
OBSERVATION_FIELD_GROUPS = (
    "core",
    "basic",
    "time",
    "io",
    "metadata",
    "model",
    "usage",
    "prompt",
    "metrics",
    "trace_context",
)


def parsed_metadata(pairs: dict[str, str] | list[tuple[str, str]]) -> dict[str, Any]:
    items = pairs.items() if isinstance(pairs, dict) else pairs
    out: dict[str, Any] = {}
    for name, value in items:
        out.setdefault(name, parse_metadata_value(value))
    return out


@dataclass
class Observation:
    """A row of the legacy `observations` table."""

    id: str
    trace_id: str
    project_id: str
    type: str
    name: str | None
    start_time: float
    end_time: float | None
    visible_at: float
    parent_id: str | None = None
    level: str = "DEFAULT"
    status_message: str | None = None
    environment: str = "default"
    input: Any = None
    output: Any = None
    metadata: dict[str, str] = field(default_factory=dict)
    user_id: str | None = None
    session_id: str | None = None
    version: str | None = None
    model: str | None = None
    created_at: float = field(default_factory=time.time)
    ingestion_public_key: str | None = None
    #: Written to the events table by the dual-write propagation (not by a direct write).
    forwarded: bool = True

    def to_json(self) -> dict[str, Any]:
        """The observation as `GET /api/public/traces/{id}` embeds it."""
        return {
            "id": self.id,
            "traceId": self.trace_id,
            "startTime": iso_ms(self.start_time),
            "endTime": iso_ms(self.end_time) if self.end_time is not None else None,
            "projectId": self.project_id,
            "parentObservationId": self.parent_id,
            "type": self.type,
            "name": self.name,
            "level": self.level,
            "statusMessage": self.status_message,
            "version": self.version,
            "environment": self.environment,
            "input": self.input,
            "output": self.output,
            "metadata": parsed_metadata(self.metadata),
            "model": self.model,
            "createdAt": iso_ms(self.created_at),
            "updatedAt": iso_ms(self.created_at),
        }


@dataclass
class Trace:
    """A row of the legacy `traces` table. `timestamp`, `environment` are immutable after creation."""

    id: str
    project_id: str
    timestamp: float
    visible_at: float
    ingestion_public_key: str | None
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    user_id: str | None = None
    session_id: str | None = None
    environment: str = "default"
    release: str | None = None
    version: str | None = None
    input: Any = None
    output: Any = None
    public: bool = False
    bookmarked: bool = False
    created_at: float = field(default_factory=time.time)

    def to_json(
        self,
        observations: list[Observation],
        scores: list[dict[str, Any]],
        groups: tuple[str, ...] = TRACE_FIELD_GROUPS,
    ) -> dict[str, Any]:
        """`TraceWithFullDetails`, with the excluded `fields` groups emptied as the server does:
        no `io` → input/output null and metadata `{}`; no scores/observations → `[]`; no metrics → -1."""
        ends = [o.end_time for o in observations if o.end_time is not None]
        latency = round(max((max(ends) - self.timestamp) if ends else 0.0, 0.0), 3)
        io = "io" in groups
        return {
            "id": self.id,
            "externalId": None,
            "timestamp": iso_ms(self.timestamp),
            "name": self.name,
            "userId": self.user_id,
            "metadata": parsed_metadata(self.metadata) if io else {},
            "release": self.release,
            "version": self.version,
            "projectId": self.project_id,
            "environment": self.environment,
            "public": self.public,
            "bookmarked": self.bookmarked,
            "tags": self.tags,
            "input": self.input if io else None,
            "output": self.output if io else None,
            "sessionId": self.session_id,
            "createdAt": iso_ms(self.created_at),
            "updatedAt": iso_ms(self.created_at),
            "htmlPath": f"/project/{self.project_id}/traces/{self.id}",
            "latency": latency if "metrics" in groups else -1,
            "totalCost": 0 if "metrics" in groups else -1,
            "observations": [o.to_json() for o in observations] if "observations" in groups else [],
            "scores": scores if "scores" in groups else [],
        }


@dataclass
class Event:
    """A row of the v4 `events` table, the one `GET /api/public/v2/observations` reads."""

    id: str
    trace_id: str
    project_id: str
    type: str
    name: str
    start_time: float
    end_time: float | None
    visible_at: float
    ingestion_api_key: str
    ingestion_sdk_name: str = ""
    ingestion_sdk_version: str = ""
    source: str = "otel"
    parent_id: str | None = None
    is_app_root: bool = False
    level: str = "DEFAULT"
    status_message: str | None = None
    environment: str = "default"
    version: str | None = None
    release: str = ""
    tags: list[str] = field(default_factory=list)
    trace_name: str = ""
    user_id: str | None = None
    session_id: str | None = None
    input: str = ""
    output: str = ""
    model: str | None = None
    metadata: list[tuple[str, str]] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)

    @property
    def is_root(self) -> bool:
        return not self.parent_id or self.is_app_root

    @property
    def effective_trace_name(self) -> str | None:
        """`COALESCE(nullIf(trace_name, ''), if(root, nullIf(name, ''), NULL))`."""
        if self.trace_name:
            return self.trace_name
        return (self.name or None) if self.is_root else None

    def metadata_value(self, key: str) -> str | None:
        """`metadata_values[indexOf(metadata_names, key)]` when the name is present."""
        for name, value in self.metadata:
            if name == key:
                return value
        return None

    def to_json(self, groups: tuple[str, ...]) -> dict[str, Any]:
        """`ObservationV2` with the requested field groups (core always)."""
        out: dict[str, Any] = {
            "id": self.id,
            "traceId": self.trace_id,
            "startTime": iso_ms(self.start_time),
            "endTime": iso_ms(self.end_time) if self.end_time is not None else None,
            "projectId": self.project_id,
            "parentObservationId": self.parent_id or None,
            "type": self.type,
        }
        if "basic" in groups:
            out.update(
                name=self.name,
                level=self.level,
                statusMessage=self.status_message,
                version=self.version,
                environment=self.environment,
                bookmarked=False,
                public=False,
                userId=self.user_id,
                sessionId=self.session_id,
                isRootObservation=self.is_root,
            )
        if "time" in groups:
            out.update(completionStartTime=None, createdAt=iso_ms(self.created_at), updatedAt=iso_ms(self.created_at))
        if "io" in groups:
            out.update(input=self.input or None, output=self.output or None)
        if "metadata" in groups:
            out["metadata"] = parsed_metadata(self.metadata)
        if "model" in groups:
            out.update(providedModelName=self.model, internalModelId=None, modelParameters=None)
        if "trace_context" in groups:
            out.update(tags=self.tags, release=self.release or None, traceName=self.effective_trace_name)
        return out


class TelemetryStore:
    """In-memory ClickHouse stand-in. Callers hold the simulator lock."""

    def __init__(self) -> None:
        self.traces: dict[tuple[str, str], Trace] = {}
        self.observations: dict[tuple[str, str], Observation] = {}
        self.events: dict[tuple[str, str], Event] = {}
        self.scores: list[dict[str, Any]] = []
        self.last_event_at: float | None = None

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    # -- writes ----------------------------------------------------------------------------------
    def upsert_trace(
        self, project_id: str, trace_id: str, visible_at: float, public_key: str | None, **fields: Any
    ) -> Trace:
        """Create or merge a trace. Metadata keys merge (later wins); other given fields overwrite,
        except the immutable `timestamp` and `environment` (`immutableEntityKeys`)."""
        key = (project_id, trace_id)
        trace = self.traces.get(key)
        metadata = fields.pop("metadata", None)
        if trace is None:
            trace = Trace(
                id=trace_id,
                project_id=project_id,
                timestamp=fields.pop("timestamp", None) or time.time(),
                visible_at=visible_at,
                ingestion_public_key=public_key,
                environment=fields.pop("environment", None) or "default",
            )
            self.traces[key] = trace
        else:
            fields.pop("timestamp", None)
            fields.pop("environment", None)
            trace.visible_at = max(trace.visible_at, visible_at)
        if metadata:
            trace.metadata = {**trace.metadata, **metadata}
        for name, value in fields.items():
            if value is not None:
                setattr(trace, name, value)
        self.last_event_at = time.time()
        return trace

    def put_observation(self, obs: Observation) -> None:
        self.observations[(obs.project_id, obs.id)] = obs
        self.last_event_at = time.time()

    def put_event(self, event: Event) -> None:
        self.events[(event.project_id, event.id)] = event
        self.last_event_at = time.time()

    def add_score(self, project_id: str, score: dict[str, Any], visible_at: float) -> None:
        self.scores.append({"projectId": project_id, "visible_at": visible_at, **score})
        self.last_event_at = time.time()

    # -- reads -----------------------------------------------------------------------------------
    def visible_trace(self, project_id: str, trace_id: str, now: float) -> Trace | None:
        trace = self.traces.get((project_id, trace_id))
        return trace if trace is not None and trace.visible_at <= now else None

    def visible_observations(self, project_id: str, now: float) -> list[Observation]:
        found = [o for o in self.observations.values() if o.project_id == project_id and o.visible_at <= now]
        return sorted(found, key=lambda o: (o.start_time, o.id))

    def visible_scores(self, project_id: str, trace_id: str, now: float) -> list[dict[str, Any]]:
        return [
            {k: v for k, v in s.items() if k != "visible_at"}
            for s in self.scores
            if s["projectId"] == project_id and s.get("traceId") == trace_id and s["visible_at"] <= now
        ]

    def visible_traces(self, project_id: str, now: float) -> list[Trace]:
        """Newest first (`ORDER BY timestamp desc`; ties by id, the server leaves them unordered)."""
        found = [t for t in self.traces.values() if t.project_id == project_id and t.visible_at <= now]
        return sorted(found, key=lambda t: (t.timestamp, t.id), reverse=True)

    def visible_events(self, project_id: str, now: float, dual_write_delay_s: float) -> list[Event]:
        """Direct-write rows plus the dual-write propagation of legacy observations, newest first
        (`ORDER BY start_time DESC, xxHash32(trace_id) DESC, span_id DESC`; ties here by trace id)."""
        rows = [e for e in self.events.values() if e.project_id == project_id and e.visible_at <= now]
        for obs in self.observations.values():
            if obs.project_id != project_id or not obs.forwarded or (project_id, obs.id) in self.events:
                continue
            event = self._propagated(obs, dual_write_delay_s)
            if event.visible_at <= now:
                rows.append(event)
        return sorted(rows, key=lambda e: (e.start_time, e.trace_id, e.id), reverse=True)

    def _propagated(self, obs: Observation, dual_write_delay_s: float) -> Event:
        """`handleEventPropagationJob`: observation joined with its trace; metadata is
        `mapConcat(obs.metadata, trace.metadata)` (observation keys win), values as stored."""
        trace = self.traces.get((obs.project_id, obs.trace_id))
        metadata = dict(obs.metadata)
        for name, value in (trace.metadata if trace else {}).items():
            metadata.setdefault(name, value)
        visible = max(obs.visible_at, trace.visible_at if trace else obs.visible_at) + dual_write_delay_s
        return Event(
            id=obs.id,
            trace_id=obs.trace_id,
            project_id=obs.project_id,
            type=obs.type,
            name=obs.name or "",
            start_time=obs.start_time,
            end_time=obs.end_time,
            visible_at=visible,
            ingestion_api_key=obs.ingestion_public_key or "",
            source="otel-dual-write" if "resourceAttributes" in obs.metadata else "ingestion-api-dual-write",
            parent_id=obs.parent_id,
            level=obs.level,
            status_message=obs.status_message,
            environment=obs.environment,
            version=obs.version,
            release=(trace.release if trace else None) or "",
            tags=list(trace.tags) if trace else [],
            trace_name=(trace.name if trace else None) or "",
            user_id=trace.user_id if trace else None,
            session_id=trace.session_id if trace else None,
            model=obs.model,
            metadata=list(metadata.items()),
            created_at=obs.created_at,
        )
