"""OTLP decoding and the span → row mapping (legacy traces/observations and v4 events).

Everything written gets a `visible_at` time (receive time + the configured delay) to model the
queue → worker → ClickHouse path; reads only return rows whose `visible_at` has passed.
The rows themselves live in `rows.py`; the attribute rules in `otel_map.py`.
"""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from devstack.langfuse_sim import otel_map as om
from devstack.langfuse_sim.model import iso_to_ts
from devstack.langfuse_sim.rows import Event, Observation, TelemetryStore, Trace

__all__ = ["Event", "Observation", "OtlpError", "SpanIn", "TelemetryStore", "Trace"]

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
    #: The instrumentation scope as the server's protobuf `toObject` / JSON parse leaves it
    #: (`name`, `version` when set; JSON keeps whatever keys were sent), without `attributes`.
    scope: dict[str, Any] = field(default_factory=dict)
    scope_attributes: dict[str, Any] = field(default_factory=dict)


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
            scope_object = _pb_scope(scope_spans.scope)
            scope_attrs = {kv.key: _pb_value(kv.value) for kv in scope_spans.scope.attributes}
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
                        scope=scope_object,
                        scope_attributes=scope_attrs,
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
            found_scope = ss.get("scope")
            raw_scope: dict[str, Any] = found_scope if isinstance(found_scope, dict) else {}
            scope = raw_scope.get("name") or "unknown"
            span_list = ss.get("spans", [])
            if not isinstance(span_list, list):
                malformed += 1
                invalid.append(f"{scope}:spans_not_an_array")
                scopes.append(scope)
                continue
            for span in span_list:
                total += 1
                parsed, reason = _json_span(span, resource_attrs)
                if parsed is not None:
                    parsed.scope = {k: v for k, v in raw_scope.items() if k != "attributes"}
                    parsed.scope_attributes = _json_attrs(raw_scope.get("attributes"))
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


def _pb_scope(scope: Any) -> dict[str, Any]:
    """protobufjs `toObject` without `defaults`: only fields that are set."""
    out: dict[str, Any] = {}
    if scope.name:
        out["name"] = scope.name
    if scope.version:
        out["version"] = scope.version
    if scope.dropped_attributes_count:
        out["droppedAttributesCount"] = scope.dropped_attributes_count
    return out


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
# Span → rows (packages/shared/src/server/otel/OtelIngestionProcessor.ts)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WritePath:
    """Where one OTel export lands: the legacy tables (unless `events_only`) and, when `direct`,
    the events table at once; otherwise the events rows come from the dual-write propagation."""

    legacy: bool
    direct: bool
    sdk_name: str = ""
    sdk_version: str = ""


def store_spans(
    store: TelemetryStore, spans: list[SpanIn], project_id: str, public_key: str, visible_at: float, path: WritePath
) -> None:
    if path.legacy:
        _store_legacy(store, spans, project_id, public_key, visible_at, forwarded=not path.direct)
    if path.direct:
        for span in spans:
            store.put_event(_event_row(span, project_id, public_key, visible_at, path))


def _ms(ns: int) -> float | None:
    """OTel nanoseconds floored to milliseconds, as the server stores them."""
    return (ns // 1_000_000) / 1000 if ns else None


def _span_name(span: SpanIn) -> str:
    """`extractName`: Vercel AI SDK spans are named after `ai.operationId`."""
    attrs = span.attributes
    if "ai.operationId" in attrs:
        function_id = attrs.get("ai.telemetry.functionId")
        return (f"{function_id}:" if om.js_truthy(function_id) else "") + str(attrs["ai.operationId"])
    return span.name


def _is_root(span: SpanIn) -> bool:
    as_root = span.attributes.get("langfuse.internal.as_root")
    return not span.parent_span_id or as_root is True or as_root == "true"


def _store_legacy(
    store: TelemetryStore, spans: list[SpanIn], project_id: str, public_key: str, visible_at: float, *, forwarded: bool
) -> None:
    """`processToIngestionEvents`: trace-create events (shallow ones dropped when the batch has a
    full one for the trace) and one observation per span, in Map(String, String) metadata."""
    full_traces = {s.trace_id for s in spans if _is_root(s) or om.has_trace_updates(s.attributes)}
    trace_events: list[tuple[float, str, dict[str, Any]]] = []
    for span in spans:
        attrs, resource = span.attributes, span.resource_attributes
        start = _ms(span.start_ns) or time.time()
        is_sdk = om.is_langfuse_sdk_scope(span.scope)
        resource_meta = om.extract_metadata(resource, "trace")
        span_meta = om.extract_metadata(attrs, "observation")
        scope = om.scope_object(span.scope, span.scope_attributes)
        root, updates = _is_root(span), om.has_trace_updates(attrs)
        if root or updates or span.trace_id not in full_traces:
            trace_events.append((start, span.trace_id, _trace_fields(span, start, root, updates, scope)))
        env = om.extract_environment(attrs, resource)
        store.put_observation(
            Observation(
                id=span.span_id,
                trace_id=span.trace_id,
                project_id=project_id,
                type=str(attrs.get("langfuse.observation.type") or "span").upper(),
                name=_span_name(span),
                start_time=start,
                end_time=_ms(span.end_ns),
                visible_at=visible_at,
                parent_id=span.parent_span_id,
                level=str(attrs.get("langfuse.observation.level") or "DEFAULT"),
                status_message=attrs.get("langfuse.observation.status_message") or span.status_message,
                environment=env,
                input=_maybe_json(attrs.get("langfuse.observation.input")),
                output=_maybe_json(attrs.get("langfuse.observation.output")),
                metadata=om.to_ch_map(
                    {
                        **resource_meta,
                        **span_meta,
                        **({} if is_sdk else {"attributes": om.filtered_attributes(attrs)}),
                        "resourceAttributes": resource,
                        "scope": scope,
                    }
                ),
                version=om.version_of(attrs, resource),
                model=attrs.get("langfuse.observation.model.name"),
                ingestion_public_key=public_key,
                forwarded=forwarded,
            )
        )
    for _, trace_id, fields in sorted(trace_events, key=lambda item: item[0]):
        store.upsert_trace(project_id, trace_id, visible_at, public_key, **fields)


def _trace_fields(span: SpanIn, start: float, root: bool, updates: bool, scope: dict[str, Any]) -> dict[str, Any]:
    """`createTraceEvent`: shallow (id, timestamp, environment), full for a root span, or an update."""
    attrs, resource = span.attributes, span.resource_attributes
    fields: dict[str, Any] = {"timestamp": start, "environment": om.extract_environment(attrs, resource)}
    if not root and not updates:
        return fields
    metadata: dict[str, Any] = {**om.extract_metadata(resource, "trace"), **om.extract_metadata(attrs, "trace")}
    if root:
        metadata.update(om.extract_metadata(attrs, "observation"))
        if not om.is_langfuse_sdk_scope(span.scope):
            metadata["attributes"] = om.filtered_attributes(attrs)
    metadata.update(resourceAttributes=resource, scope=scope)
    tags = om.extract_tags(attrs)
    public = attrs.get("langfuse.trace.public", attrs.get("langfuse.public"))
    fields.update(
        name=attrs.get("langfuse.trace.name") or (_span_name(span) if root else None),
        metadata=om.to_ch_map(metadata),
        version=om.version_of(attrs, resource),
        release=om.release_of(attrs, resource),
        user_id=om.extract_user_id(attrs),
        session_id=om.extract_session_id(attrs),
        public=None if public is None else public in (True, "true"),
        tags=tags or None,
        input=_maybe_json(attrs.get("langfuse.trace.input")),
        output=_maybe_json(attrs.get("langfuse.trace.output")),
    )
    return fields


def _event_row(span: SpanIn, project_id: str, public_key: str, visible_at: float, path: WritePath) -> Event:
    """`processToEvent` + `createEventRecord`: one events row with flattened metadata."""
    attrs, resource = span.attributes, span.resource_attributes
    is_sdk = om.is_langfuse_sdk_scope(span.scope)
    metadata = {
        **({} if is_sdk else {"attributes": om.filtered_attributes(attrs)}),
        "resourceAttributes": resource,
        "scope": om.scope_object(span.scope, span.scope_attributes),
        **om.extract_metadata(attrs, "observation"),
        **om.extract_metadata(attrs, "trace"),
    }
    app_root = attrs.get("langfuse.internal.is_app_root")
    return Event(
        id=span.span_id,
        trace_id=span.trace_id,
        project_id=project_id,
        type=str(attrs.get("langfuse.observation.type") or "span").upper(),
        name=_span_name(span),
        start_time=_ms(span.start_ns) or time.time(),
        end_time=_ms(span.end_ns),
        visible_at=visible_at,
        ingestion_api_key=public_key,
        ingestion_sdk_name=path.sdk_name,
        ingestion_sdk_version=path.sdk_version,
        parent_id=span.parent_span_id,
        is_app_root=app_root is True or app_root == "true",
        level=str(attrs.get("langfuse.observation.level") or "DEFAULT"),
        status_message=attrs.get("langfuse.observation.status_message") or span.status_message,
        environment=om.extract_environment(attrs, resource),
        version=om.version_of(attrs, resource),
        release=om.release_of(attrs, resource) or "",
        tags=om.extract_tags(attrs),
        trace_name=str(attrs.get("langfuse.trace.name") or ""),
        user_id=om.extract_user_id(attrs),
        session_id=om.extract_session_id(attrs),
        input=_text(attrs.get("langfuse.observation.input")),
        output=_text(attrs.get("langfuse.observation.output")),
        model=attrs.get("langfuse.observation.model.name"),
        metadata=om.flatten_paths(metadata),
    )


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else om.js_stringify(value)


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
