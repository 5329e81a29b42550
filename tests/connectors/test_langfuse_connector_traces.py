"""Trace evidence through the Langfuse connector: `LangfuseProjectClient.latest_traces` against the
simulator (v4: v2 observations; v3: the traces list), and the exact filters it sends."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from connectors.errors import LangfuseRateLimitedError, LangfuseUnsupportedServerError
from connectors.keypair import KeyPair
from connectors.langfuse import KeySource, KeySpec, LangfuseProjectClient, RetryPolicy, TraceMatch
from connectors.langfuse.traces import build_filter, key_from_metadata, parse_version
from tests.fakes import FakeClock
from tests.fixtures.langfuse_sim import SimHandle
from tests.otlp_spans import V4_HEADER, export, send, wait_for

OTHER_KEY = "pk-lf-00000000-0000-4000-8000-000000000000"
SINCE = datetime(2026, 1, 1, tzinfo=UTC)
READS = ("/api/public/v2/observations", "/api/public/traces")


def _client(sim: SimHandle, clock: FakeClock | None = None) -> LangfuseProjectClient:
    project = sim.projects[0]
    pair = KeyPair(public_key=project.public_key, secret_key=SecretStr(project.secret_key))
    if clock is None:
        return LangfuseProjectClient(sim.url, pair)
    return LangfuseProjectClient(sim.url, pair, sleep=clock.sleep, clock=clock)


def _sdk_span(sim: SimHandle, public_key: str | None = None, headers: dict[str, str] | None = None, **kw: Any) -> str:
    body = export(
        scope_name="langfuse-sdk",
        scope_version="5.2.0",
        scope_attributes={"public_key": public_key or sim.projects[0].public_key},
        **kw,
    )
    return send(sim, body, sim.project_auth(), headers)


def _reads(sim: SimHandle, since: int) -> list[dict[str, Any]]:
    return [r for r in sim.requests(since)["requests"] if r["path"] in READS]


# --- the filters, exactly -------------------------------------------------------------------------


def test_v2_filter_for_the_sdk_key_source_uses_the_authenticated_ingestion_key() -> None:
    match = TraceMatch(environment="production", tags=("api",))
    assert build_filter("v2", match, SINCE, "pk-lf-new") == [
        {"type": "stringOptions", "column": "environment", "operator": "any of", "value": ["production"]},
        {"type": "arrayOptions", "column": "traceTags", "operator": "all of", "value": ["api"]},
        {"type": "datetime", "column": "startTime", "operator": ">=", "value": "2026-01-01T00:00:00.000Z"},
        {"type": "stringOptions", "column": "ingestionApiKey", "operator": "any of", "value": ["pk-lf-new"]},
    ]


def test_traces_filter_for_the_sdk_key_source_matches_the_scope_json_text() -> None:
    assert build_filter("traces", TraceMatch(name="serve"), SINCE, "pk-lf-new") == [
        {"type": "string", "column": "name", "operator": "=", "value": "serve"},
        {"type": "datetime", "column": "timestamp", "operator": ">=", "value": "2026-01-01T00:00:00.000Z"},
        {
            "type": "stringObject",
            "column": "metadata",
            "key": "scope",
            "operator": "contains",
            "value": '"public_key":"pk-lf-new"',
        },
    ]


def test_metadata_key_source_is_a_contains_condition_on_both_paths() -> None:
    key = KeySpec(source=KeySource.METADATA, metadata_key="lf_key")
    expected = {
        "type": "stringObject",
        "column": "metadata",
        "key": "lf_key",
        "operator": "contains",
        "value": "pk-lf-new",
    }
    assert build_filter("v2", TraceMatch(), SINCE, "pk-lf-new", key)[-1] == expected
    assert build_filter("traces", TraceMatch(), SINCE, "pk-lf-new", key)[-1] == expected


def test_match_release_version_metadata_and_v2_trace_name() -> None:
    match = TraceMatch(name="serve", release="r1", version="2", metadata={"team": "a"})
    assert build_filter("v2", match, SINCE)[:4] == [
        {"type": "stringOptions", "column": "traceName", "operator": "any of", "value": ["serve"]},
        {"type": "string", "column": "release", "operator": "=", "value": "r1"},
        {"type": "string", "column": "version", "operator": "=", "value": "2"},
        {"type": "stringObject", "column": "metadata", "key": "team", "operator": "=", "value": "a"},
    ]


def test_a_key_that_is_not_a_langfuse_public_key_is_refused() -> None:
    with pytest.raises(ValueError, match="pk-lf-"):
        build_filter("v2", TraceMatch(), SINCE, "sk-lf-oops")


def test_naive_since_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        build_filter("v2", TraceMatch(), datetime(2026, 1, 1))


def test_key_read_from_metadata_must_be_a_public_key() -> None:
    sdk = KeySpec()
    assert key_from_metadata({"scope.attributes.public_key": "pk-lf-a"}, sdk) == "pk-lf-a"
    assert key_from_metadata({"scope": {"attributes": {"public_key": "pk-lf-b"}}}, sdk) == "pk-lf-b"
    assert key_from_metadata({"scope": '{"attributes":{"public_key":"pk-lf-c"}}'}, sdk) == "pk-lf-c"
    assert key_from_metadata({"scopeAttributes.public_key": "pk-lf-d"}, sdk) == "pk-lf-d"
    assert key_from_metadata({"scope.attributes.public_key": "sk-lf-secret"}, sdk) is None
    assert key_from_metadata({"langfuse_public_key": "not-a-key"}, KeySpec(source=KeySource.METADATA)) is None


def test_version_parsing() -> None:
    assert parse_version("4.16.0") == (4, 16, 0)
    assert parse_version("v3.116.1-rc.1") == (3, 116, 1)
    assert parse_version("main") is None


# --- against the simulator: Langfuse v4 (v2 observations) -------------------------------------------


def test_v4_finds_traces_sent_with_the_key_and_not_with_another(sim: SimHandle) -> None:
    pk = sim.projects[0].public_key
    trace = _sdk_span(sim, headers=V4_HEADER, attributes={"langfuse.environment": "production"})
    with _client(sim) as client:
        match = TraceMatch(environment="production")
        found = wait_for(lambda: client.latest_traces(match, SINCE, public_key=pk), "the trace")
        assert [(s.trace_id, s.public_key) for s in found] == [(trace, pk)]
        assert client.latest_traces(match, SINCE, public_key=OTHER_KEY) == []


def test_v4_sighting_carries_the_span_start_time(sim: SimHandle) -> None:
    start = datetime(2026, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    _sdk_span(sim, headers=V4_HEADER, start_ns=int(start.timestamp()) * 10**9 + 123_456_789)
    with _client(sim) as client:
        (sighting,) = wait_for(lambda: client.latest_traces(TraceMatch(), SINCE), "the trace")
        assert sighting.timestamp == start


def test_v4_key_source_sdk_counts_what_the_key_authenticated_even_without_the_sdk(sim: SimHandle) -> None:
    pk = sim.projects[0].public_key
    trace = send(sim, export(scope_name="some-otel-exporter"), sim.project_auth())
    with _client(sim) as client:
        found = wait_for(lambda: client.latest_traces(TraceMatch(), SINCE, public_key=pk), "the trace")
        assert [s.trace_id for s in found] == [trace]


def test_v4_metadata_key_source(sim: SimHandle) -> None:
    pk = sim.projects[0].public_key
    key = KeySpec(source=KeySource.METADATA)
    stamped = send(
        sim, export(attributes={"langfuse.trace.metadata.langfuse_public_key": pk}), sim.project_auth(), V4_HEADER
    )
    send(sim, export(), sim.project_auth(), V4_HEADER)
    with _client(sim) as client:
        found = wait_for(lambda: client.latest_traces(TraceMatch(), SINCE, public_key=pk, key=key), "the stamped trace")
        assert [s.trace_id for s in found] == [stamped]


def test_v4_without_a_key_reads_each_traces_key_from_its_metadata(sim: SimHandle) -> None:
    pk = sim.projects[0].public_key
    trace = _sdk_span(sim, headers=V4_HEADER)
    with _client(sim) as client:
        (sighting,) = wait_for(lambda: client.latest_traces(TraceMatch(), SINCE), "the trace")
        assert (sighting.trace_id, sighting.public_key) == (trace, pk)


def test_v4_key_read_back_that_is_not_a_public_key_is_ignored(sim: SimHandle) -> None:
    trace = send(
        sim,
        export(attributes={"langfuse.trace.metadata.langfuse_public_key": "sk-lf-oops"}),
        sim.project_auth(),
        V4_HEADER,
    )
    with _client(sim) as client:
        key = KeySpec(source=KeySource.METADATA)
        (sighting,) = wait_for(lambda: client.latest_traces(TraceMatch(), SINCE, key=key), "the trace")
        assert (sighting.trace_id, sighting.public_key) == (trace, None)


def test_v4_one_sighting_per_trace_newest_first(sim: SimHandle) -> None:
    root_trace, root_span = "a" * 32, "1" * 16
    send(
        sim,
        export(trace_id=root_trace, span_id=root_span, start_ns=1_780_000_000_000_000_000),
        sim.project_auth(),
        V4_HEADER,
    )
    send(
        sim,
        export(trace_id=root_trace, parent_span_id=root_span, start_ns=1_780_000_001_000_000_000),
        sim.project_auth(),
        V4_HEADER,
    )
    older = send(sim, export(start_ns=1_770_000_000_000_000_000), sim.project_auth(), V4_HEADER)
    with _client(sim) as client:
        wait_for(lambda: len(client.latest_traces(TraceMatch(), SINCE, limit=10)) == 2, "both traces")
        found = client.latest_traces(TraceMatch(), SINCE, limit=10)
        assert [s.trace_id for s in found] == [root_trace, older]


def test_v4_traces_before_since_are_not_counted(sim: SimHandle) -> None:
    pk = sim.projects[0].public_key
    send(sim, export(start_ns=1_700_000_000_000_000_000), sim.project_auth(), V4_HEADER)
    marker = send(sim, export(name="marker"), sim.project_auth(), V4_HEADER)
    with _client(sim) as client:
        wait_for(lambda: client.latest_traces(TraceMatch(name="marker"), SINCE), "the marker trace")
        found = client.latest_traces(TraceMatch(), SINCE, public_key=pk, limit=10)
        assert [s.trace_id for s in found] == [marker]


def test_each_query_is_one_request_after_one_health_check(sim: SimHandle) -> None:
    mark = sim.requests()["next"]
    with _client(sim) as client:
        client.latest_traces(TraceMatch(), SINCE)
        client.latest_traces(TraceMatch(), SINCE)
    paths = [r["path"] for r in sim.requests(mark)["requests"]]
    assert paths == ["/api/public/health", "/api/public/v2/observations", "/api/public/v2/observations"]


def test_a_rate_limited_query_is_retried(sim: SimHandle) -> None:
    sim.inject_fault("/api/public/v2/observations", method="GET", status=429, retry_after=1)
    clock = FakeClock()
    with _client(sim, clock) as client:
        assert client.latest_traces(TraceMatch(), SINCE) == []
    assert [r["status"] for r in _reads(sim, 0)] == [429, 200]


def test_a_query_rate_limited_beyond_its_retries_raises(sim: SimHandle) -> None:
    sim.inject_fault("/api/public/v2/observations", method="GET", status=429, retry_after=1, count=100)
    project = sim.projects[0]
    pair = KeyPair(public_key=project.public_key, secret_key=SecretStr(project.secret_key))
    clock = FakeClock()
    retry = RetryPolicy(max_attempts=2)
    client = LangfuseProjectClient(sim.url, pair, retry=retry, sleep=clock.sleep, clock=clock)
    with client, pytest.raises(LangfuseRateLimitedError):
        client.latest_traces(TraceMatch(), SINCE)


def test_a_refused_filter_names_the_minimum_version(sim: SimHandle) -> None:
    sim.inject_fault(
        "/api/public/v2/observations",
        method="GET",
        status=400,
        body={
            "message": "Column ingestionApiKey does not match a UI / CH table mapping.",
            "error": "InvalidRequestError",
        },
    )
    with _client(sim) as client, pytest.raises(LangfuseUnsupportedServerError) as caught:
        client.latest_traces(TraceMatch(), SINCE, public_key=sim.projects[0].public_key)
    message = str(caught.value)
    assert "needs Langfuse 4.0.0 or later" in message and "\n" not in message
    assert "Column ingestionApiKey" in message


# --- Langfuse v3 (the traces list) ------------------------------------------------------------------


def test_v3_reads_the_traces_list_with_the_scope_condition(sim: SimHandle) -> None:
    sim.configure(version="3.225.4")
    pk = sim.projects[0].public_key
    mine = _sdk_span(sim)
    _sdk_span(sim, public_key=OTHER_KEY)
    mark = sim.requests()["next"]
    with _client(sim) as client:
        found = wait_for(lambda: client.latest_traces(TraceMatch(), SINCE, public_key=pk), "the trace")
        assert [(s.trace_id, s.public_key) for s in found] == [(mine, pk)]
        assert client.trace_read_path() == "traces"
    assert {r["path"] for r in _reads(sim, mark)} == {"/api/public/traces"}


def test_v3_metadata_key_source_finds_a_resource_attribute_stamp(sim: SimHandle) -> None:
    sim.configure(version="3.225.4")
    pk = sim.projects[0].public_key
    trace = send(sim, export(resource={"langfuse.trace.metadata.langfuse_public_key": pk}), sim.project_auth())
    key = KeySpec(source=KeySource.METADATA)
    with _client(sim) as client:
        found = wait_for(lambda: client.latest_traces(TraceMatch(), SINCE, public_key=pk, key=key), "the trace")
        assert [s.trace_id for s in found] == [trace]


def test_v3_without_a_key_cannot_read_it_with_fields_core(sim: SimHandle) -> None:
    sim.configure(version="3.225.4")
    trace = _sdk_span(sim)
    with _client(sim) as client:
        (sighting,) = wait_for(lambda: client.latest_traces(TraceMatch(), SINCE), "the trace")
        assert (sighting.trace_id, sighting.public_key) == (trace, None)


def test_v4_without_v2_observations_falls_back_to_the_traces_list(sim: SimHandle) -> None:
    sim.inject_fault(
        "/api/public/v2/observations",
        method="GET",
        status=404,
        body={"message": "The observations v2 API is only available in a Langfuse v4 write mode."},
    )
    pk = sim.projects[0].public_key
    trace = _sdk_span(sim)
    with _client(sim) as client:
        found = wait_for(lambda: client.latest_traces(TraceMatch(), SINCE, public_key=pk), "the trace")
        assert [s.trace_id for s in found] == [trace]
        assert client.trace_read_path() == "traces"


def test_a_server_older_than_the_filter_is_refused_before_any_query(sim: SimHandle) -> None:
    sim.configure(version="3.100.0")
    mark = sim.requests()["next"]
    with _client(sim) as client, pytest.raises(LangfuseUnsupportedServerError) as caught:
        client.latest_traces(TraceMatch(), SINCE, public_key=sim.projects[0].public_key)
    assert str(caught.value) == (
        f"Langfuse at {sim.url} is version 3.100.0; trace evidence needs Langfuse 3.116.1 or later "
        "(the filter parameter of GET /api/public/traces; older servers ignore it)"
    )
    assert _reads(sim, mark) == []


def test_the_filter_sent_is_valid_json_the_simulator_accepts(sim: SimHandle) -> None:
    """Every condition the connector builds passes the server's schema and column checks."""
    match = TraceMatch(name="n", environment="e", tags=("t",), release="r", version="v", metadata={"k": "v"})
    for path, url in (("v2", "/api/public/v2/observations"), ("traces", "/api/public/traces")):
        for key in (KeySpec(), KeySpec(source=KeySource.METADATA)):
            conditions = build_filter(path, match, datetime.now(UTC) - timedelta(minutes=1), "pk-lf-x", key)  # type: ignore[arg-type]
            response = sim.http.get(
                url, params={"filter": json.dumps(conditions), "fields": "core"}, auth=sim.project_auth()
            )
            assert response.status_code == 200, (path, key, response.text)
