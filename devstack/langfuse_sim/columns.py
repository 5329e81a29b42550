"""Filterable columns of the traces list and of v2 observations, as the server maps them.

Names a filter may use are the UI mapping's `uiTableId` and `uiTableName`
(`tracesTableUiColumnDefinitions`, `eventsTableNativeUiColumnDefinitions`); the definition type is
that of the column definition with the same id (`tracesTableCols`, `eventsTableCols`), `None`
where there is none (the server then skips the filter-type check). `field` identifies the
ClickHouse field, so a condition replaces the simple query parameter on the same field.
"""

from __future__ import annotations

from typing import Any

from devstack.langfuse_sim.filters import Column
from devstack.langfuse_sim.rows import Event, Trace


def _unmodelled(names: tuple[str, ...], definition: str | None, field: str | None = None) -> Column:
    return Column(names, field or names[0], definition, None)


def _trace_metadata(trace: Trace) -> Any:
    return trace.metadata.get


TRACE_COLUMNS: list[Column] = [
    Column(("bookmarked", "⭐️"), "t.bookmarked", "boolean", "bool", lambda t: t.bookmarked),
    _unmodelled(("level", "Level"), "stringOptions", "aggregated_level"),
    Column(("id", "ID"), "id", "string", "text", lambda t: t.id),
    Column(("traceId", "Trace ID"), "id", None, "text", lambda t: t.id),
    Column(("name", "Name"), "name", None, "text", lambda t: t.name),
    Column(("traceName", "Trace Name"), "name", "stringOptions", "text", lambda t: t.name),
    Column(("timestamp", "Timestamp"), "timestamp", "datetime", "datetime", lambda t: t.timestamp),
    Column(("userId", "User ID"), "user_id", "string", "text", lambda t: t.user_id),
    Column(("sessionId", "Session ID"), "session_id", "string", "text", lambda t: t.session_id),
    Column(("metadata", "Metadata"), "metadata", "stringObject", "map", _trace_metadata),
    _unmodelled(("evaluatorId", "Evaluator ID"), "stringOptions"),
    _unmodelled(("ruleId", "Rule ID"), "stringOptions"),
    Column(("version", "Version"), "version", "string", "text", lambda t: t.version),
    Column(("release", "Release"), "release", "string", "text", lambda t: t.release),
    Column(("environment", "Environment"), "environment", "stringOptions", "text", lambda t: t.environment),
    Column(("tags", "Tags"), "tags", None, "array", lambda t: t.tags),
    Column(("traceTags", "Trace Tags"), "tags", "arrayOptions", "array", lambda t: t.tags),
    _unmodelled(("warningCount", "Warning Level Count"), "number"),
    _unmodelled(("errorCount", "Error Level Count"), "number"),
    _unmodelled(("defaultCount", "Default Level Count"), "number"),
    _unmodelled(("debugCount", "Debug Level Count"), "number"),
    _unmodelled(("inputTokens", "Input Tokens"), "number"),
    _unmodelled(("outputTokens", "Output Tokens"), "number"),
    _unmodelled(("totalTokens", "Total Tokens"), "number"),
    _unmodelled(("tokens", "Tokens"), "number"),
    _unmodelled(("scores", "Scores"), None, "s.scores_avg"),
    _unmodelled(("scores_avg", "Scores (numeric)"), "numberObject", "s.scores_avg"),
    _unmodelled(("score_categories", "Scores (categorical)"), "categoryOptions"),
    _unmodelled(("score_booleans", "Scores (boolean)"), "booleanObject"),
    _unmodelled(("latency", "Latency (s)"), "number"),
    _unmodelled(("inputCost", "Input Cost ($)"), "number"),
    _unmodelled(("outputCost", "Output Cost ($)"), "number"),
    _unmodelled(("totalCost", "Total Cost ($)"), "number"),
]


def _event_metadata(event: Event) -> Any:
    return event.metadata_value


EVENT_COLUMNS: list[Column] = [
    Column(("environment", "Environment"), "environment", "stringOptions", "text", lambda e: e.environment),
    Column(("ingestionApiKey", "API Key"), "ingestion_api_key", "stringOptions", "text", lambda e: e.ingestion_api_key),
    Column(
        ("ingestionSdkName", "SDK Name"), "ingestion_sdk_name", "stringOptions", "text", lambda e: e.ingestion_sdk_name
    ),
    Column(
        ("ingestionSdkVersion", "SDK Version"),
        "ingestion_sdk_version",
        "stringOptions",
        "text",
        lambda e: e.ingestion_sdk_version,
    ),
    Column(("ingestionSource", "Ingestion Source"), "source", "stringOptions", "text", lambda e: e.source),
    Column(("type", "Type"), "type", "stringOptions", "text", lambda e: e.type),
    Column(("id", "ID"), "span_id", "stringOptions", "text", lambda e: e.id),
    Column(("name", "Name"), "name", "stringOptions", "text", lambda e: e.name),
    Column(("traceId", "Trace ID"), "trace_id", "string", "text", lambda e: e.trace_id),
    Column(("startTime", "Start Time"), "start_time", "datetime", "datetime", lambda e: e.start_time),
    Column(("endTime", "End Time"), "end_time", "datetime", "datetime", lambda e: e.end_time),
    _unmodelled(("timeToFirstToken", "Time To First Token (s)"), "number"),
    _unmodelled(("latency", "Latency (s)"), "number"),
    _unmodelled(("tokensPerSecond", "Tokens per second"), "number"),
    _unmodelled(("inputCost", "Input Cost ($)"), "number"),
    _unmodelled(("outputCost", "Output Cost ($)"), "number"),
    _unmodelled(("totalCost", "Total Cost ($)"), "number"),
    Column(("level", "Level"), "level", "stringOptions", "text", lambda e: e.level),
    Column(("statusMessage", "Status Message"), "status_message", "string", "text", lambda e: e.status_message),
    Column(("model", "Model"), "provided_model_name", None, "text", lambda e: e.model),
    Column(
        ("providedModelName", "Provided Model Name"), "provided_model_name", "stringOptions", "text", lambda e: e.model
    ),
    _unmodelled(("modelId", "Model ID"), "stringOptions"),
    _unmodelled(("inputTokens", "Input Tokens"), "number"),
    _unmodelled(("outputTokens", "Output Tokens"), "number"),
    _unmodelled(("totalTokens", "Total Tokens"), "number"),
    _unmodelled(("tokens", "Tokens"), "number"),
    Column(("metadata", "Metadata"), "metadata", "stringObject", "map", _event_metadata),
    _unmodelled(("evaluatorId", "Evaluator ID"), "stringOptions"),
    _unmodelled(("ruleId", "Rule ID"), "stringOptions"),
    Column(("version", "Version"), "version", "string", "text", lambda e: e.version),
    Column(("release", "Release"), "release", "string", "text", lambda e: e.release, empty_is_null=True),
    _unmodelled(("promptName", "Prompt Name"), "stringOptions"),
    _unmodelled(("promptVersion", "Prompt Version"), "number"),
    _unmodelled(("input", "Input"), "string"),
    _unmodelled(("output", "Output"), "string"),
    Column(("sessionId", "Session ID"), "session_id", "string", "text", lambda e: e.session_id),
    Column(("traceName", "Trace Name"), "trace_name", "stringOptions", "text", lambda e: e.effective_trace_name),
    Column(("userId", "User ID"), "user_id", "string", "text", lambda e: e.user_id),
    Column(("traceTags", "Trace Tags"), "tags", "arrayOptions", "array", lambda e: e.tags),
    Column(("tags", "Tags"), "tags", None, "array", lambda e: e.tags),
    Column(("traceEnvironment", "Trace Environment"), "environment", None, "text", lambda e: e.environment),
    Column(
        ("hasParentObservation", "Has Parent Observation"), "has_parent", "boolean", "bool", lambda e: bool(e.parent_id)
    ),
    Column(("isRootObservation", "Is Root Observation"), "is_root", "boolean", "bool", lambda e: e.is_root),
    Column(("hasInput", "Has Input"), "has_input", "boolean", "bool", lambda e: bool(e.input)),
    Column(("hasOutput", "Has Output"), "has_output", "boolean", "bool", lambda e: bool(e.output)),
    Column(
        ("parentObservationId", "Parent Observation ID"),
        "parent_span_id",
        None,
        "text",
        lambda e: e.parent_id or "",
        empty_is_null=True,
    ),
    _unmodelled(("experimentDatasetId", "Experiment Dataset ID"), "stringOptions"),
    _unmodelled(("experimentId", "Experiment ID"), "stringOptions"),
    _unmodelled(("experimentName", "Experiment Name"), "stringOptions"),
    _unmodelled(("isExperimentItemRootSpan", "Is Experiment Item Root Span"), "boolean"),
    _unmodelled(("toolDefinitions", "Available Tools"), "number"),
    _unmodelled(("toolCalls", "Tool Calls"), "number"),
    _unmodelled(("toolNames", "Tool Names"), "arrayOptions"),
    _unmodelled(("calledToolNames", "Called Tool Names"), "arrayOptions"),
]
