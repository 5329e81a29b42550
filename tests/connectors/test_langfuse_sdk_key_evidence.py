"""How a service shows which public key it sends with, proven with the real `langfuse` SDK (5.x)
and with raw OTLP against the simulator (issue 21, item 4).

1. Nothing changed in the service: the SDK names its key in the instrumentation scope; the server
   keeps it (legacy tables: metadata `scope` as JSON text; v4 events: `scope.attributes.public_key`),
   and every v4 events row also records the key that authenticated the export (`ingestionApiKey`).
2. `propagate_attributes(metadata={"langfuse_public_key": pk})` around the work: the SDK 5
   JSON-encodes the value, and Langfuse 4.16 stores it so (`"pk-lf-…"`, quotes included): found by
   `contains` on the metadata key, not by `=` with the bare key.
3. No code, `OTEL_RESOURCE_ATTRIBUTES=langfuse.trace.metadata.langfuse_public_key=<pk>`: the SDK
   carries resource attributes through; the server maps them to trace metadata on the legacy path
   (traces list) only, not on the v4 direct path (v2 observations).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from langfuse import Langfuse, propagate_attributes
from langfuse.api import LangfuseAPI
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from pydantic import SecretStr

from connectors.keypair import KeyPair
from connectors.langfuse import KeySource, KeySpec, LangfuseProjectClient, TraceMatch
from tests.fixtures.langfuse_sim import REPO_ROOT, SimHandle
from tests.otlp_spans import OTEL_PATH, new_ids, wait_for

TRACES = "/api/public/traces"
V2 = "/api/public/v2/observations"


@pytest.fixture
def key(sim: SimHandle) -> tuple[str, str]:
    """A fresh project key pair (the SDK keeps one client per public key per process)."""
    org = LangfuseAPI(base_url=sim.url, username=sim.org_public_key, password=sim.org_secret_key, timeout=10)
    public_key, secret_key = f"pk-lf-{uuid.uuid4()}", f"sk-lf-{uuid.uuid4()}"
    org.projects.create_api_key(sim.projects[0].id, public_key=public_key, secret_key=secret_key)
    return public_key, secret_key


@pytest.fixture
def other_key(sim: SimHandle) -> Iterator[str]:
    yield f"pk-lf-{uuid.uuid4()}"


def _meta(key: str, operator: str, value: str) -> dict[str, str]:
    return {"type": "stringObject", "column": "metadata", "key": key, "operator": operator, "value": value}


def _found(sim: SimHandle, path: str, condition: dict[str, Any], auth: tuple[str, str]) -> list[str]:
    response = sim.http.get(path, params={"filter": json.dumps([condition]), "fields": "core"}, auth=auth)
    assert response.status_code == 200, response.text
    return [row["traceId" if path == V2 else "id"] for row in response.json()["data"]]


def _send_with_sdk(sim: SimHandle, key: tuple[str, str], metadata: dict[str, str] | None = None) -> str:
    client = Langfuse(public_key=key[0], secret_key=key[1], base_url=sim.url, tracer_provider=TracerProvider())
    try:
        if metadata is None:
            with client.start_as_current_observation(name="serve") as span:
                trace_id = span.trace_id
        else:
            with propagate_attributes(metadata=metadata), client.start_as_current_observation(name="serve") as span:
                trace_id = span.trace_id
        client.flush()
    finally:
        client.shutdown()
    return str(trace_id)


def _wait(sim: SimHandle, path: str, condition: dict[str, Any], auth: tuple[str, str], trace_id: str) -> None:
    wait_for(lambda: trace_id in _found(sim, path, condition, auth), f"{trace_id} via {path}")


# --- 1. nothing changed in the service ----------------------------------------------------------


def test_sdk_trace_is_found_by_its_key_in_the_scope_on_the_traces_list(
    sim: SimHandle, key: tuple[str, str], other_key: str
) -> None:
    trace = _send_with_sdk(sim, key)
    mine = _meta("scope", "contains", f'"public_key":"{key[0]}"')
    _wait(sim, TRACES, mine, key, trace)
    assert _found(sim, TRACES, _meta("scope", "contains", f'"public_key":"{other_key}"'), key) == []


def test_sdk_trace_is_found_by_its_scope_key_on_v2_observations(
    sim: SimHandle, key: tuple[str, str], other_key: str
) -> None:
    trace = _send_with_sdk(sim, key)
    _wait(sim, V2, _meta("scope.attributes.public_key", "=", key[0]), key, trace)
    assert _found(sim, V2, _meta("scope.attributes.public_key", "=", other_key), key) == []


def test_sdk_trace_on_v2_is_not_found_by_contains_on_scope(sim: SimHandle, key: tuple[str, str]) -> None:
    """The SDK sends `x-langfuse-ingestion-version: 4`: the direct path flattens `scope`."""
    trace = _send_with_sdk(sim, key)
    _wait(sim, V2, _meta("scope.attributes.public_key", "=", key[0]), key, trace)
    assert _found(sim, V2, _meta("scope", "contains", key[0]), key) == []


def test_sdk_trace_is_found_by_the_key_that_authenticated_it(
    sim: SimHandle, key: tuple[str, str], other_key: str
) -> None:
    trace = _send_with_sdk(sim, key)
    by_key = {"type": "stringOptions", "column": "ingestionApiKey", "operator": "any of", "value": [key[0]]}
    _wait(sim, V2, by_key, key, trace)
    assert _found(sim, V2, {**by_key, "value": [other_key]}, key) == []


# --- 2. one line in the service: propagate_attributes -------------------------------------------


def test_propagated_metadata_stamp_is_found_by_contains_on_v2_and_on_the_traces_list(
    sim: SimHandle, key: tuple[str, str], other_key: str
) -> None:
    trace = _send_with_sdk(sim, key, metadata={"langfuse_public_key": key[0]})
    stamp = _meta("langfuse_public_key", "contains", key[0])
    _wait(sim, V2, stamp, key, trace)
    _wait(sim, TRACES, stamp, key, trace)
    assert _found(sim, V2, _meta("langfuse_public_key", "contains", other_key), key) == []


def test_propagated_metadata_stamp_is_stored_json_encoded(sim: SimHandle, key: tuple[str, str]) -> None:
    trace = _send_with_sdk(sim, key, metadata={"langfuse_public_key": key[0]})
    _wait(sim, V2, _meta("langfuse_public_key", "=", f'"{key[0]}"'), key, trace)
    assert _found(sim, V2, _meta("langfuse_public_key", "=", key[0]), key) == []


# --- 3. no code: OTEL_RESOURCE_ATTRIBUTES ---------------------------------------------------------

_SERVICE = """
import sys
from langfuse import Langfuse
client = Langfuse()
with client.start_as_current_observation(name="serve") as span:
    trace_id = span.trace_id
client.flush()
client.shutdown()
print(trace_id)
"""


def _service_with_resource_stamp(sim: SimHandle, key: tuple[str, str]) -> str:
    """A separate process, so the SDK reads its environment at start as a deployed service does."""
    env = {
        **os.environ,
        "LANGFUSE_PUBLIC_KEY": key[0],
        "LANGFUSE_SECRET_KEY": key[1],
        "LANGFUSE_BASE_URL": sim.url,
        "OTEL_RESOURCE_ATTRIBUTES": f"langfuse.trace.metadata.langfuse_public_key={key[0]}",
    }
    done = subprocess.run(
        [sys.executable, "-c", _SERVICE], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_resource_attribute_stamp_is_found_on_the_traces_list(sim: SimHandle, key: tuple[str, str]) -> None:
    trace = _service_with_resource_stamp(sim, key)
    _wait(sim, TRACES, _meta("langfuse_public_key", "=", key[0]), key, trace)


def test_resource_attribute_stamp_is_not_a_metadata_key_on_v2(sim: SimHandle, key: tuple[str, str]) -> None:
    trace = _service_with_resource_stamp(sim, key)
    nested = _meta("resourceAttributes.langfuse.trace.metadata.langfuse_public_key", "=", key[0])
    _wait(sim, V2, nested, key, trace)
    assert _found(sim, V2, _meta("langfuse_public_key", "=", key[0]), key) == []


# --- raw OTLP protobuf, no SDK ----------------------------------------------------------------------


def _protobuf_export(scope_key: str | None, resource_key: str | None) -> tuple[str, bytes]:
    trace_hex, span_hex = new_ids()
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    if resource_key is not None:
        stamp = resource_spans.resource.attributes.add()
        stamp.key, stamp.value.string_value = "langfuse.trace.metadata.langfuse_public_key", resource_key
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name, scope_spans.scope.version = "langfuse-sdk", "3.0.0"
    if scope_key is not None:
        scope_attr = scope_spans.scope.attributes.add()
        scope_attr.key, scope_attr.value.string_value = "public_key", scope_key
    span = scope_spans.spans.add()
    span.trace_id, span.span_id, span.name = bytes.fromhex(trace_hex), bytes.fromhex(span_hex), "serve"
    span.start_time_unix_nano = 1_780_000_000_000_000_000
    span.end_time_unix_nano = span.start_time_unix_nano + 1_000_000
    return trace_hex, bytes(request.SerializeToString())


def _post_protobuf(sim: SimHandle, body: bytes, key: tuple[str, str]) -> None:
    response = httpx.post(
        sim.url + OTEL_PATH, content=body, auth=key, headers={"Content-Type": "application/x-protobuf"}
    )
    assert response.status_code == 200, response.text


def test_raw_protobuf_scope_attribute_is_found_by_contains_on_scope(sim: SimHandle, key: tuple[str, str]) -> None:
    trace, body = _protobuf_export(scope_key=key[0], resource_key=None)
    _post_protobuf(sim, body, key)
    _wait(sim, TRACES, _meta("scope", "contains", f'"public_key":"{key[0]}"'), key, trace)


def test_raw_protobuf_resource_stamp_is_found_by_equals(sim: SimHandle, key: tuple[str, str]) -> None:
    trace, body = _protobuf_export(scope_key=None, resource_key=key[0])
    _post_protobuf(sim, body, key)
    _wait(sim, TRACES, _meta("langfuse_public_key", "=", key[0]), key, trace)


# --- the connector's queries find what the real SDK sends ----------------------------------------


def _connector(sim: SimHandle, key: tuple[str, str]) -> LangfuseProjectClient:
    return LangfuseProjectClient(sim.url, KeyPair(public_key=key[0], secret_key=SecretStr(key[1])))


@pytest.mark.parametrize("version", ["4.16.0", "3.225.4"])
def test_connector_finds_an_unchanged_sdk_service_by_its_key(
    sim: SimHandle, key: tuple[str, str], other_key: str, version: str
) -> None:
    sim.configure(version=version)
    trace = _send_with_sdk(sim, key)
    since = datetime.now(UTC) - timedelta(minutes=5)
    with _connector(sim, key) as client:
        found = wait_for(lambda: client.latest_traces(TraceMatch(), since, public_key=key[0]), "the SDK trace")
        assert [s.trace_id for s in found] == [trace]
        assert client.latest_traces(TraceMatch(), since, public_key=other_key) == []


@pytest.mark.parametrize("version", ["4.16.0", "3.225.4"])
def test_connector_finds_an_sdk_propagated_stamp(sim: SimHandle, key: tuple[str, str], version: str) -> None:
    sim.configure(version=version)
    trace = _send_with_sdk(sim, key, metadata={"langfuse_public_key": key[0]})
    since = datetime.now(UTC) - timedelta(minutes=5)
    stamped = KeySpec(source=KeySource.METADATA)
    with _connector(sim, key) as client:
        found = wait_for(
            lambda: client.latest_traces(TraceMatch(), since, public_key=key[0], key=stamped), "the stamped trace"
        )
        assert [s.trace_id for s in found] == [trace]
