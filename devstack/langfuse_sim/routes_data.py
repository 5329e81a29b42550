"""Data routes: ingestion, OTel, scores, reads, health.

Project data routes follow `createAuthedProjectAPIRoute`: 401 `{message}`, org key → 403 `{message}`,
then the route's rate-limit resource.
"""

from __future__ import annotations

import base64
import gzip
import time
import uuid
import zlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

from devstack.langfuse_sim import filters as flt
from devstack.langfuse_sim.columns import EVENT_COLUMNS, TRACE_COLUMNS
from devstack.langfuse_sim.otel_map import header_based_direct_write, to_ch_map
from devstack.langfuse_sim.rows import OBSERVATION_FIELD_GROUPS, TRACE_FIELD_GROUPS, Event, Trace
from devstack.langfuse_sim.state import Scope, SimState
from devstack.langfuse_sim.telemetry import (
    Observation,
    OtlpError,
    WritePath,
    decode_otlp_json,
    decode_otlp_protobuf,
    store_spans,
    ts_or_now,
)
from devstack.langfuse_sim.wire import BodyError, Request, Response, invalid_json, js_type

EVENTS_ONLY_NOT_AVAILABLE = (
    "This endpoint is not available on deployments running in Langfuse v4 events_only mode. "
    "Learn more about Langfuse v4 at: https://langfuse.com/docs/v4"
)
V2_NEEDS_V4 = (
    "The observations v2 API is only available in a Langfuse v4 write mode. Learn more at: https://langfuse.com/docs/v4"
)
PARSE_IO_RETIRED = (
    "parseIoAsJson=true is no longer supported on the v2 observations endpoint. Input/output fields are "
    "always returned as raw strings. Remove the parseIoAsJson parameter or set it to false."
)
EVENTS_ONLY_REMEDIATION = (
    "Upgrade the client or integration to a v4-compatible SDK or OTLP ingestion path. "
    "As a temporary migration bridge, set LANGFUSE_MIGRATION_V4_WRITE_MODE=dual on both the web and "
    "worker services and redeploy. Docs: https://langfuse.com/self-hosting/upgrade/upgrade-guides/upgrade-v3-to-v4"
)
EVENT_TYPES = {
    "trace-create",
    "score-create",
    "span-create",
    "span-update",
    "generation-create",
    "generation-update",
    "event-create",
    "sdk-log",
    "observation-create",
    "observation-update",
}
EVENTS_ONLY_ALLOWED = {"score-create", "sdk-log"}
OBSERVATION_TYPES = {
    "span-create": "SPAN",
    "span-update": "SPAN",
    "generation-create": "GENERATION",
    "generation-update": "GENERATION",
    "event-create": "EVENT",
    "observation-create": None,
    "observation-update": None,
}


def project_route_auth(
    state: SimState,
    req: Request,
    resource: str | None,
    *,
    allow_scores: bool = False,
    route: str | None = None,
) -> Scope | Response:
    auth = state.authenticate(req.header("authorization"))
    if auth.scope is None:
        return Response(401, {"message": auth.error})
    req.public_key = auth.scope.key.public_key
    level = auth.scope.access_level
    if level == "organization" or (level == "scores" and not allow_scores):
        return Response(403, {"message": "Access denied - insufficient permissions for this endpoint"})
    if resource is not None:
        limited = state.rate_limit(auth.scope.key.org_id, resource, route)
        if limited is not None:
            return limited
    return auth.scope


# ---------------------------------------------------------------------------------------------
# POST /api/public/otel/v1/traces
# ---------------------------------------------------------------------------------------------
def otel_traces(state: SimState, req: Request, params: dict[str, str]) -> Response:
    scope = project_route_auth(state, req, "ingestion")
    if isinstance(scope, Response):
        return scope
    body = req.body
    if "gzip" in (req.header("content-encoding") or ""):
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError, zlib.error):
            return Response(400, {"error": "Failed to decompress request body"})
    content_type = (req.header("content-type") or "").lower()
    is_proto, is_json = "application/x-protobuf" in content_type, "application/json" in content_type
    if not is_proto and not is_json:
        return Response(400, {"error": "Invalid content type"})
    try:
        spans = decode_otlp_protobuf(body) if is_proto else decode_otlp_json(body)
    except OtlpError as exc:
        return Response(400, {"error": str(exc)})
    if not spans:
        return Response(200, {})
    version = req.header("x-langfuse-ingestion-version")
    if version is not None and not _version_ok(version):
        return Response(
            400, {"error": f'Unsupported x-langfuse-ingestion-version: "{version}". Maximum supported: "4".'}
        )
    assert scope.key.project_id is not None
    sdk_name, sdk_version = req.header("x-langfuse-sdk-name"), req.header("x-langfuse-sdk-version")
    with state.lock:
        events_only = state.config.events_only
        path = WritePath(
            legacy=not events_only,
            direct=events_only or header_based_direct_write(sdk_name, sdk_version, version),
            sdk_name=sdk_name or "unknown",
            sdk_version=sdk_version or "unknown",
        )
        visible_at = state.now() + state.config.otel_delay_s
        store_spans(state.telemetry, spans, scope.key.project_id, scope.key.public_key, visible_at, path)
    return Response(200, {})


def _version_ok(raw: str) -> bool:
    """JS `parseInt`: leading integer; NaN or > 4 is rejected."""
    digits = ""
    for ch in raw.strip():
        if ch.isdigit() or (ch in "+-" and not digits):
            digits += ch
        else:
            break
    try:
        return int(digits) <= 4
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# POST /api/public/ingestion (legacy batch)
# ---------------------------------------------------------------------------------------------
def ingestion(state: SimState, req: Request, params: dict[str, str]) -> Response:
    auth = state.authenticate(req.header("authorization"))
    if auth.scope is None:
        return Response(401, {"error": "UnauthorizedError", "message": auth.error})
    req.public_key = auth.scope.key.public_key
    scope = auth.scope
    if scope.access_level == "organization":
        return Response(
            401,
            {
                "error": "UnauthorizedError",
                "message": "Missing projectId in scope. Are you using an organization key?",
            },
        )
    limited = state.rate_limit(scope.key.org_id, "ingestion")
    if limited is not None:
        return limited
    try:
        body = req.next_body()
    except BodyError:
        return invalid_json()
    batch = body.get("batch") if isinstance(body, dict) else None
    if not isinstance(batch, list):
        received = "undefined" if batch is None else js_type(batch)
        issue = "Required" if batch is None else f"Expected array, received {received}"
        return Response(400, {"message": "Invalid request data", "errors": [issue]})
    successes: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    accepted = []
    with state.lock:
        events_only = state.config.events_only
        delay = state.config.ingestion_delay_s
    for event in batch:
        event_id, event_type = _event_id(event), _event_type(event)
        if events_only and event_type not in EVENTS_ONLY_ALLOWED:
            errors.append(_events_only_error(event_id, event_type))
        elif scope.access_level == "scores" and event_type not in ("score-create", "sdk-log"):
            errors.append(
                {
                    "id": event_id,
                    "status": 401,
                    "message": "Authentication error",
                    "error": "Access Scope Denied",
                }
            )
        else:
            problem = _event_problem(event)
            if problem:
                errors.append({"id": event_id, "status": 400, "message": "Invalid request data", "error": problem})
            else:
                accepted.append(event)
                successes.append({"id": event_id, "status": 201})
    assert scope.key.project_id is not None
    with state.lock:
        visible_at = state.now() + delay
        for event in accepted:
            _apply_event(state, event, scope.key.project_id, scope.key.public_key, visible_at)
    return Response(207, {"successes": successes, "errors": errors})


def _event_id(event: Any) -> str:
    value = event.get("id") if isinstance(event, dict) else None
    return value if isinstance(value, str) else "unknown"


def _event_type(event: Any) -> str | None:
    value = event.get("type") if isinstance(event, dict) else None
    return value if isinstance(value, str) else None


def _events_only_error(event_id: str, event_type: str | None) -> dict[str, Any]:
    return {
        "id": event_id,
        "status": 400,
        "message": "Event type not accepted",
        "error": (
            f'Event type "{event_type or "unknown"}" is not accepted by /api/public/ingestion when '
            "LANGFUSE_MIGRATION_V4_WRITE_MODE is events_only. "
            "This endpoint only accepts score and log events. " + EVENTS_ONLY_REMEDIATION
        ),
    }


def _event_problem(event: Any) -> str | None:
    """A short zod-like message for an invalid envelope, or None."""
    if not isinstance(event, dict):
        return f"Expected object, received {js_type(event)}"
    event_id = event.get("id")
    if not isinstance(event_id, str) or not 1 <= len(event_id) <= 800:
        return "id: Expected string (1-800 characters)"
    stamp = event.get("timestamp")
    if not isinstance(stamp, str):
        return "timestamp: Required"
    if not _is_offset_datetime(stamp):
        return "timestamp: Invalid datetime"
    if event.get("type") not in EVENT_TYPES:
        return f"type: Invalid discriminator value. Expected {' | '.join(sorted(EVENT_TYPES))}"
    if not isinstance(event.get("body"), dict):
        return "body: Required"
    body = event["body"]
    if event["type"] == "score-create" and (not isinstance(body.get("name"), str) or "value" not in body):
        return "body: score requires name and value"
    return None


def _is_offset_datetime(value: str) -> bool:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo is not None
    except ValueError:
        return False


def _apply_event(state: SimState, event: dict[str, Any], project_id: str, public_key: str, visible_at: float) -> None:
    kind, body = event["type"], event["body"]
    telemetry = state.telemetry
    if kind == "trace-create":
        trace_id = str(body.get("id") or event["id"])
        telemetry.upsert_trace(
            project_id,
            trace_id,
            visible_at,
            public_key,
            timestamp=ts_or_now(body.get("timestamp") or event["timestamp"]),
            name=body.get("name"),
            tags=body.get("tags"),
            metadata=to_ch_map(body.get("metadata")),
            user_id=body.get("userId"),
            session_id=body.get("sessionId"),
            environment=body.get("environment"),
            release=body.get("release"),
            version=body.get("version"),
            input=body.get("input"),
            output=body.get("output"),
            public=body.get("public"),
        )
    elif kind == "score-create":
        score = {
            "id": body.get("id") or event["id"],
            "traceId": body.get("traceId"),
            "name": body["name"],
            "value": body["value"],
            "timestamp": event["timestamp"],
        }
        telemetry.add_score(project_id, score, visible_at)
    elif kind in OBSERVATION_TYPES:
        _apply_observation(state, kind, body, event, project_id, public_key, visible_at)


def _apply_observation(
    state: SimState,
    kind: str,
    body: dict[str, Any],
    event: dict[str, Any],
    project_id: str,
    public_key: str,
    visible_at: float,
) -> None:
    telemetry = state.telemetry
    obs_id = str(body.get("id") or event["id"])
    existing = telemetry.observations.get((project_id, obs_id))
    trace_id = str(body.get("traceId") or (existing.trace_id if existing else obs_id))
    start = ts_or_now(body.get("startTime") or event["timestamp"])
    end = ts_or_now(body["endTime"]) if body.get("endTime") else None
    obs_type = OBSERVATION_TYPES[kind] or str(body.get("type") or "SPAN").upper()
    if existing is None:
        existing = Observation(
            id=obs_id,
            trace_id=trace_id,
            project_id=project_id,
            type=obs_type,
            name=body.get("name"),
            start_time=start,
            end_time=end,
            visible_at=visible_at,
            ingestion_public_key=public_key,
        )
        telemetry.upsert_trace(project_id, trace_id, visible_at, public_key, timestamp=start)
    for attr, value in (
        ("name", body.get("name")),
        ("end_time", end),
        ("input", body.get("input")),
        ("output", body.get("output")),
        ("metadata", to_ch_map(body.get("metadata")) if body.get("metadata") is not None else None),
        ("parent_id", body.get("parentObservationId")),
        ("level", body.get("level")),
        ("model", body.get("model")),
    ):
        if value is not None:
            setattr(existing, attr, value)
    existing.visible_at = max(existing.visible_at, visible_at)
    telemetry.put_observation(existing)


# ---------------------------------------------------------------------------------------------
# POST /api/public/scores (the SDK sends a JSON array)
# ---------------------------------------------------------------------------------------------
def create_scores(state: SimState, req: Request, params: dict[str, str]) -> Response:
    scope = project_route_auth(state, req, "ingestion", allow_scores=True)
    if isinstance(scope, Response):
        return scope
    try:
        body = req.next_body()
    except BodyError:
        return invalid_json()
    items = body if isinstance(body, list) else [body]
    if body is None or not items:
        return Response(400, {"message": "Invalid request data", "error": [{"message": "Required"}]})
    good, errors = [], []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("name"), str) and "value" in item:
            good.append(item)
        else:
            errors.append({"message": "Invalid score: name and value are required"})
    assert scope.key.project_id is not None
    with state.lock:
        visible_at = state.now() + state.config.ingestion_delay_s
        for item in good:
            score = {
                "id": item.get("id") or _new_id(),
                "traceId": item.get("traceId"),
                "name": item["name"],
                "value": item["value"],
                "timestamp": item.get("timestamp"),
            }
            state.telemetry.add_score(scope.key.project_id, score, visible_at)
    if not isinstance(body, list):
        if errors:
            return Response(400, {"message": "Invalid request data", "error": errors})
        return Response(200, {"id": state.telemetry.scores[-1]["id"]})
    if errors:
        return Response(207, {"accepted": len(good), "rejected": len(errors), "errors": errors})
    return Response(202, {"message": "Accepted"})


def _new_id() -> str:
    return str(uuid.uuid4())


# ---------------------------------------------------------------------------------------------
# reads
# ---------------------------------------------------------------------------------------------
def get_observations_v2(state: SimState, req: Request, params: dict[str, str]) -> Response:
    """`GET /api/public/v2/observations`: auth → rate limit → query schema (400) → v4 check (404)
    → filter columns (400) → events rows, newest first, `limit` per page."""
    scope = project_route_auth(state, req, "public-api")
    if isinstance(scope, Response):
        return scope
    assert scope.key.project_id is not None
    try:
        filters = _query_filters(req, _v2_issues(req), events_table=True)
        with state.lock:
            if state.config.version.startswith("3."):
                return Response(404, {"message": V2_NEEDS_V4, "error": "LangfuseNotFoundError"})
            conditions = flt.merge_simple(flt.resolve(filters, EVENT_COLUMNS), _v2_simple_conditions(req))
            rows = state.telemetry.visible_events(scope.key.project_id, state.now(), state.config.dual_write_delay_s)
    except flt.FilterRejected as rejected:
        return rejected.response
    rows = flt.apply(rows, conditions)
    limit = int(flt.js_number(req.param("limit") or "50") or 0)
    offset = _decode_cursor(req.param("cursor"))
    page = rows[offset : offset + limit]
    meta: dict[str, Any] = {}
    if offset + limit < len(rows) and page:
        meta["cursor"] = base64.urlsafe_b64encode(str(offset + limit).encode()).decode()
    groups = _field_groups(req.param("fields"), OBSERVATION_FIELD_GROUPS, default=("core", "basic"), empty=("core",))
    return Response(200, {"data": [e.to_json(groups) for e in page], "meta": meta})


def _v2_issues(req: Request) -> list[dict[str, Any]]:
    """zod issues of `GetObservationsV2Query` for the parameters the simulator validates, in shape order."""
    found: list[dict[str, Any]] = []
    limit = req.param("limit")
    if limit is not None:
        found += flt.number_issues(limit, "limit", integer=False, minimum=0, min_inclusive=True, maximum=1000)
    if req.param("parseIoAsJson") == "true":
        found.append({"code": "custom", "path": ["parseIoAsJson"], "message": PARSE_IO_RETIRED})
    root = req.param("isRootObservation")
    if root is not None and root not in ("true", "false"):
        found.append(
            {
                "code": "invalid_value",
                "values": ["true", "false"],
                "path": ["isRootObservation"],
                "message": 'Invalid option: expected one of "true"|"false"',
            }
        )
    for name in ("fromStartTime", "toStartTime"):
        found += flt.iso_datetime_issue(req.param(name), name)
    return found


def _query_filters(req: Request, before: list[dict[str, Any]], *, events_table: bool) -> list[dict[str, Any]]:
    """The parsed `filter` conditions; raises the server's 400 for bad JSON (which wins over every
    other problem: it is thrown mid-parse) or for any zod issue (all of them, in shape order)."""
    parsed = flt.parse_filter_json(req.param("filter"))
    found = before + ([] if parsed is None else flt.issues(parsed, events_table=events_table))
    if found:
        raise flt.zod_error(found)
    return [] if parsed is None else list(parsed)


def _field_groups(
    raw: str | None, known: tuple[str, ...], *, default: tuple[str, ...], empty: tuple[str, ...]
) -> tuple[str, ...]:
    """`commaSeparatedEnumArray(..., {unknownValues: "filter"})`: unknown names are dropped; no
    parameter gives `default`, only unknown names give `empty` (traces: all groups, v2: core)."""
    if not raw:
        return default
    chosen = tuple(g for g in (item.strip() for item in raw.split(",")) if g in known)
    return ("core", *chosen) if chosen else empty


def _decode_cursor(raw: str | None) -> int:
    if not raw:
        return 0
    try:
        return max(0, int(base64.urlsafe_b64decode(raw.encode()).decode()))
    except ValueError:
        return 0


def _listed(req: Request, name: str) -> list[str] | None:
    """A repeatable parameter: one value is split on commas (the server's `value.split(",")`)."""
    values = req.query.get(name)
    if not values:
        return None
    return values[0].split(",") if len(values) == 1 else values


def _equals(field: str, get: Callable[[Any], Any], wanted: str) -> flt.Condition:
    return flt.Condition(field, lambda row: get(row) == wanted)


def _v2_simple_conditions(req: Request) -> list[flt.Condition]:
    """`PUBLIC_API_EVENTS_COLUMN_MAPPING`: the simple query parameters as conditions."""
    out: list[flt.Condition] = []
    simple: list[tuple[str, str, Callable[[Event], Any]]] = [
        ("userId", "user_id", lambda e: e.user_id),
        ("sessionId", "session_id", lambda e: e.session_id),
        ("traceId", "trace_id", lambda e: e.trace_id),
        ("name", "name", lambda e: e.name),
        ("level", "level", lambda e: e.level),
        ("type", "type", lambda e: e.type),
        ("parentObservationId", "parent_span_id", lambda e: e.parent_id or ""),
        ("version", "version", lambda e: e.version),
    ]
    for param, field, get in simple:
        wanted = req.param(param)
        if wanted is not None:
            out.append(_equals(field, get, wanted))
    root = req.param("isRootObservation")
    if root in ("true", "false"):
        out.append(_equals("is_root", lambda e: e.is_root, root == "true"))  # type: ignore[arg-type]
    out += _time_conditions(req, "fromStartTime", "toStartTime", "start_time", lambda e: e.start_time)
    environments = _listed(req, "environment")
    if environments is not None:
        out.append(flt.Condition("environment", lambda e: e.environment in environments))
    return out


def _time_conditions(
    req: Request, from_param: str, to_param: str, field: str, get: Callable[[Any], float]
) -> list[flt.Condition]:
    out: list[flt.Condition] = []
    start, end = req.param(from_param), req.param(to_param)
    if start is not None and (bound := flt.parse_iso(start)) is not None:
        out.append(flt.Condition(field, lambda row: round(get(row), 3) >= round(bound, 3)))
    if end is not None and (limit := flt.parse_iso(end)) is not None:
        out.append(flt.Condition(field, lambda row: round(get(row), 3) < round(limit, 3)))
    return out


def get_trace(state: SimState, req: Request, params: dict[str, str]) -> Response:
    scope = project_route_auth(state, req, "public-api-legacy", route="GET /api/public/traces/{traceId}")
    if isinstance(scope, Response):
        return scope
    trace_id = params["trace_id"]
    assert scope.key.project_id is not None
    with state.lock:
        if state.config.events_only:
            return Response(404, {"message": EVENTS_ONLY_NOT_AVAILABLE})
        now = state.now()
        trace = state.telemetry.visible_trace(scope.key.project_id, trace_id, now)
        if trace is None:
            return Response(
                404,
                {
                    "message": f"Trace {trace_id} not found within authorized project",
                    "error": "LangfuseNotFoundError",
                },
            )
        observations = [
            o for o in state.telemetry.visible_observations(scope.key.project_id, now) if o.trace_id == trace_id
        ]
        scores = state.telemetry.visible_scores(scope.key.project_id, trace_id, now)
        return Response(200, trace.to_json(observations, scores))


def list_traces(state: SimState, req: Request, params: dict[str, str]) -> Response:
    """`GET /api/public/traces`: events_only 404 (before auth) → auth → rate limit → query schema
    (400) → filter columns (400) → traces, newest first, one page."""
    with state.lock:
        if state.config.events_only:
            return Response(404, {"message": EVENTS_ONLY_NOT_AVAILABLE})
    scope = project_route_auth(state, req, "public-api-legacy", route="GET /api/public/traces")
    if isinstance(scope, Response):
        return scope
    assert scope.key.project_id is not None
    try:
        filters = _query_filters(req, _traces_issues(req), events_table=False)
        conditions = flt.merge_simple(flt.resolve(filters, TRACE_COLUMNS), _traces_simple_conditions(req))
    except flt.FilterRejected as rejected:
        return rejected.response
    page = int(flt.js_number(req.param("page") or "1") or 1)
    limit = int(flt.js_number(req.param("limit") or "50") or 50)
    groups = _field_groups(
        req.param("fields"), TRACE_FIELD_GROUPS, default=TRACE_FIELD_GROUPS, empty=TRACE_FIELD_GROUPS
    )
    with state.lock:
        now = state.now()
        traces = flt.apply(state.telemetry.visible_traces(scope.key.project_id, now), conditions)
        data = [_trace_list_item(state, trace, groups, now) for trace in traces[(page - 1) * limit : page * limit]]
    total = len(traces)
    meta = {"page": page, "limit": limit, "totalItems": total, "totalPages": (total + limit - 1) // limit}
    return Response(200, {"data": data, "meta": meta})


def _trace_list_item(state: SimState, trace: Trace, groups: tuple[str, ...], now: float) -> dict[str, Any]:
    """A `TraceWithDetails`: observation and score ids, not objects."""
    item = trace.to_json([], [], groups)
    if "observations" in groups:
        item["observations"] = [
            o.id for o in state.telemetry.visible_observations(trace.project_id, now) if o.trace_id == trace.id
        ]
    if "scores" in groups:
        item["scores"] = [s["id"] for s in state.telemetry.visible_scores(trace.project_id, trace.id, now)]
    return item


def _traces_issues(req: Request) -> list[dict[str, Any]]:
    """zod issues of `GetTracesV1Query` for page, limit and the timestamps, in shape order."""
    found: list[dict[str, Any]] = []
    page, limit = req.param("page"), req.param("limit")
    if page:
        found += flt.number_issues(page, "page", integer=True, minimum=0, min_inclusive=False, maximum=float("inf"))
    if limit:
        found += flt.number_issues(limit, "limit", integer=True, minimum=1, min_inclusive=True, maximum=100)
    for name in ("fromTimestamp", "toTimestamp"):
        found += flt.iso_datetime_issue(req.param(name), name)
    return found


def _traces_simple_conditions(req: Request) -> list[flt.Condition]:
    """`createPublicApiTracesColumnMapping`: the simple query parameters as conditions."""
    out: list[flt.Condition] = []
    simple: list[tuple[str, str, Callable[[Trace], Any]]] = [
        ("userId", "user_id", lambda t: t.user_id),
        ("name", "name", lambda t: t.name),
        ("sessionId", "session_id", lambda t: t.session_id),
        ("version", "version", lambda t: t.version),
        ("release", "release", lambda t: t.release),
    ]
    for param, field, get in simple:
        wanted = req.param(param)
        if wanted is not None:
            out.append(_equals(field, get, wanted))
    environments = _listed(req, "environment")
    if environments is not None:
        out.append(flt.Condition("environment", lambda t: t.environment in environments))
    tags = _listed(req, "tags")
    if tags is not None:
        out.append(flt.Condition("tags", lambda t: all(tag in t.tags for tag in tags)))
    out += _time_conditions(req, "fromTimestamp", "toTimestamp", "timestamp", lambda t: t.timestamp)
    return out


# ---------------------------------------------------------------------------------------------
# health
# ---------------------------------------------------------------------------------------------
def health(state: SimState, req: Request, params: dict[str, str]) -> Response:
    with state.lock:
        mode, version = state.config.health, state.config.version
        last_event = state.telemetry.last_event_at
    if mode == "fail":
        return Response(503, {"status": "Health check failed", "version": version})
    if req.param("failIfDatabaseUnavailable") == "true" and mode == "db_down":
        return Response(503, {"status": "Database not available", "version": version})
    if req.param("failIfNoRecentEvents") == "true" and (last_event is None or time.time() - last_event > 180):
        return Response(503, {"status": "No recent events", "version": version})
    return Response(200, {"status": "OK", "version": version})


def ready(state: SimState, req: Request, params: dict[str, str]) -> Response:
    with state.lock:
        mode, version = state.config.health, state.config.version
    if mode == "fail":
        return Response(503, {"status": "Health check failed", "version": version})
    return Response(200, {"status": "OK", "version": version})
