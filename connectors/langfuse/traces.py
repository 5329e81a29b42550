"""Trace evidence: "the latest traces matching these conditions, sent with public key X, since T".

Reads through the path that is current on the Langfuse in use, learnt once from the health
endpoint's version: Langfuse 4 → ``GET /api/public/v2/observations`` (the events table, real time for
OTel ingestion); Langfuse 3.116.1 to 3.x → ``GET /api/public/traces`` (the ``filter`` parameter
arrived in 3.116.1: an older server *ignores* it and would answer unfiltered traces, so it is refused
before any query). A v2 answer of 404 switches to the traces list for good. Every query asks for the
``core`` field group only (the key is proven by the filter, never read from trace input or output)
and a small ``limit``.

How a trace shows which key sent it (see docs/trace-evidence.md):

- ``sdk``: on v2, the events row's ``ingestionApiKey``: the public key of the key pair that
  *authenticated* the export (Langfuse resolves a key by its secret), whatever the exporter; on the
  traces list, the ``scope`` metadata the Langfuse SDK (v3+) fills with its ``public_key``, as JSON
  text, matched with ``contains '"public_key":"<pk>"'``.
- ``metadata``: the trace-metadata key the service stamps, matched with ``contains`` (the SDK 5
  stores the value JSON-encoded, with quotes; other exporters bare).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from connectors.errors import LangfuseUnsupportedServerError
from connectors.langfuse._errors import Action, parse_json, parse_model, server_message
from connectors.langfuse._http import HttpCore
from connectors.langfuse.models import ApiModel, HealthStatus

logger = logging.getLogger("connectors.langfuse")

V2_OBSERVATIONS_PATH = "/api/public/v2/observations"
TRACES_PATH = "/api/public/traces"
HEALTH_PATH = "/api/public/health"
#: The first release whose ``GET /api/public/traces`` applies ``filter`` (langfuse/langfuse#9492).
MIN_TRACES_FILTER_VERSION = (3, 116, 1)
#: The first release whose v2 observations filter on ``ingestionApiKey`` (langfuse/langfuse#15515);
#: also the first self-hosted release that serves v2 observations by default.
MIN_V2_VERSION = (4, 0, 0)
PUBLIC_KEY_PREFIX = "pk-lf-"
DEFAULT_KEY_METADATA = "langfuse_public_key"

ReadPath = Literal["v2", "traces"]
_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")


class KeySource(StrEnum):
    """How a trace tells which public key sent it."""

    SDK = "sdk"
    METADATA = "metadata"


class TraceMatch(BaseModel):
    """Which traces are a consumer's: every given field must match (metadata: each key equals)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = None
    environment: str | None = None
    tags: tuple[str, ...] = ()
    release: str | None = None
    version: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class KeySpec(BaseModel):
    """How a consumer's traces show their key: ``source``, and ``metadata_key`` for ``metadata``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: KeySource = KeySource.SDK
    metadata_key: str = Field(default=DEFAULT_KEY_METADATA, min_length=1)


def checked_public_key(value: str) -> str:
    """A public key to filter on; anything not ``pk-lf-…`` (or that would break the JSON text
    match) is refused."""
    if not value.startswith(PUBLIC_KEY_PREFIX) or '"' in value or "\\" in value:
        raise ValueError(f"public_key must be a Langfuse public key ({PUBLIC_KEY_PREFIX}...)")
    return value


class TraceSighting(BaseModel):
    """One trace seen: its id, its timestamp (v2: its newest matching span's start), and the public
    key it was sent with when known (from the filter, or read from its metadata); never a secret."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trace_id: str
    timestamp: datetime
    public_key: str | None = None


# ---------------------------------------------------------------------------------------------
# the filter each read path is sent
# ---------------------------------------------------------------------------------------------
def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("since must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.astimezone(UTC).microsecond // 1000:03d}Z"


def _metadata_equals(key: str, value: str) -> dict[str, Any]:
    return {"type": "stringObject", "column": "metadata", "key": key, "operator": "=", "value": value}


def build_filter(
    path: ReadPath, match: TraceMatch, since: datetime, public_key: str | None = None, key: KeySpec | None = None
) -> list[dict[str, Any]]:
    """The ``filter`` conditions (ANDed by the server) for one read path; with ``public_key``, only
    traces sent with that key, as ``key`` shows it."""
    v2 = path == "v2"
    conditions: list[dict[str, Any]] = []
    if match.name is not None:
        conditions.append(
            {"type": "stringOptions", "column": "traceName", "operator": "any of", "value": [match.name]}
            if v2
            else {"type": "string", "column": "name", "operator": "=", "value": match.name}
        )
    if match.environment is not None:
        conditions.append(
            {"type": "stringOptions", "column": "environment", "operator": "any of", "value": [match.environment]}
        )
    if match.tags:
        column = "traceTags" if v2 else "tags"
        conditions.append({"type": "arrayOptions", "column": column, "operator": "all of", "value": list(match.tags)})
    for column, value in (("release", match.release), ("version", match.version)):
        if value is not None:
            conditions.append({"type": "string", "column": column, "operator": "=", "value": value})
    conditions.extend(_metadata_equals(key, value) for key, value in sorted(match.metadata.items()))
    conditions.append(
        {"type": "datetime", "column": "startTime" if v2 else "timestamp", "operator": ">=", "value": _iso(since)}
    )
    if public_key is not None:
        conditions.append(_key_condition(path, checked_public_key(public_key), key or KeySpec()))
    return conditions


def _key_condition(path: ReadPath, pk: str, key: KeySpec) -> dict[str, Any]:
    if key.source is KeySource.METADATA:
        # `contains`, not `=`: the Langfuse SDK 5 JSON-encodes every metadata value ('"pk-lf-…"')
        # and Langfuse 4.16 stores it so; a raw OTLP or resource-attribute stamp arrives bare.
        # A `pk-lf-<uuid>` key is never part of another such key, so this matches exactly one key.
        return {
            "type": "stringObject",
            "column": "metadata",
            "key": key.metadata_key,
            "operator": "contains",
            "value": pk,
        }
    if path == "v2":
        return {"type": "stringOptions", "column": "ingestionApiKey", "operator": "any of", "value": [pk]}
    return {
        "type": "stringObject",
        "column": "metadata",
        "key": "scope",
        "operator": "contains",
        "value": json.dumps({"public_key": pk}, separators=(",", ":"))[1:-1],
    }


# ---------------------------------------------------------------------------------------------
# reading a key back (inventory: no key in the filter)
# ---------------------------------------------------------------------------------------------
def key_from_metadata(metadata: dict[str, Any], key: KeySpec) -> str | None:
    """The public key a v2 row's metadata names, or None; anything not ``pk-lf-…`` is ignored.

    ``sdk``: ``scope.attributes.public_key`` (direct-write rows), ``scopeAttributes.public_key``
    (servers before 3.160.0), or ``scope`` as an object / JSON text (dual-write rows).
    """
    if key.source is KeySource.METADATA:
        candidates: list[Any] = [metadata.get(key.metadata_key)]
    else:
        scope = metadata.get("scope")
        if isinstance(scope, str):
            try:
                scope = json.loads(scope)
            except ValueError:
                scope = None
        attributes = scope.get("attributes") if isinstance(scope, dict) else None
        candidates = [
            metadata.get("scope.attributes.public_key"),
            metadata.get("scopeAttributes.public_key"),
            attributes.get("public_key") if isinstance(attributes, dict) else None,
        ]
    for value in candidates:
        if isinstance(value, str) and value.startswith(PUBLIC_KEY_PREFIX):
            return value
    return None


def parse_version(raw: str | None) -> tuple[int, int, int] | None:
    match = _VERSION.match((raw or "").strip())
    return None if match is None else (int(match.group(1)), int(match.group(2)), int(match.group(3)))


def _dotted(version: tuple[int, int, int]) -> str:
    return ".".join(str(part) for part in version)


# ---------------------------------------------------------------------------------------------
# responses
# ---------------------------------------------------------------------------------------------
class _V2Row(ApiModel):
    trace_id: str
    start_time: datetime
    metadata: dict[str, Any] | None = None


class _V2Page(ApiModel):
    data: list[_V2Row]


class _TraceRow(ApiModel):
    id: str
    timestamp: datetime


class _TracesPage(ApiModel):
    data: list[_TraceRow]


class TraceQueries:
    """The trace reads of one project key (``LangfuseProjectClient.latest_traces`` uses it)."""

    def __init__(self, core: HttpCore, action: Callable[[str], Action]) -> None:
        self._core = core
        self._action = action
        self._path: ReadPath | None = None

    @property
    def host(self) -> str:
        return self._core.host

    def read_path(self) -> ReadPath:
        """``v2`` or ``traces``, from the server's version (one unauthenticated health request)."""
        if self._path is None:
            response = self._core.call(
                "GET", HEALTH_PATH, self._action("read the Langfuse version"), authenticated=False
            )
            health = parse_model(HealthStatus, parse_json(response, self.host, "health response"), self.host, "health")
            version = parse_version(health.version)
            if version is None or version < MIN_TRACES_FILTER_VERSION:
                shown = health.version or "unknown"
                raise LangfuseUnsupportedServerError(
                    f"Langfuse at {self.host} is version {shown}; trace evidence needs Langfuse "
                    f"{_dotted(MIN_TRACES_FILTER_VERSION)} or later (the filter parameter of GET {TRACES_PATH}; "
                    "older servers ignore it)"
                )
            self._path = "v2" if version >= MIN_V2_VERSION else "traces"
        return self._path

    def latest(
        self, match: TraceMatch, since: datetime, public_key: str | None, key: KeySpec, limit: int
    ) -> list[TraceSighting]:
        if not 1 <= limit <= 100:
            raise ValueError("limit must be between 1 and 100")
        if public_key is not None:
            checked_public_key(public_key)
        if self.read_path() == "v2":
            found = self._latest_v2(match, since, public_key, key, limit)
            if found is not None:
                return found
        return self._latest_traces(match, since, public_key, key, limit)

    def _query(self, path: ReadPath, conditions: list[dict[str, Any]], params: dict[str, str]) -> Any:
        url = V2_OBSERVATIONS_PATH if path == "v2" else TRACES_PATH
        response = self._core.call(
            "GET",
            url,
            self._action("read traces"),
            params={**params, "filter": json.dumps(conditions, separators=(",", ":"))},
            accept=(400, 404) if path == "v2" else (400,),
        )
        if response.status_code == 400:
            minimum = MIN_V2_VERSION if path == "v2" else MIN_TRACES_FILTER_VERSION
            raise LangfuseUnsupportedServerError(
                f"Langfuse at {self.host} refused the trace filter on GET {url} "
                f"(400: {server_message(response, self._core.secrets)}); trace evidence needs Langfuse "
                f"{_dotted(minimum)} or later"
            )
        if response.status_code == 404:
            logger.info(
                "Langfuse at %s has no v2 observations API (%s); reading traces via GET %s",
                self.host,
                server_message(response),
                TRACES_PATH,
            )
            self._path = "traces"
            return None
        return parse_json(response, self.host, "trace list")

    def _latest_v2(
        self, match: TraceMatch, since: datetime, public_key: str | None, key: KeySpec, limit: int
    ) -> list[TraceSighting] | None:
        """Newest rows first; one sighting per trace (its newest matching span)."""
        fields = "core" if public_key is not None else "core,metadata"
        conditions = build_filter("v2", match, since, public_key, key)
        data = self._query("v2", conditions, {"fields": fields, "limit": str(limit)})
        if data is None:
            return None
        page = parse_model(_V2Page, data, self.host, "observation list")
        seen: dict[str, TraceSighting] = {}
        for row in page.data:
            if row.trace_id not in seen:
                shown = public_key if public_key is not None else key_from_metadata(row.metadata or {}, key)
                seen[row.trace_id] = TraceSighting(trace_id=row.trace_id, timestamp=row.start_time, public_key=shown)
        return list(seen.values())

    def _latest_traces(
        self, match: TraceMatch, since: datetime, public_key: str | None, key: KeySpec, limit: int
    ) -> list[TraceSighting]:
        """Newest first. Without ``public_key`` the key stays unknown: ``fields=core`` carries no metadata."""
        conditions = build_filter("traces", match, since, public_key, key)
        data = self._query("traces", conditions, {"fields": "core", "limit": str(limit), "page": "1"})
        page = parse_model(_TracesPage, data, self.host, "trace list")
        return [TraceSighting(trace_id=row.id, timestamp=row.timestamp, public_key=public_key) for row in page.data]
