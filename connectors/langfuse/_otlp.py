"""The canary span as a minimal OTLP/HTTP JSON export request."""

from __future__ import annotations

import re
import secrets
from typing import Any

_TRACE_ID = re.compile(r"[0-9a-f]{32}")
SERVICE_NAME = "langfuse-key-rotation"


def new_trace_id() -> str:
    """32 lowercase hex characters, never all zero (invalid in OpenTelemetry)."""
    while True:
        value = secrets.token_hex(16)
        if value.strip("0"):
            return value


def new_span_id() -> str:
    while True:
        value = secrets.token_hex(8)
        if value.strip("0"):
            return value


def normalise_trace_id(trace_id: str) -> str:
    """Accept 32 hex characters (any case, dashes allowed as in a UUID); return them lowercase."""
    value = trace_id.replace("-", "").lower()
    if not _TRACE_ID.fullmatch(value) or not value.strip("0"):
        raise ValueError("trace_id must be 32 hex characters (an OpenTelemetry trace id), not all zero")
    return value


def _string_attribute(key: str, value: str) -> dict[str, Any]:
    return {"key": key, "value": {"stringValue": value}}


def canary_request(
    trace_id: str,
    span_id: str,
    name: str,
    attributes: dict[str, str],
    end_unix_ns: int,
) -> dict[str, Any]:
    """``ExportTraceServiceRequest`` (OTLP JSON) with one 1 ms internal span named ``name``."""
    span_attributes = [_string_attribute("langfuse.trace.name", name)]
    span_attributes += [
        _string_attribute(key, value) for key, value in attributes.items() if key != "langfuse.trace.name"
    ]
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [_string_attribute("service.name", SERVICE_NAME)]},
                "scopeSpans": [
                    {
                        "scope": {"name": SERVICE_NAME},
                        "spans": [
                            {
                                "traceId": trace_id,
                                "spanId": span_id,
                                "name": name,
                                "kind": 1,
                                "startTimeUnixNano": str(end_unix_ns - 1_000_000),
                                "endTimeUnixNano": str(end_unix_ns),
                                "attributes": span_attributes,
                                "status": {},
                            }
                        ],
                    }
                ],
            }
        ]
    }
