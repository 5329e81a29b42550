"""Langfuse simulator: the `filter` parameter of the traces list and of v2 observations, `fields`,
ordering, and how OTel spans become filterable metadata on the legacy and the v4 write paths.

Expected bodies are the real server's (v4.16.0 source, zod 4.3.6 issue format).
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.fixtures.langfuse_sim import SimHandle
from tests.otlp_spans import V4_HEADER, export, send, wait_for

TRACES = "/api/public/traces"
V2 = "/api/public/v2/observations"
OTHER_KEY = "pk-lf-00000000-0000-4000-8000-000000000000"


def _get(sim: SimHandle, path: str, filters: Any = None, **params: Any) -> httpx.Response:
    if filters is not None:
        params["filter"] = filters if isinstance(filters, str) else json.dumps(filters)
    return sim.http.get(path, params=params, auth=sim.project_auth())


def _ids(response: httpx.Response, key: str = "id") -> list[str]:
    assert response.status_code == 200, response.text
    return [item[key] for item in response.json()["data"]]


def _trace_ids(sim: SimHandle, filters: Any = None, **params: Any) -> list[str]:
    return _ids(_get(sim, TRACES, filters, **params))


def _v2_trace_ids(sim: SimHandle, filters: Any = None, **params: Any) -> list[str]:
    return _ids(_get(sim, V2, filters, **params), "traceId")


def _visible(sim: SimHandle, *trace_ids: str) -> None:
    """Wait until every trace is readable through the traces list."""
    wait_for(lambda: set(trace_ids) <= set(_trace_ids(sim)), f"traces {trace_ids}")


def _visible_v2(sim: SimHandle, *trace_ids: str) -> None:
    wait_for(lambda: set(trace_ids) <= set(_v2_trace_ids(sim)), f"v2 rows of {trace_ids}")


def _meta(key: str, operator: str, value: str) -> dict[str, str]:
    return {"type": "stringObject", "column": "metadata", "key": key, "operator": operator, "value": value}


def _sdk_like(sim: SimHandle, public_key: str | None = None, headers: dict[str, str] | None = None, **kw: Any) -> str:
    """A span as the Langfuse Python SDK sends it: scope `langfuse-sdk` with `public_key`."""
    body = export(
        scope_name="langfuse-sdk",
        scope_version="5.2.0",
        scope_attributes={"public_key": public_key or sim.projects[0].public_key},
        **kw,
    )
    return send(sim, body, sim.project_auth(), headers)


# --- 400s: the filter parameter ------------------------------------------------------------------


def test_traces_list_answers_invalid_json_in_filter_with_invalid_request_error(sim: SimHandle) -> None:
    response = _get(sim, TRACES, "[{not json")
    assert (response.status_code, response.json()) == (
        400,
        {"message": "Invalid JSON in filter parameter", "error": "InvalidRequestError"},
    )


def test_v2_observations_answers_invalid_json_in_filter_with_invalid_request_error(sim: SimHandle) -> None:
    response = _get(sim, V2, "nope")
    assert (response.status_code, response.json()) == (
        400,
        {"message": "Invalid JSON in filter parameter", "error": "InvalidRequestError"},
    )


def test_invalid_json_wins_over_other_invalid_parameters(sim: SimHandle) -> None:
    response = _get(sim, TRACES, "nope", limit="1000")
    assert response.json() == {"message": "Invalid JSON in filter parameter", "error": "InvalidRequestError"}


def test_filter_that_is_not_an_array_is_a_zod_400(sim: SimHandle) -> None:
    response = _get(sim, TRACES, {"type": "string"})
    assert (response.status_code, response.json()) == (
        400,
        {
            "message": "Invalid request data",
            "error": [
                {
                    "expected": "array",
                    "code": "invalid_type",
                    "path": ["filter"],
                    "message": "Invalid input: expected array, received object",
                }
            ],
        },
    )


def test_unknown_filter_type_is_a_discriminator_issue(sim: SimHandle) -> None:
    response = _get(sim, TRACES, [{"type": "regex", "column": "name", "operator": "=", "value": "x"}])
    assert response.status_code == 400
    assert response.json()["error"] == [
        {
            "code": "invalid_union",
            "errors": [],
            "note": "No matching discriminator",
            "discriminator": "type",
            "path": ["filter", 0, "type"],
            "message": "Invalid input",
        }
    ]


def test_unknown_operator_lists_the_allowed_ones(sim: SimHandle) -> None:
    response = _get(sim, TRACES, [_meta("k", "equals", "v")])
    assert response.status_code == 400
    assert response.json()["error"] == [
        {
            "code": "invalid_value",
            "values": ["=", "contains", "does not contain", "starts with", "ends with"],
            "path": ["filter", 0, "operator"],
            "message": 'Invalid option: expected one of "="|"contains"|"does not contain"|"starts with"|"ends with"',
        }
    ]


def test_v2_string_operator_issue_is_a_union_with_matches(sim: SimHandle) -> None:
    response = _get(sim, V2, [_meta("k", "equals", "v")])
    (issue,) = response.json()["error"]
    assert (issue["code"], issue["path"], len(issue["errors"])) == ("invalid_union", ["filter", 0, "operator"], 2)
    assert issue["errors"][1] == [
        {"code": "invalid_value", "values": ["matches"], "path": [], "message": 'Invalid input: expected "matches"'}
    ]


def test_value_of_the_wrong_type_is_an_invalid_type_issue(sim: SimHandle) -> None:
    response = _get(sim, TRACES, [_meta("k", "=", 5)])  # type: ignore[arg-type]
    assert response.json()["error"] == [
        {
            "expected": "string",
            "code": "invalid_type",
            "path": ["filter", 0, "value"],
            "message": "Invalid input: expected string, received number",
        }
    ]


def test_unparsable_date_is_an_invalid_date_issue(sim: SimHandle) -> None:
    response = _get(sim, TRACES, [{"type": "datetime", "column": "timestamp", "operator": ">=", "value": "yesterday"}])
    assert response.json()["error"] == [
        {
            "expected": "date",
            "code": "invalid_type",
            "received": "Invalid Date",
            "path": ["filter", 0, "value"],
            "message": "Invalid input: expected date, received Date",
        }
    ]


def test_any_of_an_empty_tag_list_is_refused(sim: SimHandle) -> None:
    response = _get(sim, TRACES, [{"type": "arrayOptions", "column": "tags", "operator": "any of", "value": []}])
    assert response.json()["error"] == [
        {
            "code": "custom",
            "path": ["filter", 0],
            "message": "Value array must not be empty unless operator is 'all of' or 'none of' "
            "(which represent waiting for selection)",
        }
    ]


def test_every_bad_condition_and_a_bad_limit_are_reported_together(sim: SimHandle) -> None:
    response = _get(sim, TRACES, [{"column": "x"}, 5], limit="0")
    paths = [issue["path"] for issue in response.json()["error"]]
    assert paths == [["limit"], ["filter", 0, "type"], ["filter", 1]]


def test_unknown_column_is_an_invalid_request_error(sim: SimHandle) -> None:
    response = _get(sim, TRACES, [{"type": "string", "column": "colour", "operator": "=", "value": "red"}])
    assert (response.status_code, response.json()) == (
        400,
        {"message": "Column colour does not match a UI / CH table mapping.", "error": "InvalidRequestError"},
    )


def test_traces_list_has_no_start_time_column(sim: SimHandle) -> None:
    condition = {"type": "datetime", "column": "startTime", "operator": ">=", "value": "2026-01-01T00:00:00Z"}
    assert (
        _get(sim, TRACES, [condition]).json()["message"] == "Column startTime does not match a UI / CH table mapping."
    )


def test_v2_observations_has_no_timestamp_column(sim: SimHandle) -> None:
    condition = {"type": "datetime", "column": "timestamp", "operator": ">=", "value": "2026-01-01T00:00:00Z"}
    assert _get(sim, V2, [condition]).json()["message"] == "Column timestamp does not match a UI / CH table mapping."


def test_number_condition_on_metadata_is_refused_by_the_column_type(sim: SimHandle) -> None:
    condition = {"type": "numberObject", "column": "metadata", "key": "n", "operator": ">", "value": 1}
    response = _get(sim, TRACES, [condition])
    assert (response.status_code, response.json()["message"]) == (
        400,
        "Invalid filter type 'numberObject' for column 'metadata'. Expected filter type 'stringObject'.",
    )


def test_v3_server_checks_the_filter_schema_before_answering_404_for_v2(sim: SimHandle) -> None:
    sim.configure(version="3.225.4")
    assert _get(sim, V2, "nope").status_code == 400
    assert _get(sim, V2, [_meta("k", "=", "v")]).status_code == 404


def test_condition_on_a_column_the_simulator_does_not_model_is_a_501(sim: SimHandle) -> None:
    response = _get(sim, TRACES, [{"type": "number", "column": "latency", "operator": ">", "value": 1}])
    assert response.status_code == 501


# --- what a condition selects ----------------------------------------------------------------------


def test_metadata_equals_finds_the_trace_stamped_by_a_span_attribute(sim: SimHandle) -> None:
    pk = sim.projects[0].public_key
    stamped = send(sim, export(attributes={"langfuse.trace.metadata.langfuse_public_key": pk}), sim.project_auth())
    plain = send(sim, export(), sim.project_auth())
    _visible(sim, stamped, plain)
    assert _trace_ids(sim, [_meta("langfuse_public_key", "=", pk)]) == [stamped]


def test_trace_metadata_json_attribute_becomes_keys_with_string_values(sim: SimHandle) -> None:
    trace = send(sim, export(attributes={"langfuse.trace.metadata": '{"replica": 3, "zone": "b"}'}), sim.project_auth())
    _visible(sim, trace)
    assert _trace_ids(sim, [_meta("replica", "=", "3")]) == [trace]
    assert _trace_ids(sim, [_meta("zone", "=", "b")]) == [trace]


def test_resource_attribute_stamp_becomes_trace_metadata_on_the_legacy_path(sim: SimHandle) -> None:
    pk = sim.projects[0].public_key
    trace = send(sim, export(resource={"langfuse.trace.metadata.langfuse_public_key": pk}), sim.project_auth())
    _visible(sim, trace)
    assert _trace_ids(sim, [_meta("langfuse_public_key", "=", pk)]) == [trace]


def test_legacy_path_keeps_the_scope_whole_as_json_text(sim: SimHandle) -> None:
    pk = sim.projects[0].public_key
    trace = _sdk_like(sim)
    _visible(sim, trace)
    (item,) = _get(sim, TRACES).json()["data"]
    assert item["metadata"]["scope"] == {"name": "langfuse-sdk", "version": "5.2.0", "attributes": {"public_key": pk}}


def test_scope_contains_finds_traces_sent_with_that_key_only(sim: SimHandle) -> None:
    pk = sim.projects[0].public_key
    mine = _sdk_like(sim)
    theirs = _sdk_like(sim, public_key=OTHER_KEY)
    _visible(sim, mine, theirs)
    assert _trace_ids(sim, [_meta("scope", "contains", f'"public_key":"{pk}"')]) == [mine]
    assert _trace_ids(sim, [_meta("scope", "contains", f'"public_key":"{OTHER_KEY}"')]) == [theirs]


def test_contains_on_a_missing_key_matches_nothing(sim: SimHandle) -> None:
    trace = send(sim, export(), sim.project_auth())
    _visible(sim, trace)
    assert _trace_ids(sim, [_meta("absent", "contains", "")]) == []
    assert _trace_ids(sim, [_meta("absent", "does not contain", "x")]) == []


def test_tags_any_all_and_none_of(sim: SimHandle) -> None:
    api = send(sim, export(attributes={"langfuse.trace.tags": ["api", "eu"]}), sim.project_auth())
    worker = send(sim, export(attributes={"langfuse.trace.tags": ["worker"]}), sim.project_auth())
    _visible(sim, api, worker)

    def tags(operator: str, value: list[str]) -> set[str]:
        return set(_trace_ids(sim, [{"type": "arrayOptions", "column": "tags", "operator": operator, "value": value}]))

    assert tags("any of", ["api", "worker"]) == {api, worker}
    assert tags("all of", ["api", "eu"]) == {api}
    assert tags("none of", ["api"]) == {worker}


def test_environment_and_name_conditions(sim: SimHandle) -> None:
    prod = send(sim, export(name="serve", attributes={"langfuse.environment": "production"}), sim.project_auth())
    staging = send(sim, export(name="serve", attributes={"langfuse.environment": "staging"}), sim.project_auth())
    _visible(sim, prod, staging)
    env = {"type": "stringOptions", "column": "environment", "operator": "any of", "value": ["production"]}
    name = {"type": "string", "column": "name", "operator": "=", "value": "serve"}
    assert _trace_ids(sim, [env, name]) == [prod]


def test_release_and_version_conditions(sim: SimHandle) -> None:
    tagged = send(sim, export(attributes={"langfuse.release": "r7", "langfuse.version": "1.2"}), sim.project_auth())
    other = send(sim, export(resource={"service.version": "9"}), sim.project_auth())
    _visible(sim, tagged, other)
    release = {"type": "string", "column": "release", "operator": "=", "value": "r7"}
    version = {"type": "stringOptions", "column": "version", "operator": "any of", "value": ["9"]}
    assert _trace_ids(sim, [release]) == [tagged]
    assert _trace_ids(sim, [version]) == [other]


def test_timestamp_condition_excludes_older_traces(sim: SimHandle) -> None:
    old = send(sim, export(start_ns=1_700_000_000_000_000_000), sim.project_auth())
    new = send(sim, export(), sim.project_auth())
    _visible(sim, old, new)
    since = {"type": "datetime", "column": "timestamp", "operator": ">=", "value": "2025-01-01T00:00:00.000Z"}
    assert _trace_ids(sim, [since]) == [new]


def test_condition_replaces_the_simple_parameter_on_the_same_field_only(sim: SimHandle) -> None:
    a = send(sim, export(name="a", attributes={"langfuse.environment": "production"}), sim.project_auth())
    b = send(sim, export(name="b", attributes={"langfuse.environment": "production"}), sim.project_auth())
    c = send(sim, export(name="b", attributes={"langfuse.environment": "staging"}), sim.project_auth())
    _visible(sim, a, b, c)
    name_b = [{"type": "string", "column": "name", "operator": "=", "value": "b"}]
    assert set(_trace_ids(sim, name_b, name="a")) == {b, c}
    assert _trace_ids(sim, name_b, environment="production") == [b]


def test_traces_come_newest_first_and_limit_cuts_the_page(sim: SimHandle) -> None:
    older = send(sim, export(start_ns=1_750_000_000_000_000_000), sim.project_auth())
    newer = send(sim, export(start_ns=1_760_000_000_000_000_000), sim.project_auth())
    _visible(sim, older, newer)
    response = _get(sim, TRACES, limit="1")
    assert _ids(response) == [newer]
    assert response.json()["meta"] == {"page": 1, "limit": 1, "totalItems": 2, "totalPages": 2}


def test_fields_core_returns_no_metadata_input_or_output(sim: SimHandle) -> None:
    trace = send(
        sim,
        export(attributes={"langfuse.trace.metadata.k": "v", "langfuse.trace.input": "secret prompt"}),
        sim.project_auth(),
    )
    _visible(sim, trace)
    (item,) = _get(sim, TRACES, fields="core").json()["data"]
    assert (item["metadata"], item["input"], item["output"]) == ({}, None, None)
    assert (item["observations"], item["scores"], item["latency"], item["totalCost"]) == ([], [], -1, -1)


def test_fields_with_only_unknown_groups_returns_everything(sim: SimHandle) -> None:
    trace = send(sim, export(attributes={"langfuse.trace.metadata.k": "v"}), sim.project_auth())
    _visible(sim, trace)
    (item,) = _get(sim, TRACES, fields="everything").json()["data"]
    assert item["metadata"]["k"] == "v"


def test_filtered_reads_wait_for_visibility(sim: SimHandle) -> None:
    sim.configure(otel_delay_s=0.6)
    pk = sim.projects[0].public_key
    trace = send(sim, export(attributes={"langfuse.trace.metadata.langfuse_public_key": pk}), sim.project_auth())
    assert _trace_ids(sim, [_meta("langfuse_public_key", "=", pk)]) == []
    wait_for(lambda: _trace_ids(sim, [_meta("langfuse_public_key", "=", pk)]) == [trace], "the stamped trace")


def test_request_log_counts_trace_queries(sim: SimHandle) -> None:
    since = sim.requests()["next"]
    _get(sim, TRACES, [_meta("k", "=", "v")])
    _get(sim, V2, [_meta("k", "=", "v")])
    paths = [r["path"] for r in sim.requests(since)["requests"]]
    assert paths == [TRACES, V2]


# --- v2 observations: the events table ---------------------------------------------------------


def test_v4_path_flattens_the_scope_so_contains_on_scope_finds_nothing(sim: SimHandle) -> None:
    pk = sim.projects[0].public_key
    trace = _sdk_like(sim, headers=V4_HEADER)
    _visible_v2(sim, trace)
    assert _v2_trace_ids(sim, [_meta("scope.attributes.public_key", "=", pk)]) == [trace]
    assert _v2_trace_ids(sim, [_meta("scope", "contains", pk)]) == []


def test_dual_write_rows_keep_the_scope_as_json_text(sim: SimHandle) -> None:
    pk = sim.projects[0].public_key
    trace = _sdk_like(sim)  # no v4 header, no SDK headers: the legacy path, propagated to events
    _visible_v2(sim, trace)
    assert _v2_trace_ids(sim, [_meta("scope", "contains", f'"public_key":"{pk}"')]) == [trace]
    assert _v2_trace_ids(sim, [_meta("scope.attributes.public_key", "=", pk)]) == []


def test_python_sdk_4_headers_take_the_direct_path(sim: SimHandle) -> None:
    pk = sim.projects[0].public_key
    trace = _sdk_like(sim, headers={"x-langfuse-sdk-name": "python", "x-langfuse-sdk-version": "4.0.0"})
    _visible_v2(sim, trace)
    assert _v2_trace_ids(sim, [_meta("scope.attributes.public_key", "=", pk)]) == [trace]


def test_ingestion_api_key_is_the_key_that_authenticated_on_either_path(sim: SimHandle) -> None:
    pk = sim.projects[0].public_key
    direct = send(sim, export(), sim.project_auth(), V4_HEADER)
    dual = send(sim, export(), sim.project_auth())
    _visible_v2(sim, direct, dual)
    by_key = {"type": "stringOptions", "column": "ingestionApiKey", "operator": "any of", "value": [pk]}
    assert set(_v2_trace_ids(sim, [by_key])) == {direct, dual}
    by_other = {**by_key, "value": [OTHER_KEY]}
    assert _v2_trace_ids(sim, [by_other]) == []


def test_v4_path_keeps_resource_stamps_only_under_resource_attributes(sim: SimHandle) -> None:
    pk = sim.projects[0].public_key
    body = export(resource={"langfuse.trace.metadata.langfuse_public_key": pk})
    trace = send(sim, body, sim.project_auth(), V4_HEADER)
    _visible_v2(sim, trace)
    assert _v2_trace_ids(sim, [_meta("langfuse_public_key", "=", pk)]) == []
    resource_key = "resourceAttributes.langfuse.trace.metadata.langfuse_public_key"
    assert _v2_trace_ids(sim, [_meta(resource_key, "=", pk)]) == [trace]


def test_v4_path_maps_span_metadata_stamps_to_top_level_keys(sim: SimHandle) -> None:
    pk = sim.projects[0].public_key
    trace = send(
        sim, export(attributes={"langfuse.trace.metadata.langfuse_public_key": pk}), sim.project_auth(), V4_HEADER
    )
    _visible_v2(sim, trace)
    assert _v2_trace_ids(sim, [_meta("langfuse_public_key", "=", pk)]) == [trace]


def test_v2_default_fields_carry_no_metadata(sim: SimHandle) -> None:
    trace = _sdk_like(sim, headers=V4_HEADER)
    _visible_v2(sim, trace)
    (row,) = _get(sim, V2).json()["data"]
    assert "metadata" not in row and row["name"] == "work"


def test_v2_metadata_group_returns_flattened_names(sim: SimHandle) -> None:
    pk = sim.projects[0].public_key
    trace = _sdk_like(sim, headers=V4_HEADER)
    _visible_v2(sim, trace)
    (row,) = _get(sim, V2, fields="core,metadata").json()["data"]
    assert row["metadata"]["scope.attributes.public_key"] == pk
    assert "name" not in row


def test_v2_rows_come_newest_first(sim: SimHandle) -> None:
    older = send(sim, export(start_ns=1_750_000_000_000_000_000), sim.project_auth(), V4_HEADER)
    newer = send(sim, export(start_ns=1_760_000_000_000_000_000), sim.project_auth(), V4_HEADER)
    _visible_v2(sim, older, newer)
    assert _v2_trace_ids(sim) == [newer, older]
    assert _v2_trace_ids(sim, limit="1") == [newer]


def test_v2_start_time_tags_and_trace_name_conditions(sim: SimHandle) -> None:
    hit = send(
        sim,
        export(attributes={"langfuse.trace.tags": ["api"], "langfuse.trace.name": "serve"}),
        sim.project_auth(),
        V4_HEADER,
    )
    old = send(
        sim,
        export(attributes={"langfuse.trace.tags": ["api"]}, start_ns=1_700_000_000_000_000_000),
        sim.project_auth(),
        V4_HEADER,
    )
    _visible_v2(sim, hit, old)
    conditions = [
        {"type": "datetime", "column": "startTime", "operator": ">=", "value": "2025-01-01T00:00:00Z"},
        {"type": "arrayOptions", "column": "traceTags", "operator": "any of", "value": ["api"]},
        {"type": "stringOptions", "column": "traceName", "operator": "any of", "value": ["serve"]},
    ]
    assert _v2_trace_ids(sim, conditions) == [hit]
