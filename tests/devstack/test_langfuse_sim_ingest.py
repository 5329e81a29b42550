"""Langfuse simulator: OTel and legacy ingestion, scores, read-back and visibility delays.

Visibility delays run on the simulator's clock: a test moves it past the delay
(``past_the_visibility_delays``) instead of sleeping and hoping the machine kept up.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.fixtures.langfuse_sim import SimHandle

OTEL = "/api/public/otel/v1/traces"
PROTO = {"Content-Type": "application/x-protobuf"}


def past_the_visibility_delays(sim: SimHandle) -> None:
    """Move the simulator's clock past the fixture's visibility delays (0.1 s OTel, 0.2 s ingestion)."""
    sim.control.advance_clock(1)


def _otlp_proto(spans: list[tuple[bytes, bytes]], name: str = "rotation-canary") -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    attr = resource_spans.resource.attributes.add()
    attr.key, attr.value.string_value = "service.name", "key-rotator"
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "tests"
    now = time.time_ns()
    for trace_id, span_id in spans:
        span = scope_spans.spans.add()
        span.trace_id, span.span_id, span.name = trace_id, span_id, name
        span.start_time_unix_nano, span.end_time_unix_nano = now, now + 1_000_000
        trace_name = span.attributes.add()
        trace_name.key, trace_name.value.string_value = "langfuse.trace.name", name
    return bytes(request.SerializeToString())


def _otlp_json(trace_id: str, span_id: str) -> dict[str, Any]:
    span = {
        "traceId": trace_id,
        "spanId": span_id,
        "name": "rotation-canary",
        "kind": 1,
        "startTimeUnixNano": "1755849600000000000",
        "endTimeUnixNano": "1755849601000000000",
        "attributes": [{"key": "langfuse.trace.name", "value": {"stringValue": "rotation-canary"}}],
        "status": {},
    }
    return {"resourceSpans": [{"scopeSpans": [{"scope": {"name": "key-rotator"}, "spans": [span]}]}]}


def _observations(sim: SimHandle, trace_id: str, index: int = 0) -> list[dict[str, Any]]:
    response = sim.http.get("/api/public/v2/observations", params={"traceId": trace_id}, auth=sim.project_auth(index))
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def _event(kind: str, body: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    return {"id": event_id or os.urandom(8).hex(), "timestamp": "2026-08-22T08:00:00.000Z", "type": kind, "body": body}


def _ingest(sim: SimHandle, batch: list[Any], **kwargs: Any) -> Any:
    kwargs.setdefault("auth", sim.project_auth())
    return sim.http.post("/api/public/ingestion", json={"batch": batch}, **kwargs)


# -- OTel ---------------------------------------------------------------------------------------
def test_otel_protobuf_gzip_is_200_empty_object_and_readable(sim: SimHandle) -> None:
    trace_id, span_id = os.urandom(16), os.urandom(8)
    headers = {**PROTO, "Content-Encoding": "gzip", "x-langfuse-ingestion-version": "4"}
    body = gzip.compress(_otlp_proto([(trace_id, span_id)]))
    response = sim.http.post(OTEL, content=body, headers=headers, auth=sim.project_auth())
    assert (response.status_code, response.json()) == (200, {})
    past_the_visibility_delays(sim)
    (observation,) = _observations(sim, trace_id.hex())
    assert (observation["id"], observation["traceId"]) == (span_id.hex(), trace_id.hex())
    assert observation["projectId"] == sim.projects[0].id


def test_otel_json_plain_is_readable(sim: SimHandle) -> None:
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    response = sim.http.post(OTEL, json=_otlp_json(trace_id, span_id), auth=sim.project_auth())
    assert (response.status_code, response.json()) == (200, {})
    past_the_visibility_delays(sim)
    assert [o["id"] for o in _observations(sim, trace_id)] == [span_id]


def test_otel_trace_is_not_readable_before_the_visibility_delay(sim: SimHandle) -> None:
    sim.configure(otel_delay_s=5)
    trace_id = os.urandom(16).hex()
    sim.http.post(OTEL, json=_otlp_json(trace_id, os.urandom(8).hex()), auth=sim.project_auth())
    assert _observations(sim, trace_id) == []
    sim.control.advance_clock(4.5)
    assert _observations(sim, trace_id) == []
    sim.control.advance_clock(1)
    assert len(_observations(sim, trace_id)) == 1


def test_otel_observations_are_scoped_to_the_key_project(sim: SimHandle) -> None:
    trace_id = os.urandom(16).hex()
    sim.http.post(OTEL, json=_otlp_json(trace_id, os.urandom(8).hex()), auth=sim.project_auth(0))
    past_the_visibility_delays(sim)
    assert len(_observations(sim, trace_id, index=0)) == 1, "visible in its own project"
    assert _observations(sim, trace_id, index=1) == []


def test_otel_trace_is_readable_via_get_trace(sim: SimHandle) -> None:
    trace_id = os.urandom(16).hex()
    sim.http.post(OTEL, json=_otlp_json(trace_id, os.urandom(8).hex()), auth=sim.project_auth())
    past_the_visibility_delays(sim)
    response = sim.http.get(f"/api/public/traces/{trace_id}", auth=sim.project_auth())
    assert response.status_code == 200
    assert (response.json()["id"], response.json()["name"]) == (trace_id, "rotation-canary")


def test_otel_unknown_content_type_is_400(sim: SimHandle) -> None:
    response = sim.http.post(OTEL, content=b"x", headers={"Content-Type": "text/plain"}, auth=sim.project_auth())
    assert (response.status_code, response.json()) == (400, {"error": "Invalid content type"})


def test_otel_invalid_span_id_rejects_the_whole_export(sim: SimHandle) -> None:
    good, bad = (os.urandom(16), os.urandom(8)), (os.urandom(16), b"\x01\x02")
    response = sim.http.post(OTEL, content=_otlp_proto([good, bad]), headers=PROTO, auth=sim.project_auth())
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.startswith("Invalid OTLP trace export: 1 of 2 span(s) have a missing or malformed traceId/spanId")
    assert "The entire export was rejected and no spans were ingested." in error
    past_the_visibility_delays(sim)
    assert _observations(sim, good[0].hex()) == []


def test_otel_missing_trace_id_in_json_is_400(sim: SimHandle) -> None:
    payload = _otlp_json("", os.urandom(8).hex())
    response = sim.http.post(OTEL, json=payload, auth=sim.project_auth())
    assert response.status_code == 400
    assert "(missing_trace_id)" in response.json()["error"]


def test_otel_ingestion_version_above_4_is_400(sim: SimHandle) -> None:
    headers = {**PROTO, "x-langfuse-ingestion-version": "5"}
    body = _otlp_proto([(os.urandom(16), os.urandom(8))])
    response = sim.http.post(OTEL, content=body, headers=headers, auth=sim.project_auth())
    assert (response.status_code, response.json()) == (
        400,
        {"error": 'Unsupported x-langfuse-ingestion-version: "5". Maximum supported: "4".'},
    )


def test_otel_corrupt_gzip_is_400(sim: SimHandle) -> None:
    headers = {**PROTO, "Content-Encoding": "gzip"}
    response = sim.http.post(OTEL, content=b"not gzip", headers=headers, auth=sim.project_auth())
    assert (response.status_code, response.json()) == (400, {"error": "Failed to decompress request body"})


def test_otel_empty_export_is_200(sim: SimHandle) -> None:
    response = sim.http.post(OTEL, json={"resourceSpans": []}, auth=sim.project_auth())
    assert (response.status_code, response.json()) == (200, {})


def test_otel_get_is_405(sim: SimHandle) -> None:
    response = sim.http.get(OTEL, auth=sim.project_auth())
    assert (response.status_code, response.json()) == (
        405,
        {"message": "Method not allowed", "error": "MethodNotAllowedError"},
    )


def test_v2_observations_on_a_v3_server_is_404(sim: SimHandle) -> None:
    sim.configure(version="3.225.4")
    response = sim.http.get("/api/public/v2/observations", auth=sim.project_auth())
    assert (response.status_code, response.json()) == (
        404,
        {
            "message": "The observations v2 API is only available in a Langfuse v4 write mode. "
            "Learn more at: https://langfuse.com/docs/v4",
            "error": "LangfuseNotFoundError",
        },
    )


# -- legacy /ingestion ---------------------------------------------------------------------------
def test_ingestion_is_207_with_per_event_successes_and_errors(sim: SimHandle) -> None:
    good = _event("trace-create", {"id": "t-1", "name": "canary"}, "evt-good")
    bad = {"id": "evt-bad", "type": "trace-create", "body": {}}  # no timestamp
    response = _ingest(sim, [good, bad])
    assert response.status_code == 207
    body = response.json()
    assert body["successes"] == [{"id": "evt-good", "status": 201}]
    (error,) = body["errors"]
    assert (error["id"], error["status"], error["message"]) == ("evt-bad", 400, "Invalid request data")


def test_ingestion_trace_is_readable_only_after_the_ingestion_delay(sim: SimHandle) -> None:
    sim.configure(ingestion_delay_s=5)
    _ingest(sim, [_event("trace-create", {"id": "trace-delayed", "name": "canary"})])
    url = "/api/public/traces/trace-delayed"
    early = sim.http.get(url, auth=sim.project_auth())
    assert (early.status_code, early.json()) == (
        404,
        {"message": "Trace trace-delayed not found within authorized project", "error": "LangfuseNotFoundError"},
    )
    sim.control.advance_clock(5.5)
    assert sim.http.get(url, auth=sim.project_auth()).json()["name"] == "canary"


def test_ingestion_events_only_rejects_non_score_events_with_exact_string(sim: SimHandle) -> None:
    sim.configure(events_only=True)
    response = _ingest(sim, [_event("trace-create", {"id": "t"}, "evt-1")])
    assert response.status_code == 207
    (error,) = response.json()["errors"]
    assert (error["id"], error["status"], error["message"]) == ("evt-1", 400, "Event type not accepted")
    assert error["error"].startswith(
        'Event type "trace-create" is not accepted by /api/public/ingestion when '
        "LANGFUSE_MIGRATION_V4_WRITE_MODE is events_only."
    )


def test_ingestion_events_only_still_accepts_scores(sim: SimHandle) -> None:
    sim.configure(events_only=True)
    response = _ingest(sim, [_event("score-create", {"traceId": "t", "name": "ok", "value": 1}, "evt-s")])
    assert response.json() == {"successes": [{"id": "evt-s", "status": 201}], "errors": []}


def test_get_trace_in_events_only_mode_is_404_with_v4_message(sim: SimHandle) -> None:
    sim.configure(events_only=True)
    response = sim.http.get("/api/public/traces/anything", auth=sim.project_auth())
    assert response.status_code == 404
    assert response.json()["message"].startswith(
        "This endpoint is not available on deployments running in Langfuse v4 events_only mode."
    )


def test_bearer_public_key_may_only_send_score_events(sim: SimHandle) -> None:
    batch = [
        _event("score-create", {"traceId": "t", "name": "ok", "value": 1}, "evt-score"),
        _event("trace-create", {"id": "t"}, "evt-trace"),
    ]
    headers = {"Authorization": f"Bearer {sim.projects[0].public_key}"}
    response = sim.http.post("/api/public/ingestion", json={"batch": batch}, headers=headers)
    body = response.json()
    assert body["successes"] == [{"id": "evt-score", "status": 201}]
    assert body["errors"] == [
        {"id": "evt-trace", "status": 401, "message": "Authentication error", "error": "Access Scope Denied"}
    ]


def test_ingestion_without_batch_array_is_400(sim: SimHandle) -> None:
    response = sim.http.post("/api/public/ingestion", json={"events": []}, auth=sim.project_auth())
    assert (response.status_code, response.json()["message"]) == (400, "Invalid request data")


def test_ingestion_get_is_405_with_error_name(sim: SimHandle) -> None:
    response = sim.http.get("/api/public/ingestion", auth=sim.project_auth())
    assert (response.status_code, response.json()) == (
        405,
        {"error": "MethodNotAllowedError", "message": "Method not allowed"},
    )


def test_scores_json_array_is_202_accepted(sim: SimHandle) -> None:
    scores = [{"id": "s-1", "traceId": "t", "name": "rotation_ok", "value": 1.0, "timestamp": "2026-08-22T08:00:00Z"}]
    response = sim.http.post(
        "/api/public/scores",
        content=json.dumps(scores),
        auth=sim.project_auth(),
        headers={"Content-Type": "application/json"},
    )
    assert (response.status_code, response.json()) == (202, {"message": "Accepted"})
