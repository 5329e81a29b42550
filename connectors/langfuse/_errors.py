"""Turning a failed exchange into one secret-free, actionable exception of ``connectors.errors``."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

import httpx
from pydantic import BaseModel, SecretStr, ValidationError

from connectors.errors import (
    LangfuseAnswerTooLargeError,
    LangfuseAuthError,
    LangfuseBadRequestError,
    LangfuseConflictError,
    LangfuseError,
    LangfuseForbiddenError,
    LangfuseNotFoundError,
    LangfuseRateLimitedError,
    LangfuseServerError,
    LangfuseUnreachableError,
)

_MAX_QUOTE = 300
_REDACTED = "[redacted]"

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Action:
    """What a request was for, in the words an error message uses.

    ``doing`` completes "failed to ...", ``credential`` names the key (public part only),
    ``forbidden_hint`` says what a 403 usually means for this client, and ``missing`` names
    the thing a 404 means is absent (``None``: the caller handles 404 itself or it is unexpected).
    """

    doing: str
    credential: str
    forbidden_hint: str
    missing: str | None = None


@dataclass(frozen=True)
class Failure:
    """A request that got no HTTP response.

    ``maybe_sent`` is False only when the request certainly never reached the server
    (connection refused, DNS failure, connect timeout): then even a non-idempotent call may be
    repeated. ``retryable`` is False for failures no retry can fix (e.g. an unsupported scheme).
    """

    reason: str
    maybe_sent: bool
    retryable: bool = True
    refused: bool = False
    """The connection itself failed (refused, no route, unknown name): nothing answered at all."""
    answered: bool = False
    """The server did answer, with an answer refused unread (``reason`` says why and names the
    endpoint): not an unreachable server."""


def redact(text: str, secrets: Iterable[SecretStr]) -> str:
    """``text`` with every secret value replaced, whitespace collapsed and length bounded."""
    for secret in secrets:
        raw = secret.get_secret_value()
        if raw:
            text = text.replace(raw, _REDACTED)
    text = " ".join(text.split())
    if len(text) > _MAX_QUOTE:
        text = text[: _MAX_QUOTE - 3] + "..."
    return text


def server_message(response: httpx.Response, secrets: Iterable[SecretStr] = ()) -> str:
    """The server's own error string.

    Langfuse puts it under ``message`` on most routes and under ``error`` on
    ``/organizations/*`` and the entitlement 403 (some bodies carry both; ``message`` is then
    the human one). Falls back to the HTTP reason phrase for non-JSON bodies.
    """
    text = ""
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("message", "error", "detail", "status"):
            value = body.get(key)
            if isinstance(value, str) and value.strip():
                text = value
                break
    if not text:
        text = response.reason_phrase or f"HTTP {response.status_code}"
    return redact(text, secrets)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: Langfuse sends an integer; an HTTP-date is also accepted.

    ``X-RateLimit-Reset`` is deliberately not used: Langfuse sends a JavaScript
    ``Date.toString()`` there, not an epoch.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def failure_of(exc: httpx.TransportError, timeout_s: float) -> Failure:
    """Classify an httpx transport error (its text never holds request content)."""
    if isinstance(exc, httpx.ConnectTimeout):
        return Failure(f"connect timeout after {timeout_s:g}s", maybe_sent=False)
    if isinstance(exc, httpx.PoolTimeout):
        return Failure("no free connection in the pool", maybe_sent=False)
    if isinstance(exc, httpx.TimeoutException):
        return Failure(f"no response within {timeout_s:g}s", maybe_sent=True)
    if isinstance(exc, httpx.ConnectError):
        detail = " ".join(str(exc).split())[:120]
        return Failure(f"cannot connect ({detail or 'connection failed'})", maybe_sent=False, refused=True)
    if isinstance(exc, httpx.UnsupportedProtocol):
        return Failure("unsupported URL scheme", maybe_sent=False, retryable=False)
    if isinstance(exc, httpx.ProxyError):
        return Failure("proxy error", maybe_sent=False)
    return Failure(f"connection dropped ({type(exc).__name__})", maybe_sent=True)


def answer_refused(host: str, failure: Failure, action: Action) -> LangfuseAnswerTooLargeError:
    return LangfuseAnswerTooLargeError(
        f"Langfuse at {host} answered, but {failure.reason}, so it was refused unread: failed to "
        f"{action.doing}; a retry would get the same answer (more keys or projects than one answer should carry?)"
    )


def unreachable(host: str, failure: Failure, action: Action) -> LangfuseUnreachableError:
    return LangfuseUnreachableError(
        f"Langfuse at {host} is unreachable: failed to {action.doing}: {failure.reason}; "
        "check the host URL, network and that the server is up"
    )


def error_for(
    response: httpx.Response,
    host: str,
    action: Action,
    secrets: Iterable[SecretStr] = (),
    *,
    retry_after_s: float | None = None,
) -> LangfuseError:
    """The exception for a non-2xx response (the caller decides whether to raise it)."""
    status = response.status_code
    quoted = server_message(response, secrets)
    if status == 400:
        return LangfuseBadRequestError(f"Langfuse at {host} rejected the request to {action.doing} (400): {quoted}")
    if status == 401:
        return LangfuseAuthError(
            f"Langfuse at {host} rejected the {action.credential} (401: {quoted}); "
            "check that the key pair is valid, not revoked, and belongs to this host"
        )
    if status == 403:
        return LangfuseForbiddenError(
            f"Langfuse at {host} refused to {action.doing} with the {action.credential} "
            f"(403: {quoted}); {action.forbidden_hint}"
        )
    if status == 404:
        missing = action.missing or "the resource"
        return LangfuseNotFoundError(
            f"{missing[:1].upper()}{missing[1:]} not found on Langfuse at {host} or not visible "
            f"to the {action.credential} (404: {quoted}); failed to {action.doing}"
        )
    if status == 409:
        return LangfuseConflictError(f"Langfuse at {host} refused to {action.doing} (409: {quoted})")
    if status == 429:
        wait = f"; retry after {retry_after_s:g}s" if retry_after_s is not None else ""
        return LangfuseRateLimitedError(
            f"Langfuse at {host} rate-limited the request to {action.doing} (429: {quoted}){wait}",
            retry_after_s=retry_after_s,
        )
    if status >= 500:
        return LangfuseServerError(f"Langfuse at {host} failed to {action.doing} ({status}: {quoted})")
    if 300 <= status < 400:
        location = redact(response.headers.get("location", "?"), secrets)
        return LangfuseError(
            f"Langfuse at {host} redirected the request to {action.doing} ({status} to {location}); "
            "configure the final URL as the host"
        )
    return LangfuseError(f"Langfuse at {host} answered {status} to the request to {action.doing}: {quoted}")


def parse_json(response: httpx.Response, host: str, what: str) -> object:
    try:
        return json.loads(response.content)
    except ValueError:
        raise LangfuseError(
            f"Langfuse at {host} returned a non-JSON {what} (HTTP {response.status_code}); "
            "is the host a Langfuse server?"
        ) from None


def parse_model(model: type[M], data: object, host: str, what: str) -> M:
    """Validate ``data``; on failure name only field paths and error kinds, never values."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc']) or 'body'}: {err['type']}"
            for err in exc.errors(include_url=False, include_input=False, include_context=False)[:5]
        )
        raise LangfuseError(
            f"Langfuse at {host} returned an unexpected {what} ({problems}); "
            "is the host a Langfuse server of a supported version?"
        ) from None
