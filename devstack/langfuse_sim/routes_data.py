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
from datetime import datetime
from typing import Any

from devstack.langfuse_sim.state import Scope, SimState
from devstack.langfuse_sim.telemetry import (
    Observation,
    OtlpError,
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
    with state.lock:
        visible_at = state.now() + state.config.otel_delay_s
        store_spans(state.telemetry, spans, scope.key.project_id, scope.key.public_key, visible_at)
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
            metadata=body.get("metadata"),
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
        )
        telemetry.upsert_trace(project_id, trace_id, visible_at, public_key, timestamp=start)
    for attr, value in (
        ("name", body.get("name")),
        ("end_time", end),
        ("input", body.get("input")),
        ("output", body.get("output")),
        ("metadata", body.get("metadata")),
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
    scope = project_route_auth(state, req, "public-api")
    if isinstance(scope, Response):
        return scope
    with state.lock:
        if state.config.version.startswith("3."):
            return Response(404, {"message": V2_NEEDS_V4, "error": "LangfuseNotFoundError"})
        assert scope.key.project_id is not None
        rows = state.telemetry.visible_observations(scope.key.project_id, state.now())
    filters = {
        "traceId": "trace_id",
        "name": "name",
        "type": "type",
        "parentObservationId": "parent_id",
        "userId": "user_id",
        "sessionId": "session_id",
        "level": "level",
        "version": "version",
    }
    for param, attr in filters.items():
        wanted = req.param(param)
        if wanted is not None:
            rows = [o for o in rows if getattr(o, attr) == wanted]
    limit_raw = req.param("limit") or "50"
    if not limit_raw.isdigit() or not 1 <= int(limit_raw) <= 1000:
        return Response(
            400,
            {
                "message": "Invalid request data",
                "error": [{"path": ["limit"], "message": "limit must be between 1 and 1000"}],
            },
        )
    offset = _decode_cursor(req.param("cursor"))
    limit = int(limit_raw)
    page = rows[offset : offset + limit]
    meta: dict[str, Any] = {}
    if offset + limit < len(rows):
        meta["cursor"] = base64.urlsafe_b64encode(str(offset + limit).encode()).decode()
    return Response(200, {"data": [o.to_json() for o in page], "meta": meta})


def _decode_cursor(raw: str | None) -> int:
    if not raw:
        return 0
    try:
        return max(0, int(base64.urlsafe_b64decode(raw.encode()).decode()))
    except ValueError:
        return 0


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
    scope = project_route_auth(state, req, "public-api-legacy", route="GET /api/public/traces")
    if isinstance(scope, Response):
        return scope
    assert scope.key.project_id is not None
    page_raw, limit_raw = req.param("page") or "1", req.param("limit") or "50"
    if not page_raw.isdigit() or not limit_raw.isdigit() or int(page_raw) < 1 or not 1 <= int(limit_raw) <= 100:
        return Response(400, {"message": "Invalid request data", "error": [{"message": "Invalid page or limit"}]})
    page, limit = int(page_raw), int(limit_raw)
    with state.lock:
        if state.config.events_only:
            return Response(404, {"message": EVENTS_ONLY_NOT_AVAILABLE})
        now = state.now()
        traces = state.telemetry.visible_traces(scope.key.project_id, now)
        for param, attr in (("name", "name"), ("userId", "user_id"), ("sessionId", "session_id")):
            wanted = req.param(param)
            if wanted is not None:
                traces = [t for t in traces if getattr(t, attr) == wanted]
        tags = req.query.get("tags", [])
        traces = [t for t in traces if all(tag in t.tags for tag in tags)]
        chunk = traces[(page - 1) * limit : page * limit]
        data = []
        for trace in chunk:
            full = trace.to_json([], [])
            full["observations"], full["scores"] = [], []
            data.append(full)
    total = len(traces)
    meta = {"page": page, "limit": limit, "totalItems": total, "totalPages": (total + limit - 1) // limit}
    return Response(200, {"data": data, "meta": meta})


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
