"""One httpx client per connector object: authentication, bounded retries, error mapping.

Secrets live only in ``SecretStr`` and are turned into an ``Authorization`` header inside
the auth flow of each request; they never appear in the client's default headers, in a
log line or in an exception message.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from types import TracebackType
from typing import Any, Self

import httpx
from pydantic import SecretStr

from connectors import pacing
from connectors.errors import LangfuseError
from connectors.http_limits import BodyTooLargeError, deadline, deadline_transport, read_capped
from connectors.langfuse._errors import (
    Action,
    Failure,
    answer_refused,
    error_for,
    failure_of,
    parse_retry_after,
    unreachable,
)
from connectors.langfuse.models import RetryPolicy
from connectors.tls import shared_ssl_context

logger = logging.getLogger("connectors.langfuse")

Sleep = Callable[[float], None]
Clock = Callable[[], float]
Outcome = httpx.Response | Failure

_answered: set[str] = set()
_answered_lock = threading.Lock()


def has_answered(host: str) -> bool:
    """Whether ``host`` (as ``display_host`` shows it) answered any request in this process."""
    with _answered_lock:
        return host in _answered


def _mark_answered(host: str) -> None:
    with _answered_lock:
        _answered.add(host)


def forget_answered_hosts() -> None:
    """For tests: every host counts as never contacted again."""
    with _answered_lock:
        _answered.clear()


USER_AGENT = "langfuse-key-rotation"
MAX_BODY_BYTES = 16 * 1024 * 1024
"""Larger than any key or project list an organization has; a bigger answer is refused unread."""


class SecretBasicAuth(httpx.Auth):
    """HTTP Basic with a ``SecretStr`` password, encoded per request."""

    def __init__(self, username: str, password: SecretStr) -> None:
        self._username = username
        self._password = password

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raw = f"{self._username}:{self._password.get_secret_value()}".encode()
        request.headers["Authorization"] = "Basic " + base64.b64encode(raw).decode("ascii")
        yield request

    def __repr__(self) -> str:
        return f"SecretBasicAuth(username={self._username!r}, password=SecretStr('**********'))"


class SecretBearerAuth(httpx.Auth):
    """``Authorization: Bearer <token>`` from a ``SecretStr``."""

    def __init__(self, token: SecretStr) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = "Bearer " + self._token.get_secret_value()
        yield request

    def __repr__(self) -> str:
        return "SecretBearerAuth(token=SecretStr('**********'))"


def display_host(host: str) -> str:
    """Validate ``host`` and return it as shown in messages: scheme, host, port, path; no userinfo."""
    try:
        url = httpx.URL(host)
    except httpx.InvalidURL:
        raise ValueError("Langfuse host is not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("Langfuse host must be an http:// or https:// URL, e.g. https://cloud.langfuse.com")
    if url.userinfo:
        raise ValueError("Langfuse host must not contain credentials; pass keys separately")
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.scheme}://{url.host}{port}{url.path.rstrip('/')}"


def too_large_reason(method: str, path: str, exc: BodyTooLargeError) -> str:
    """What was wrong with an answer refused unread, naming the endpoint (method and path, no query)."""
    endpoint = f"{method} {path.split('?', 1)[0]}"
    if exc.encoding is not None:
        return f"its answer to {endpoint} is compressed ({exc.encoding}), so its size cannot be capped"
    declared = f" (Content-Length {exc.declared})" if exc.declared is not None else ""
    return f"its answer to {endpoint} is larger than the {MAX_BODY_BYTES // (1024 * 1024)} MiB cap{declared}"


def is_retryable_status(status: int) -> bool:
    return status == 429 or (status >= 500 and status not in (501, 505))


class Backoff:
    """Counts failed attempts of one logical call and says how long to wait before the next."""

    def __init__(self, policy: RetryPolicy, clock: Clock) -> None:
        self._policy = policy
        self._clock = clock
        self._start = clock()
        self.failed = 0

    def next_delay(self, retry_after_s: float | None = None) -> float | None:
        """Record one failed attempt; the pause before the next, or ``None`` when out of budget."""
        self.failed += 1
        if self.failed >= self._policy.max_attempts:
            return None
        delay = self._policy.backoff_delay(self.failed, retry_after_s)
        if self._clock() - self._start + delay > self._policy.max_total_s:
            return None
        return delay

    @property
    def max_attempts(self) -> int:
        return self._policy.max_attempts


class HttpCore:
    """The shared plumbing of the three clients (not part of the public API)."""

    def __init__(
        self,
        host: str,
        *,
        auth: httpx.Auth | None,
        secrets: Iterable[SecretStr],
        timeout_s: float,
        retry: RetryPolicy | None,
        transport: httpx.BaseTransport | None,
        sleep: Sleep | None,
        clock: Clock | None,
    ) -> None:
        self.host = display_host(host)
        self.timeout_s = timeout_s
        self.retry = retry if retry is not None else RetryPolicy()
        self.secrets = tuple(secrets)
        self.sleep: Sleep = sleep if sleep is not None else time.sleep
        self.clock: Clock = clock if clock is not None else time.monotonic
        self._auth = auth
        # Each request ends within timeout_s as a whole (connectors.http_limits), reads at most
        # MAX_BODY_BYTES, and never follows a redirect (it would re-send the key elsewhere).
        self._client = httpx.Client(
            base_url=self.host,
            timeout=timeout_s,
            transport=transport if transport is not None else deadline_transport(verify=shared_ssl_context()),
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            follow_redirects=False,
            verify=shared_ssl_context(),
        )

    def close(self) -> None:
        self._client.close()

    def backoff(self, policy: RetryPolicy | None = None) -> Backoff:
        return Backoff(policy if policy is not None else self.retry, self.clock)

    def send_once(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        authenticated: bool = True,
    ) -> Outcome:
        """Exactly one request. Transport errors come back as a ``Failure`` value, never raised.
        A fleet run paces it (``connectors.pacing``); a 429 pauses the whole fleet."""
        pace_key = pacing.langfuse_key(self.host)
        pacing.before_request(pace_key)
        try:
            with deadline(self.timeout_s):
                request = self._client.build_request(
                    method, path, json=json, content=content, params=params, headers=headers
                )
                streamed = self._client.send(request, auth=self._auth if authenticated else None, stream=True)
                try:
                    body = read_capped(streamed, MAX_BODY_BYTES)
                finally:
                    streamed.close()
        except httpx.TransportError as exc:
            return failure_of(exc, self.timeout_s)
        except BodyTooLargeError as exc:
            return Failure(too_large_reason(method, path, exc), maybe_sent=True, retryable=False, answered=True)
        response = httpx.Response(
            streamed.status_code,
            headers=streamed.headers,
            content=body,
            request=streamed.request,
            extensions=streamed.extensions,
        )
        _mark_answered(self.host)
        if response.status_code == 429:
            pacing.rate_limited(pace_key, parse_retry_after(response.headers.get("retry-after")))
        return response

    def exchange(
        self,
        method: str,
        path: str,
        *,
        retry: bool = True,
        json: Any = None,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        authenticated: bool = True,
        policy: RetryPolicy | None = None,
    ) -> Outcome:
        """Send, retrying 429/5xx/transport failures within the policy when ``retry`` is set.

        Only for calls that are safe to repeat; ``policy`` overrides the client's for this call.
        Returns the last outcome either way. A host that has not answered once in this process and
        refuses the connection is not retried: nothing listens there (a wrong URL, a server that
        is down), and every call would wait out the whole backoff only to say so. Once a host has
        answered, a refused connection is a restart to ride out, and is retried.
        Retries are logged at debug level; the caller reports the call that finally failed.
        """
        backoff = self.backoff(policy)
        while True:
            outcome = self.send_once(
                method,
                path,
                json=json,
                content=content,
                params=params,
                headers=headers,
                authenticated=authenticated,
            )
            if isinstance(outcome, httpx.Response):
                if not is_retryable_status(outcome.status_code):
                    return outcome
                what = f"HTTP {outcome.status_code}"
                retry_after = parse_retry_after(outcome.headers.get("retry-after"))
            else:
                if not outcome.retryable or (outcome.refused and not has_answered(self.host)):
                    return outcome
                what = outcome.reason
                retry_after = None
            delay = backoff.next_delay(retry_after) if retry else None
            if delay is None:
                return outcome
            self.log_retry(method, path, what, delay, backoff)
            self.sleep(delay)

    def log_retry(self, method: str, path: str, what: str, delay: float, backoff: Backoff) -> None:
        logger.debug(
            "Langfuse %s %s%s: %s; retrying in %.2fs (attempt %d of %d)",
            method,
            self.host,
            path,
            what,
            delay,
            backoff.failed + 1,
            backoff.max_attempts,
        )

    def error(self, outcome: Outcome, action: Action) -> LangfuseError:
        """The exception for a failed outcome."""
        if isinstance(outcome, Failure) and outcome.answered:
            return answer_refused(self.host, outcome, action)
        if isinstance(outcome, Failure):
            return unreachable(self.host, outcome, action)
        retry_after = parse_retry_after(outcome.headers.get("retry-after"))
        return error_for(outcome, self.host, action, self.secrets, retry_after_s=retry_after)

    def call(
        self,
        method: str,
        path: str,
        action: Action,
        *,
        retry: bool = True,
        accept: Iterable[int] = (),
        json: Any = None,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        authenticated: bool = True,
        policy: RetryPolicy | None = None,
    ) -> httpx.Response:
        """``exchange`` then raise for anything but a 2xx or a status listed in ``accept``."""
        outcome = self.exchange(
            method,
            path,
            retry=retry,
            json=json,
            content=content,
            params=params,
            headers=headers,
            authenticated=authenticated,
            policy=policy,
        )
        if isinstance(outcome, httpx.Response) and (
            200 <= outcome.status_code < 300 or outcome.status_code in set(accept)
        ):
            return outcome
        raise self.error(outcome, action)


class ClientBase:
    """What every Langfuse client shares: its host, and closing its connection pool."""

    _core: HttpCore

    @property
    def host(self) -> str:
        return self._core.host

    def close(self) -> None:
        self._core.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
