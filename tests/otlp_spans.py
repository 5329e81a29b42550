"""Raw OTLP/HTTP JSON exports for tests (no SDK), and waiting on the simulator's delayed reads."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar

from tests.fixtures.langfuse_sim import SimHandle

OTEL_PATH = "/api/public/otel/v1/traces"
V4_HEADER = {"x-langfuse-ingestion-version": "4"}
T = TypeVar("T")


def attr(key: str, value: Any) -> dict[str, Any]:
    """One OTLP JSON `KeyValue` (string, bool, int or a list of strings)."""
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, list):
        return {"key": key, "value": {"arrayValue": {"values": [{"stringValue": v} for v in value]}}}
    return {"key": key, "value": {"stringValue": value}}


def new_ids() -> tuple[str, str]:
    return secrets.token_hex(16), secrets.token_hex(8)


def export(
    *,
    trace_id: str | None = None,
    span_id: str | None = None,
    name: str = "work",
    attributes: dict[str, Any] | None = None,
    resource: dict[str, Any] | None = None,
    scope_name: str = "my-exporter",
    scope_version: str | None = None,
    scope_attributes: dict[str, Any] | None = None,
    start_ns: int | None = None,
    parent_span_id: str | None = None,
) -> dict[str, Any]:
    """An `ExportTraceServiceRequest` with one span; ids are random unless given."""
    new_trace, new_span = new_ids()
    start = start_ns if start_ns is not None else time.time_ns()
    span: dict[str, Any] = {
        "traceId": trace_id or new_trace,
        "spanId": span_id or new_span,
        "name": name,
        "kind": 1,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(start + 1_000_000),
        "attributes": [attr(k, v) for k, v in (attributes or {}).items()],
        "status": {},
    }
    if parent_span_id:
        span["parentSpanId"] = parent_span_id
    scope: dict[str, Any] = {"name": scope_name}
    if scope_version:
        scope["version"] = scope_version
    if scope_attributes:
        scope["attributes"] = [attr(k, v) for k, v in scope_attributes.items()]
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [attr(k, v) for k, v in (resource or {}).items()]},
                "scopeSpans": [{"scope": scope, "spans": [span]}],
            }
        ]
    }


def trace_id_of(body: dict[str, Any]) -> str:
    return str(body["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"])


def send(sim: SimHandle, body: dict[str, Any], auth: tuple[str, str], headers: dict[str, str] | None = None) -> str:
    """POST the export; returns its trace id."""
    response = sim.http.post(OTEL_PATH, json=body, auth=auth, headers=headers or {})
    assert response.status_code == 200, response.text
    return trace_id_of(body)


def wait_for(probe: Callable[[], T | None], what: str, timeout_s: float = 10.0) -> T:
    """Poll `probe` until it returns something truthy, or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)
