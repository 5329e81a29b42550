"""How Langfuse maps an OTel span to rows: the legacy trace/observation path and the v4 events path.

Follows `packages/shared/src/server/otel/OtelIngestionProcessor.ts` (v4.16.0):

* legacy path (`processToIngestionEvents`): a trace-create for root spans (full trace) or spans that
  carry trace attributes; trace metadata is resource `langfuse.trace.metadata*` + span
  `langfuse.trace.metadata*` + span `langfuse.observation.metadata*` + `attributes` (non-Langfuse
  scopes only) + `resourceAttributes` + `scope` (`{name, version, attributes}`), then stored as
  ClickHouse `Map(String, String)` (`convertRecordValuesToString`: non-strings become JSON text);
* events path (`processToEvent`, the v4 direct write): one row per span whose metadata is
  `attributes` (non-Langfuse scopes) + `resourceAttributes` + `scope` + span observation and trace
  metadata (resource attributes are *not* mapped to metadata keys here), flattened into dotted
  names (`flattenJsonToPathArrays`): `scope.attributes.public_key`, `resourceAttributes.service.name`.

Which path a batch takes: `checkHeaderBasedDirectWrite` in `worker/src/queues/otelIngestionQueue.ts`.
"""

from __future__ import annotations

import json
import re
from typing import Any

TRACE_METADATA = "langfuse.trace.metadata"
OBSERVATION_METADATA = "langfuse.observation.metadata"
_AI_EXCLUDED = {
    "ai.telemetry.metadata.userId",
    "ai.telemetry.metadata.sessionId",
    "ai.telemetry.metadata.tags",
    "ai.telemetry.metadata.langfusePrompt",
}
_IO_KEYS = {
    "langfuse.observation.input",
    "langfuse.observation.output",
    "langfuse.trace.input",
    "langfuse.trace.output",
    "input.value",
    "output.value",
    "gen_ai.prompt",
    "gen_ai.completion",
}
_TRACE_UPDATE_KEYS = (
    "langfuse.trace.name",
    "langfuse.trace.input",
    "langfuse.trace.output",
    TRACE_METADATA,
    "user.id",
    "session.id",
    "langfuse.trace.public",
    "langfuse.trace.tags",
    "langfuse.user.id",
    "langfuse.session.id",
    f"{OBSERVATION_METADATA}.langfuse_user_id",
    f"{OBSERVATION_METADATA}.langfuse_session_id",
    f"{OBSERVATION_METADATA}.langfuse_tags",
    f"{TRACE_METADATA}.langfuse_session_id",
    f"{TRACE_METADATA}.langfuse_user_id",
    f"{TRACE_METADATA}.langfuse_tags",
    "ai.telemetry.metadata.sessionId",
    "ai.telemetry.metadata.userId",
    "ai.telemetry.metadata.tags",
    "tag.tags",
)
_SEMVER = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:[-+].+)?$", re.IGNORECASE)
_PEP440 = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:a|b|rc)\d+$", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# JavaScript semantics the server's TypeScript relies on
# ---------------------------------------------------------------------------------------------
def js_truthy(value: Any) -> bool:
    """JS truthiness: `[]` and `{}` are truthy, `""`, `0`, `false`, null are not."""
    if isinstance(value, list | dict):
        return True
    return bool(value)


def js_stringify(value: Any) -> str:
    """`JSON.stringify`: compact, non-ASCII kept, integral floats without `.0`."""
    return json.dumps(_js_numbers(value), separators=(",", ":"), ensure_ascii=False)


def _js_numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): _js_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_js_numbers(v) for v in value]
    return value


def to_ch_map(record: Any) -> dict[str, str]:
    """A metadata object as the `Map(String, String)` ClickHouse column stores it.

    `convertJsonSchemaToRecord` (a literal or array becomes `{"metadata": …}`) followed by
    `convertRecordValuesToString` (strings kept, everything else `JSON.stringify`-ed).
    """
    if record is None:
        return {}
    if isinstance(record, bool):
        record = {"metadata": "true" if record else "false"}
    elif isinstance(record, str | int | float):
        record = {"metadata": str(_js_numbers(record))}
    elif isinstance(record, list):
        record = {"metadata": js_stringify(record)}
    return {str(k): v if isinstance(v, str) else js_stringify(v) for k, v in record.items()}


def flatten_paths(record: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """`flattenJsonToPathArrays`: nested objects become dotted names, leaves strings ('' for null)."""
    out: list[tuple[str, str]] = []
    for key, value in record.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.extend(flatten_paths(value, path))
        elif value is None:
            out.append((path, ""))
        elif isinstance(value, str):
            out.append((path, value))
        else:
            out.append((path, js_stringify(value)))
    return out


def parse_metadata_value(value: str) -> Any:
    """`parseJsonPrioritised`: a stored metadata value is returned JSON-parsed when it parses."""
    try:
        return json.loads(value)
    except ValueError:
        return value


# ---------------------------------------------------------------------------------------------
# attribute extraction (OtelIngestionProcessor)
# ---------------------------------------------------------------------------------------------
def _parse_metadata_attribute(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return {}
        return _as_record(parsed) if isinstance(parsed, dict | list) and js_truthy(parsed) else {}
    if isinstance(value, dict | list):
        return _as_record(value)
    return {}


def _as_record(value: dict[str, Any] | list[Any]) -> dict[str, Any]:
    """An object spread (`{...value}`): an array spreads to its indices."""
    return {str(i): v for i, v in enumerate(value)} if isinstance(value, list) else dict(value)


def extract_metadata(attributes: dict[str, Any], domain: str) -> dict[str, Any]:
    """`extractMetadata`: the JSON object in `langfuse.<domain>.metadata` (or `langfuse.metadata`),
    then every `langfuse.<domain>.metadata.<k>` / `langfuse.metadata.<k>` / `ai.telemetry.metadata.<k>`."""
    prefix = TRACE_METADATA if domain == "trace" else OBSERVATION_METADATA
    primary = attributes.get(prefix)
    top = _parse_metadata_attribute(primary if js_truthy(primary) else attributes.get("langfuse.metadata"))
    prefixed: dict[str, Any] = {}
    for key, value in attributes.items():
        for candidate in (prefix, "langfuse.metadata", "ai.telemetry.metadata"):
            if not key.startswith(candidate + ".") or key in _AI_EXCLUDED:
                continue
            name = key[len(candidate) + 1 :]
            if name:
                prefixed[name] = value
    return {**top, **prefixed}


def extract_tags(attributes: dict[str, Any]) -> list[str]:
    value: Any = None
    for key in (
        "langfuse.trace.tags",
        "langfuse.tags",
        f"{OBSERVATION_METADATA}.langfuse_tags",
        f"{TRACE_METADATA}.langfuse_tags",
        "ai.telemetry.metadata.tags",
        "tag.tags",
    ):
        value = attributes.get(key)
        if js_truthy(value):
            break
    if value is None:
        return []
    if isinstance(value, list):
        return [_js_string(v) for v in value]
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if isinstance(parsed, list):
            return [_js_string(v) for v in parsed]
    if isinstance(value, str) and "," in value:
        return [tag.strip() for tag in value.split(",")]
    if isinstance(value, str):
        return [value]
    return []


def _js_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(_js_numbers(value))


def normalize_environment(value: Any) -> str:
    """Lower-cased, leading `langfuse-`/`langfuse_` prefixes stripped, at most 40 characters."""
    text = str(value).lower()
    while re.match(r"^langfuse[-_]", text):
        text = text[len("langfuse") + 1 :]
    return text[:40]


def extract_environment(attributes: dict[str, Any], resource: dict[str, Any]) -> str:
    for key in ("langfuse.environment", "deployment.environment.name", "deployment.environment"):
        if js_truthy(attributes.get(key)):
            return normalize_environment(attributes[key])
        if js_truthy(resource.get(key)):
            return normalize_environment(resource[key])
    return "default"


def _first_text(attributes: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = attributes.get(key)
        if js_truthy(value):
            return value if isinstance(value, str) else js_stringify(value)
    return None


def extract_user_id(attributes: dict[str, Any]) -> str | None:
    return _first_text(
        attributes,
        (
            "langfuse.user.id",
            "user.id",
            f"{OBSERVATION_METADATA}.langfuse_user_id",
            f"{TRACE_METADATA}.langfuse_user_id",
            "ai.telemetry.metadata.userId",
        ),
    )


def extract_session_id(attributes: dict[str, Any]) -> str | None:
    return _first_text(
        attributes,
        (
            "langfuse.session.id",
            "session.id",
            "gen_ai.conversation.id",
            f"{OBSERVATION_METADATA}.langfuse_session_id",
            f"{TRACE_METADATA}.langfuse_session_id",
            "ai.telemetry.metadata.sessionId",
        ),
    )


def has_trace_updates(attributes: dict[str, Any]) -> bool:
    if any(js_truthy(attributes.get(key)) for key in _TRACE_UPDATE_KEYS):
        return True
    return any(key.startswith(TRACE_METADATA) for key in attributes)


def filtered_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    """The span attributes kept under metadata `attributes` for non-Langfuse scopes (input and output
    attributes removed; the server's finer per-framework filtering is not modelled)."""
    return {k: v for k, v in attributes.items() if k not in _IO_KEYS}


def scope_object(scope: dict[str, Any], scope_attributes: dict[str, Any]) -> dict[str, Any]:
    """`{...scopeSpan.scope, attributes: scopeAttributes}`."""
    return {**{k: v for k, v in scope.items() if k != "attributes"}, "attributes": scope_attributes}


def is_langfuse_sdk_scope(scope: dict[str, Any]) -> bool:
    name = scope.get("name")
    return isinstance(name, str) and name.startswith("langfuse-sdk")


def release_of(attributes: dict[str, Any], resource: dict[str, Any]) -> str | None:
    value = attributes.get("langfuse.release")
    if value is None:
        value = resource.get("langfuse.release")
    return None if value is None else str(value)


def version_of(attributes: dict[str, Any], resource: dict[str, Any]) -> str | None:
    value = attributes.get("langfuse.version")
    if value is None:
        value = resource.get("service.version")
    return None if value is None else str(value)


# ---------------------------------------------------------------------------------------------
# write path
# ---------------------------------------------------------------------------------------------
def _base_version(raw: str) -> tuple[int, int, int] | None:
    text = raw.strip()
    match = _SEMVER.match(text) or _PEP440.match(text)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def header_based_direct_write(sdk_name: str | None, sdk_version: str | None, ingestion_version: str | None) -> bool:
    """`checkHeaderBasedDirectWrite`: `x-langfuse-ingestion-version` >= 4, or the Python SDK >= 4.0.0,
    or the JS SDK >= 5.0.0 (`x-langfuse-sdk-name` / `x-langfuse-sdk-version`)."""
    parsed = js_parse_int(ingestion_version) if ingestion_version else None
    if parsed is not None and parsed >= 4:
        return True
    if not sdk_name or not sdk_version:
        return False
    version = _base_version(sdk_version)
    if version is None:
        return False
    if sdk_name == "python":
        return version >= (4, 0, 0)
    if sdk_name == "javascript":
        return version >= (5, 0, 0)
    return False


def js_parse_int(raw: str) -> int | None:
    """`parseInt(raw, 10)`: the leading integer after whitespace, or None for NaN."""
    match = re.match(r"^\s*([+-]?\d+)", raw)
    return int(match.group(1)) if match else None
