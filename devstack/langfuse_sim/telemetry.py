"""Traces, observations and scores: OTLP decoding, legacy batch events, and the delayed read model.

Everything written gets a `visible_at` time (receive time + the configured delay) to model the
queue → worker → ClickHouse path; reads only return rows whose `visible_at` has passed.
"""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from devstack.langfuse_sim.model import iso_ms, iso_to_ts

_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")
_HEX16 = re.compile(r"^[0-9a-fA-F]{16}$")


class OtlpError(ValueError):
    """The OTLP export is unusable; `str(err)` is the exact `error` string of the 400 body."""


@dataclass
class SpanIn:
    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    resource_attributes: dict[str, Any]
    status_message: str | None = None


@dataclass
class Observation:
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
    metadata: dict[str, Any] = field(default_factory=dict)
    user_id: str | None = None
    session_id: str | None = None
    version: str | None = None
    model: str | None = None
    created_at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        """`ObservationV2` (fields the SDK's pydantic model knows; required ones always present)."""
        return {
            "id": self.id,
            "traceId": self.trace_id,
            "startTime": iso_ms(self.start_time),
            "endTime": iso_ms(self.end_time) if self.end_time is not None else None,
            "projectId": self.project_id,
            "parentObservationId": self.parent_id,
            "type": self.type,
            "isRootObservation": self.parent_id is None,
            "name": self.name,
            "level": self.level,
            "statusMessage": self.status_message,
            "version": self.version,
            "environment": self.environment,
            "userId": self.user_id,
            "sessionId": self.session_id,
            "input": self.input,
            "output": self.output,
            "metadata": self.metadata,
            "model": self.model,
            "createdAt": iso_ms(self.created_at),
            "updatedAt": iso_ms(self.created_at),
        }


@dataclass
class Trace:
    id: str
    project_id: str
    timestamp: float
    visible_at: float
    ingestion_public_key: str | None
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    metadata: Any = None
    user_id: str | None = None
    session_id: str | None = None
    environment: str = "default"
    release: str | None = None
    version: str | None = None
    input: Any = None
    output: Any = None
    public: bool = False
    created_at: float = field(default_factory=time.time)

    def to_json(self, observations: list[Observation], scores: list[dict[str, Any]]) -> dict[str, Any]:
        """`GetTraceV1Response` / `TraceWithFullDetails`."""
        ends = [o.end_time for o in observations if o.end_time is not None]
        latency = (max(ends) - self.timestamp) if ends else 0.0
        return {
            "id": self.id,
            "externalId": None,
            "timestamp": iso_ms(self.timestamp),
            "name": self.name,
            "userId": self.user_id,
            "metadata": self.metadata,
            "release": self.release,
            "version": self.version,
            "projectId": self.project_id,
            "environment": self.environment,
            "public": self.public,
            "bookmarked": False,
            "tags": self.tags,
            "input": self.input,
            "output": self.output,
            "sessionId": self.session_id,
            "createdAt": iso_ms(self.created_at),
            "updatedAt": iso_ms(self.created_at),
            "htmlPath": f"/project/{self.project_id}/traces/{self.id}",
            "latency": round(max(latency, 0.0), 3),
            "totalCost": 0,
            "observations": [o.to_json() for o in observations],
            "scores": scores,
        }


class TelemetryStore:
    """In-memory ClickHouse stand-in. Callers hold the simulator lock."""

    def __init__(self) -> None:
        self.traces: dict[tuple[str, str], Trace] = {}
        self.observations: dict[tuple[str, str], Observation] = {}
        self.scores: list[dict[str, Any]] = []
        self.last_event_at: float | None = None

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    # -- writes ----------------------------------------------------------------------------------
    def upsert_trace(
        self, project_id: str, trace_id: str, visible_at: float, public_key: str | None, **fields: Any
    ) -> Trace:
        key = (project_id, trace_id)
        trace = self.traces.get(key)
        if trace is None:
            ts = fields.pop("timestamp", None) or time.time()
            trace = Trace(
                id=trace_id,
                project_id=project_id,
                timestamp=ts,
                visible_at=visible_at,
                ingestion_public_key=public_key,
            )
            self.traces[key] = trace
        else:
            fields.pop("timestamp", None)
            trace.visible_at = max(trace.visible_at, visible_at)
        for name, value in fields.items():
            if value is not None:
                setattr(trace, name, value)
        self.last_event_at = time.time()
        return trace

    def put_observation(self, obs: Observation) -> None:
        self.observations[(obs.project_id, obs.id)] = obs
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
        found = [t for t in self.traces.values() if t.project_id == project_id and t.visible_at <= now]
        return sorted(found, key=lambda t: t.timestamp, reverse=True)


# ---------------------------------------------------------------------------------------------
# OTLP decoding
# ---------------------------------------------------------------------------------------------
def decode_otlp_protobuf(body: bytes) -> list[SpanIn]:
    """Decode an `ExportTraceServiceRequest`; raises `OtlpError` with the server's error strings."""
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    request = trace_service_pb2.ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as exc:
        raise OtlpError("Failed to parse OTel Protobuf Trace") from exc
    spans: list[SpanIn] = []
    invalid: list[str] = []
    scopes: list[str] = []
    total = 0
    for resource_spans in request.resource_spans:
        resource_attrs = {kv.key: _pb_value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.name or "unknown"
            for span in scope_spans.spans:
                total += 1
                reason = _pb_id_problem(span.trace_id, 16, "trace") or _pb_id_problem(span.span_id, 8, "span")
                if reason:
                    invalid.append(f"{scope}:{reason}")
                    scopes.append(scope)
                    continue
                spans.append(
                    SpanIn(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex() if span.parent_span_id else None,
                        name=span.name,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes={kv.key: _pb_value(kv.value) for kv in span.attributes},
                        resource_attributes=resource_attrs,
                        status_message=span.status.message or None,
                    )
                )
    _raise_if_invalid(invalid, 0, total, scopes)
    return spans


def decode_otlp_json(body: bytes) -> list[SpanIn]:
    """Decode OTLP/JSON (hex ids, int64 as strings or numbers)."""
    try:
        payload = json.loads(body.decode("utf-8"))
        resource_spans = payload.get("resourceSpans") if isinstance(payload, dict) else None
    except (UnicodeDecodeError, ValueError) as exc:
        raise OtlpError("Failed to parse OTel JSON Trace") from exc
    if not resource_spans:
        return []
    if not isinstance(resource_spans, list):
        raise OtlpError("Failed to parse OTel JSON Trace")
    spans: list[SpanIn] = []
    invalid: list[str] = []
    scopes: list[str] = []
    malformed = 0
    total = 0
    for rs in resource_spans:
        rs = rs if isinstance(rs, dict) else {}
        resource_attrs = _json_attrs((rs.get("resource") or {}).get("attributes"))
        scope_list = rs.get("scopeSpans", [])
        if not isinstance(scope_list, list):
            malformed += 1
            invalid.append("unknown:scope_spans_not_an_array")
            continue
        for ss in scope_list:
            ss = ss if isinstance(ss, dict) else {}
            scope = ((ss.get("scope") or {}).get("name")) or "unknown"
            span_list = ss.get("spans", [])
            if not isinstance(span_list, list):
                malformed += 1
                invalid.append(f"{scope}:spans_not_an_array")
                scopes.append(scope)
                continue
            for span in span_list:
                total += 1
                parsed, reason = _json_span(span, resource_attrs)
                if parsed is None:
                    invalid.append(f"{scope}:{reason}")
                    scopes.append(scope)
                else:
                    spans.append(parsed)
    _raise_if_invalid([r for r in invalid if "not_an_array" not in r], malformed, total, scopes, reasons=invalid)
    return spans


def _raise_if_invalid(
    invalid: list[str], malformed: int, total: int, scopes: list[str], reasons: list[str] | None = None
) -> None:
    if not invalid and not malformed:
        return
    problems = []
    if invalid:
        problems.append(
            f"{len(invalid)} of {total} span(s) have a missing or malformed traceId/spanId — a traceId must "
            "be 16 bytes (32 hex chars) and a spanId 8 bytes (16 hex chars)"
        )
    if malformed:
        problems.append(f"{malformed} scopeSpans/spans field(s) are present but not arrays")
    reason_list = sorted({r.split(":", 1)[1] for r in (reasons or invalid)})
    scope_names = ", ".join(sorted(set(scopes))) or "unknown"
    raise OtlpError(
        f"Invalid OTLP trace export: {'; '.join(problems)} ({', '.join(reason_list)}). The entire export "
        f"was rejected and no spans were ingested. Instrumentation scopes: {scope_names}. This endpoint "
        "accepts OpenTelemetry traces only — if you are exporting OpenTelemetry logs, point your log "
        "exporter elsewhere."
    )


def _pb_id_problem(raw: bytes, size: int, what: str) -> str | None:
    if not raw:
        return f"missing_{what}_id"
    if len(raw) != size:
        return f"invalid_{what}_id"
    return None


def _pb_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_pb_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _pb_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return getattr(value, kind)


def _json_span(span: Any, resource_attrs: dict[str, Any]) -> tuple[SpanIn | None, str]:
    if not isinstance(span, dict):
        return None, "missing_trace_id"
    trace_id, span_id = span.get("traceId"), span.get("spanId")
    for value, pattern, what in ((trace_id, _HEX32, "trace"), (span_id, _HEX16, "span")):
        if value in (None, ""):
            return None, f"missing_{what}_id"
        if not isinstance(value, str) or not pattern.match(value):
            return None, f"invalid_{what}_id"
    parent = span.get("parentSpanId") or None
    return (
        SpanIn(
            trace_id=str(trace_id).lower(),
            span_id=str(span_id).lower(),
            parent_span_id=parent.lower() if isinstance(parent, str) else None,
            name=str(span.get("name", "")),
            start_ns=_as_int(span.get("startTimeUnixNano")),
            end_ns=_as_int(span.get("endTimeUnixNano")),
            attributes=_json_attrs(span.get("attributes")),
            resource_attributes=resource_attrs,
            status_message=(span.get("status") or {}).get("message") or None,
        ),
        "",
    )


def _as_int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _json_attrs(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, list):
        return {}
    return {a["key"]: _json_value(a.get("value")) for a in raw if isinstance(a, dict) and "key" in a}


def _json_value(value: Any) -> Any:
    if not isinstance(value, dict) or not value:
        return None
    kind, inner = next(iter(value.items()))
    if kind == "intValue":
        return _as_int(inner)
    if kind == "arrayValue":
        return [_json_value(v) for v in (inner or {}).get("values", [])]
    if kind == "kvlistValue":
        return _json_attrs((inner or {}).get("values"))
    return inner


# ---------------------------------------------------------------------------------------------
# Span → trace/observation mapping (subset of packages/shared/src/server/otel)
# ---------------------------------------------------------------------------------------------
def store_spans(
    store: TelemetryStore, spans: list[SpanIn], project_id: str, public_key: str, visible_at: float
) -> None:
    for span in spans:
        attrs = span.attributes
        env = attrs.get("langfuse.environment") or span.resource_attributes.get("langfuse.environment")
        start = span.start_ns / 1e9 if span.start_ns else time.time()
        end = span.end_ns / 1e9 if span.end_ns else None
        metadata = _prefixed(attrs, "langfuse.observation.metadata.")
        store.put_observation(
            Observation(
                id=span.span_id,
                trace_id=span.trace_id,
                project_id=project_id,
                type=str(attrs.get("langfuse.observation.type") or "span").upper(),
                name=span.name,
                start_time=start,
                end_time=end,
                visible_at=visible_at,
                parent_id=span.parent_span_id,
                level=str(attrs.get("langfuse.observation.level") or "DEFAULT"),
                status_message=span.status_message,
                environment=str(env or "default"),
                input=_maybe_json(attrs.get("langfuse.observation.input")),
                output=_maybe_json(attrs.get("langfuse.observation.output")),
                metadata=metadata,
                user_id=attrs.get("user.id") or attrs.get("langfuse.user.id"),
                session_id=attrs.get("session.id") or attrs.get("langfuse.session.id"),
                version=attrs.get("langfuse.version"),
                model=attrs.get("langfuse.observation.model.name"),
            )
        )
        trace_fields: dict[str, Any] = {
            "timestamp": start,
            "user_id": attrs.get("user.id") or attrs.get("langfuse.user.id"),
            "session_id": attrs.get("session.id") or attrs.get("langfuse.session.id"),
            "environment": str(env) if env else None,
        }
        name = attrs.get("langfuse.trace.name") or (span.name if span.parent_span_id is None else None)
        trace_fields["name"] = name
        tags = attrs.get("langfuse.trace.tags")
        if isinstance(tags, list):
            trace_fields["tags"] = [str(t) for t in tags]
        trace_meta = _prefixed(attrs, "langfuse.trace.metadata.")
        if trace_meta:
            trace_fields["metadata"] = trace_meta
        store.upsert_trace(project_id, span.trace_id, visible_at, public_key, **trace_fields)


def _prefixed(attrs: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: _maybe_json(v) for k, v in attrs.items() if k.startswith(prefix)}


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def ts_or_now(value: Any) -> float:
    if isinstance(value, str):
        try:
            return iso_to_ts(value)
        except ValueError:
            pass
    return time.time()
