"""What a project key pair can do: prove it works, prove it is revoked, and round-trip a canary trace."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

import httpx

from connectors.errors import LangfuseCanaryTimeoutError, LangfuseError, LangfuseUnsupportedServerError
from connectors.keypair import KeyPair
from connectors.langfuse._errors import Action, parse_json, parse_model, server_message
from connectors.langfuse._http import ClientBase, Clock, HttpCore, SecretBasicAuth, Sleep
from connectors.langfuse._otlp import canary_request, new_span_id, new_trace_id, normalise_trace_id
from connectors.langfuse.models import ApiModel, CanarySighting, ProbeResult, ProjectInfo, RetryPolicy
from connectors.langfuse.traces import KeySpec, ReadPath, TraceMatch, TraceQueries, TraceSighting

logger = logging.getLogger("connectors.langfuse")

_PROJECT_HINT = "a project-scoped key is required (organization keys cannot use project routes)"
_OTEL_PATH = "/api/public/otel/v1/traces"
_V2_OBSERVATIONS_PATH = "/api/public/v2/observations"


class _Organization(ApiModel):
    id: str


class _Project(ApiModel):
    id: str
    name: str
    organization: _Organization | None = None


class _Projects(ApiModel):
    data: list[_Project]


class _Page(ApiModel):
    data: list[dict[str, Any]]


class LangfuseProjectClient(ClientBase):
    """A client authenticated with one project key pair.

    Reads are retried on 429, 5xx and connection failures within ``retry``; a 401 is never
    retried. ``sleep``/``clock`` drive both the retry pauses and the canary polling.
    """

    def __init__(
        self,
        host: str,
        pair: KeyPair,
        *,
        timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Sleep | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.public_key = pair.public_key
        self._core = HttpCore(
            host,
            auth=SecretBasicAuth(pair.public_key, pair.secret_key),
            secrets=(pair.secret_key,),
            timeout_s=timeout_s,
            retry=retry,
            transport=transport,
            sleep=sleep,
            clock=clock,
        )
        self._read_path: Literal["v2", "traces"] = "v2"
        self._traces = TraceQueries(self._core, lambda doing: self._action(doing))

    def __repr__(self) -> str:
        return f"LangfuseProjectClient(host={self.host!r}, public_key={self.public_key!r})"

    def _action(self, doing: str, missing: str | None = None) -> Action:
        return Action(
            doing=doing,
            credential=f"project key {self.public_key}",
            forbidden_hint=_PROJECT_HINT,
            missing=missing,
        )

    def _project_info(self, response: httpx.Response) -> ProjectInfo:
        data = parse_json(response, self.host, "project list")
        projects = parse_model(_Projects, data, self.host, "project list").data
        if not projects:
            raise LangfuseError(
                f"Langfuse at {self.host} accepted the project key {self.public_key} but listed no project"
            )
        project = projects[0]
        return ProjectInfo(
            id=project.id,
            name=project.name,
            organization_id=project.organization.id if project.organization else None,
        )

    def auth_check(self) -> ProjectInfo:
        """The key's project (``GET /api/public/projects``, which Langfuse never rate-limits).

        Raises ``LangfuseAuthError`` on 401 and ``LangfuseForbiddenError`` on 403 (an organization key).
        """
        response = self._core.call("GET", "/api/public/projects", self._action("check the project key"))
        return self._project_info(response)

    def probe(self) -> ProbeResult:
        """Is this key accepted right now? For proving that a revoked key is rejected.

        One authenticated request; only a 429, 5xx or connection failure (no verdict on the key)
        is retried. Each accepted probe refreshes a stale cache entry on older servers, so do
        not poll with it. 401 gives ``accepted=False``; 200, and 403 (the key authenticated
        but is an organization key), give ``accepted=True``. Anything else raises.
        """
        action = self._action("probe the project key")
        outcome = self._core.exchange("GET", "/api/public/projects")
        if isinstance(outcome, httpx.Response):
            status = outcome.status_code
            if status == 401:
                return ProbeResult(accepted=False, status_code=status)
            if status == 403:
                return ProbeResult(accepted=True, status_code=status)
            if 200 <= status < 300:
                try:
                    project_id: str | None = self._project_info(outcome).id
                except LangfuseError:
                    project_id = None
                return ProbeResult(accepted=True, status_code=status, project_id=project_id)
        raise self._core.error(outcome, action)

    def send_canary(
        self,
        trace_id: str | None = None,
        *,
        name: str = "rotation-canary",
        attributes: dict[str, str] | None = None,
    ) -> str:
        """Send one span through OTLP/HTTP JSON on the v4 real-time path; return its trace id.

        Resending the same trace and span id is an upsert, so 429/5xx/connection failures are
        retried. The response body is not parsed (Langfuse returns whatever its queue returns).
        """
        trace = normalise_trace_id(trace_id) if trace_id is not None else new_trace_id()
        body = canary_request(trace, new_span_id(), name, dict(attributes or {}), time.time_ns())
        self._core.call(
            "POST",
            _OTEL_PATH,
            self._action(f"send canary trace {trace}"),
            json=body,
            headers={"Content-Type": "application/json", "x-langfuse-ingestion-version": "4"},
        )
        return trace

    def canary_visible(self, trace_id: str) -> bool:
        """Is the trace readable yet? v2 observations API; on a v3 server, ``GET /traces/{id}``.

        A 404 from the v2 API (a v3 server says it needs a v4 write mode) switches this client
        to the deprecated traces API for good; a 404 there means "not yet".
        """
        return self._read_canary(normalise_trace_id(trace_id), None) is not None

    def read_canary(self, trace_id: str, *, within_s: float | None = None) -> CanarySighting | None:
        """One read of the canary (as ``canary_visible``): None while it is not readable, else the
        project ids its rows name. ``within_s``: retries of this read (429, 5xx) stay within it."""
        policy = None
        if within_s is not None:
            policy = self._core.retry.model_copy(
                update={"max_total_s": max(min(self._core.retry.max_total_s, within_s), 0.0)}
            )
        return self._read_canary(normalise_trace_id(trace_id), policy)

    def _read_canary(self, trace: str, policy: RetryPolicy | None) -> CanarySighting | None:
        if self._read_path == "v2":
            response = self._core.call(
                "GET",
                _V2_OBSERVATIONS_PATH,
                self._action(f"read canary trace {trace}"),
                params={"traceId": trace},
                accept=(404,),
                policy=policy,
            )
            if response.status_code != 404:
                page = parse_model(
                    _Page, parse_json(response, self.host, "observation list"), self.host, "observation list"
                )
                rows = [item for item in page.data if item.get("traceId", trace) == trace]
                return _sighting(rows) if rows else None
            logger.info(
                "Langfuse at %s has no v2 observations API (%s); reading traces via GET /api/public/traces",
                self.host,
                server_message(response),
            )
            self._read_path = "traces"
        response = self._core.call(
            "GET",
            f"/api/public/traces/{quote(trace, safe='')}",
            self._action(f"read canary trace {trace}"),
            accept=(404,),
            policy=policy,
        )
        if response.status_code != 404:
            body = parse_json(response, self.host, "trace")
            return _sighting([body] if isinstance(body, dict) else [])
        message = server_message(response)
        if "events_only" in message:
            raise LangfuseUnsupportedServerError(
                f"Langfuse at {self.host} offers neither the v2 observations API nor GET /traces "
                f"(404: {message}); cannot read the canary back"
            )
        return None

    def wait_for_canary(
        self,
        trace_id: str,
        *,
        timeout_s: float,
        initial_poll_s: float = 0.2,
        max_poll_s: float = 2.0,
        first_poll_after_s: float = 0.0,
    ) -> float:
        """Poll ``canary_visible`` with doubling pauses; seconds until visible. ``first_poll_after_s``:
        wait that long before the first poll (a trace is never readable at once; saves a request).

        Raises ``LangfuseCanaryTimeoutError`` once ``timeout_s`` has passed without the trace.
        Retries of a poll (429 on the read API's rate limit, 5xx) also stay within ``timeout_s``;
        if they cannot, the poll's own error (e.g. ``LangfuseRateLimitedError``) is raised.
        """
        trace = normalise_trace_id(trace_id)
        clock, sleep = self._core.clock, self._core.sleep
        start = clock()
        pause = max(initial_poll_s, 0.0)
        if first_poll_after_s > 0:
            sleep(min(first_poll_after_s, timeout_s))
        while True:
            budget = self._core.retry.model_copy(
                update={"max_total_s": max(min(self._core.retry.max_total_s, timeout_s - (clock() - start)), 0.0)}
            )
            if self._read_canary(trace, budget) is not None:
                return clock() - start
            waited = clock() - start
            remaining = timeout_s - waited
            if remaining <= 0:
                raise LangfuseCanaryTimeoutError(
                    f"Canary trace {trace} sent with project key {self.public_key} was not readable on "
                    f"Langfuse at {self.host} after {waited:.1f}s; ingestion may be delayed or stuck "
                    "(check the worker), or raise the timeout",
                    trace_id=trace,
                    waited_s=waited,
                )
            sleep(min(pause, remaining))
            pause = min(max(pause * 2, 0.01), max_poll_s)

    def trace_read_path(self) -> ReadPath:
        """Where trace evidence is read on this server (``v2`` or ``traces``), from its version.

        Raises ``LangfuseUnsupportedServerError`` for a server older than 3.116.1 (it would ignore
        the filter) or one whose health endpoint names no version.
        """
        return self._traces.read_path()

    def latest_traces(
        self,
        match: TraceMatch,
        since: datetime,
        *,
        public_key: str | None = None,
        key: KeySpec | None = None,
        limit: int = 5,
    ) -> list[TraceSighting]:
        """The newest traces matching ``match`` with a timestamp at or after ``since`` (aware),
        newest first, at most ``limit`` (1-100) rows asked for.

        With ``public_key``: only traces sent with that key as ``key`` shows it (default ``sdk``);
        every sighting then names that key. Without: all matching traces, each naming the key read
        from its metadata where the read path returns metadata (v2), else ``None``; a value that is
        not a ``pk-lf-`` key is ignored. One request (plus one health request the first time), through
        the client's pacing, retries and response cap; ``fields=core`` so no trace input or output is
        downloaded. A server that refuses the filter (400) raises ``LangfuseUnsupportedServerError``
        naming the minimum Langfuse version; never an empty answer.
        """
        return self._traces.latest(match, since, public_key, key or KeySpec(), limit)


def _sighting(rows: list[dict[str, Any]]) -> CanarySighting:
    """The project ids the rows of a canary name, in order, each once."""
    ids = [row.get("projectId") for row in rows]
    return CanarySighting(project_ids=tuple(dict.fromkeys(i for i in ids if isinstance(i, str) and i)))
