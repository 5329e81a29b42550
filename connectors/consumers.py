"""Consuming services: restart them onto the new key and watch their health endpoints switch.

A consumer is any service that reads the Langfuse key pair from the secret store and reports
the public key it currently uses on a health endpoint (``{"langfuse_public_key": "pk-lf-..."}``
or a nested field named by a dotted path). The rotation restarts each consumer through its
optional restart hook, then waits until every one reports the new public key.

Consumers are other teams' services, so every answer is treated as untrusted: bodies are never
quoted in messages (a misbehaving consumer could echo its secret), only facts such as
``HTTP 500``, ``invalid JSON`` or ``field X missing``. ``observe`` and ``wait_for_public_key``
never raise; ``restart`` raises ``ConsumerError`` with a one-line message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from connectors.errors import ConsumerError

__all__ = ["Consumer", "ConsumerClient", "ConsumerObservation", "WaitOutcome"]

_MAX_PARALLEL_OBSERVATIONS = 16


class Consumer(BaseModel):
    """One configured consuming service."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    health_url: str
    public_key_field: str = "langfuse_public_key"
    """Field of the health JSON holding the public key; a dotted path reaches into objects."""
    restart_url: str | None = None
    """Optional hook that restarts the service (``POST``); without it the rotation only waits."""
    timeout_s: float = Field(default=5.0, gt=0)


class ConsumerObservation(BaseModel):
    """What one health check saw: the public key in use, or why none could be read."""

    model_config = ConfigDict(frozen=True)

    name: str
    public_key: str | None
    error: str | None
    observed_at: datetime


class WaitOutcome(BaseModel):
    """Result of waiting for every consumer to report the expected public key."""

    model_config = ConfigDict(frozen=True)

    all_switched: bool
    last_seen: dict[str, str | None]
    """Consumer name to the public key it reported last (None if it never answered usefully)."""
    errors: dict[str, str]
    """Latest error of each consumer that had not switched when the wait ended."""
    elapsed_s: float
    lagging: list[str]
    """Consumers that had not reported the expected key, in configuration order."""


def _format_seconds(seconds: float) -> str:
    return f"{seconds:g}s"


def _describe_transport_error(exc: httpx.HTTPError, timeout_s: float) -> str:
    """A one-line, URL-free description of a transport failure."""
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out after {_format_seconds(timeout_s)}"
    if isinstance(exc, httpx.ConnectError):
        return "connection failed (refused or unreachable)"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "connection closed without a valid HTTP response"
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return "invalid URL"
    return f"request failed ({type(exc).__name__})"


def _extract_field(document: Any, dotted_path: str) -> tuple[Any, str | None]:
    """Look up ``dotted_path`` in a JSON document: (value, None) or (None, error).

    A literal top-level key containing dots wins over the dotted interpretation.
    """
    if isinstance(document, dict) and dotted_path in document:
        return document[dotted_path], None
    current = document
    for part in dotted_path.split("."):
        if not isinstance(current, dict) or part not in current:
            return None, f"field {dotted_path!r} missing"
        current = current[part]
    return current, None


class ConsumerClient:
    """Restarts consumers and reads the public key they report.

    ``transport``, ``sleep`` and ``clock`` are injectable for tests; by default real HTTP,
    ``time.sleep`` and ``time.monotonic`` are used.
    """

    def __init__(
        self,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = httpx.Client(transport=transport, follow_redirects=False)
        self._sleep = sleep
        self._clock = clock

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ConsumerClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- restart --------------------------------------------------------------------------------

    def restart(self, consumer: Consumer) -> None:
        """Ask the consumer to restart (``POST restart_url``); a no-op without a restart hook.

        Raises ``ConsumerError`` on a transport failure, a timeout or a non-2xx answer.
        """
        if consumer.restart_url is None:
            return
        try:
            response = self._http.post(consumer.restart_url, timeout=consumer.timeout_s)
        except httpx.HTTPError as exc:
            detail = _describe_transport_error(exc, consumer.timeout_s)
            raise ConsumerError(f"consumer {consumer.name!r}: restart hook {detail}") from None
        if not response.is_success:
            raise ConsumerError(f"consumer {consumer.name!r}: restart hook answered HTTP {response.status_code}")

    # --- observe --------------------------------------------------------------------------------

    def observe(self, consumer: Consumer) -> ConsumerObservation:
        """Read the public key the consumer reports on its health endpoint. Never raises."""
        public_key: str | None = None
        try:
            public_key, error = self._read_public_key(consumer)
        except Exception as exc:  # defensive: observing must never break a rotation
            error = f"unexpected error ({type(exc).__name__})"
        return ConsumerObservation(
            name=consumer.name,
            public_key=public_key,
            error=error,
            observed_at=datetime.now(UTC),
        )

    def _read_public_key(self, consumer: Consumer) -> tuple[str | None, str | None]:
        try:
            response = self._http.get(
                consumer.health_url,
                timeout=consumer.timeout_s,
                headers={"Accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            return None, f"health check {_describe_transport_error(exc, consumer.timeout_s)}"
        if not response.is_success:
            return None, f"health check answered HTTP {response.status_code}"
        try:
            document = response.json()
        except ValueError:  # json.JSONDecodeError and UnicodeDecodeError both subclass it
            return None, "health check answered invalid JSON"
        value, error = _extract_field(document, consumer.public_key_field)
        if error is not None:
            return None, f"health check: {error}"
        if not isinstance(value, str):
            return None, f"health check: field {consumer.public_key_field!r} is not a string"
        if not value:
            return None, f"health check: field {consumer.public_key_field!r} is empty"
        return value, None

    # --- wait -----------------------------------------------------------------------------------

    def wait_for_public_key(
        self,
        consumers: Sequence[Consumer],
        expected_public_key: str,
        *,
        timeout_s: float,
        initial_poll_s: float = 0.5,
        max_poll_s: float = 10.0,
    ) -> WaitOutcome:
        """Poll every consumer until each has reported ``expected_public_key`` or time runs out.

        Consumers are polled in parallel; once a consumer reports the expected key it counts as
        switched and is not polled again. Between rounds the delay doubles from
        ``initial_poll_s`` up to ``max_poll_s`` and never sleeps past the deadline; a final round
        runs at the deadline. Never raises.
        """
        start = self._clock()
        last_seen: dict[str, str | None] = {c.name: None for c in consumers}
        errors: dict[str, str] = {}
        pending = list(consumers)
        delay = max(initial_poll_s, 0.001)
        ceiling = max(max_poll_s, delay)
        deadline = start + max(timeout_s, 0.0)
        try:
            while pending:
                for consumer, observation in zip(pending, self._observe_all(pending), strict=True):
                    if observation.public_key is not None:
                        last_seen[consumer.name] = observation.public_key
                    if observation.error is not None:
                        errors[consumer.name] = observation.error
                    else:
                        errors.pop(consumer.name, None)
                pending = [c for c in pending if last_seen[c.name] != expected_public_key]
                remaining = deadline - self._clock()
                if not pending or remaining <= 0:
                    break
                self._sleep(min(delay, remaining))
                delay = min(delay * 2, ceiling)
        except Exception as exc:  # defensive: report rather than raise
            for consumer in pending:
                errors.setdefault(consumer.name, f"wait aborted ({type(exc).__name__})")
        lagging = [c.name for c in consumers if last_seen[c.name] != expected_public_key]
        return WaitOutcome(
            all_switched=not lagging,
            last_seen=last_seen,
            errors={name: errors[name] for name in lagging if name in errors},
            elapsed_s=round(self._clock() - start, 3),
            lagging=lagging,
        )

    def _observe_all(self, consumers: Sequence[Consumer]) -> list[ConsumerObservation]:
        """Observe consumers concurrently so one hanging consumer does not delay the others."""
        if len(consumers) == 1:
            return [self.observe(consumers[0])]
        workers = min(len(consumers), _MAX_PARALLEL_OBSERVATIONS)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="consumer-observe") as pool:
            return list(pool.map(self.observe, consumers))
