"""Consuming services: restart them onto the new key and watch their health endpoints switch.

A consumer is any service that reads the Langfuse key pair from the secret store and reports
the public key it currently uses on a health endpoint (``{"langfuse_public_key": "pk-lf-..."}``
or a nested field named by a dotted path). The rotation restarts each consumer through its
optional restart hook, then waits until every one reports the new public key.

A restart hook is either a URL (``POST``) or a command (``restart_command``: an argv list run
without a shell, e.g. ``kubectl rollout restart deployment/api``): exit code 0 is a restart, any
other exit code or the timeout a failed one. The command's output goes to the log only, redacted
(header values, anything shaped like a secret key or bearer token) and cut to its last lines.
Requests to a consumer can carry ``headers`` (e.g. ``Authorization``): secrets, never logged.

Consumers are other teams' services, so every answer is treated as untrusted: bodies are never
quoted in messages (a misbehaving consumer could echo its secret), only facts such as
``HTTP 500``, ``invalid JSON`` or ``field X missing``; a reported value that is not a public key
(``pk-lf-`` and letters, digits, dashes) counts as no key and is never shown. ``observe`` and ``wait_for_public_key``
never raise; ``restart`` raises ``ConsumerError`` with a one-line message.

Every request to a consumer (health check or restart hook) ends within the consumer's
``timeout_s`` as a whole, however slowly the consumer answers (``connectors.http_limits``), and
reads at most 64 KiB of body; no redirect is followed, no proxy from the environment is used.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import httpx
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from connectors.errors import ConsumerError
from connectors.http_limits import BodyTooLargeError, deadline, deadline_transport, read_capped
from connectors.keypair import is_public_key
from connectors.tls import shared_ssl_context
from connectors.urls import RedactedUrl

__all__ = ["Consumer", "ConsumerClient", "ConsumerObservation", "WaitOutcome"]

_MAX_PARALLEL_OBSERVATIONS = 16
_COMMAND_TIMEOUT_S = 60.0
_OUTPUT_TAIL_BYTES = 4096
_OUTPUT_LOG_CHARS = 500
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_SECRET_SHAPES = re.compile(
    r"(sk-lf-[A-Za-z0-9_-]{4,}"
    r"|(?i:bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"
    r"|(?i:token|secret|password|passwd|api[_-]?key)\s*[=:]\s*\S+)"
)
_log = logging.getLogger("langfuse_rotate.consumers")
MAX_BODY_BYTES = 64 * 1024
"""A health answer is a small JSON document; anything larger is refused unread."""


class Consumer(BaseModel):
    """One configured consuming service."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    health_url: Annotated[str, AfterValidator(RedactedUrl)] | None = None
    """May carry credentials (user-info, a query token): ``repr`` hides them, messages never name URLs.
    None: the consumer has no health endpoint (its traces are its evidence); observing it says so."""
    public_key_field: str = "langfuse_public_key"
    """Field of the health JSON holding the public key; a dotted path reaches into objects."""
    restart_url: Annotated[str, AfterValidator(RedactedUrl)] | None = None
    """Optional hook that restarts the service (``POST``); without it the rotation only waits."""
    restart_command: tuple[str, ...] | None = None
    """Or a command that restarts it: an argv list, run without a shell."""
    restart_timeout_s: float | None = Field(default=None, gt=0)
    """Deadline of the restart hook; default ``timeout_s`` for a URL, 60 s for a command."""
    headers: dict[str, SecretStr] = {}
    """Sent with the restart and health requests (e.g. ``Authorization``); secrets."""
    timeout_s: float = Field(default=5.0, gt=0)

    @field_validator("restart_command", mode="before")
    @classmethod
    def _argv_not_shell(cls, value: Any) -> Any:
        return check_not_shell_string(value)

    @field_validator("restart_command")
    @classmethod
    def _argv_not_empty(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return check_argv(value)

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        return check_headers(value)

    @model_validator(mode="after")
    def _one_restart_hook(self) -> Consumer:
        if self.restart_url is not None and self.restart_command is not None:
            raise ValueError("give restart_url or restart_command, not both")
        return self

    def request_headers(self) -> dict[str, str]:
        return {name: secret.get_secret_value() for name, secret in self.headers.items()}


def check_not_shell_string(value: Any) -> Any:
    """``restart_command`` is an argv list: a string would need a shell to split it."""
    if isinstance(value, str):
        raise ValueError("must be a list of arguments (argv), not a shell string")
    return value


_Argv = TypeVar("_Argv", bound=Sequence[str] | None)


def check_argv(value: _Argv) -> _Argv:
    if value is not None and (not value or not value[0].strip()):
        raise ValueError("must name the program to run as its first item")
    if value is not None and any("\0" in part for part in value):
        raise ValueError("arguments cannot contain NUL characters")
    return value


def check_headers(value: dict[str, SecretStr]) -> dict[str, SecretStr]:
    for name, secret in value.items():
        if not _HEADER_NAME.match(name):
            raise ValueError(f"{name!r} is not a valid HTTP header name")
        if any(char in secret.get_secret_value() for char in "\r\n\0"):
            raise ValueError(f"header {name} has a line break or NUL in its value")
    return value


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


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _tail(output: Any, consumer: Consumer) -> str:
    """The end of a command's output as one redacted line of at most ``_OUTPUT_LOG_CHARS``."""
    output.seek(0, os.SEEK_END)
    size = output.tell()
    output.seek(max(0, size - _OUTPUT_TAIL_BYTES))
    text = output.read().decode("utf-8", errors="replace")
    for secret in consumer.headers.values():
        raw = secret.get_secret_value()
        for part in sorted({raw, *raw.split()}, key=len, reverse=True):  # "Bearer <token>": the token too
            if len(part) >= 8:
                text = text.replace(part, "***")
    text = _SECRET_SHAPES.sub("***", text)
    line = " | ".join(part.strip() for part in text.splitlines() if part.strip())
    if not line:
        return "(none)"
    if len(line) > _OUTPUT_LOG_CHARS or size > _OUTPUT_TAIL_BYTES:
        line = "..." + line[-_OUTPUT_LOG_CHARS:]
    return line


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
        self._http = httpx.Client(
            transport=transport if transport is not None else deadline_transport(verify=shared_ssl_context()),
            follow_redirects=False,
            trust_env=False,
        )
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
        """Restart the consumer through its hook (``POST restart_url`` or ``restart_command``);
        a no-op without one.

        Raises ``ConsumerError`` on a transport failure, a timeout, a non-2xx answer, or a
        command that cannot start or exits non-zero.
        """
        if consumer.restart_command is not None:
            self._run_restart_command(consumer, consumer.restart_command)
            return
        if consumer.restart_url is None:
            return
        timeout_s = consumer.restart_timeout_s or consumer.timeout_s
        try:
            with deadline(timeout_s):
                request = self._http.build_request(
                    "POST", consumer.restart_url, timeout=timeout_s, headers=consumer.request_headers()
                )
                response = self._http.send(request, stream=True)
                try:
                    read_capped(response, MAX_BODY_BYTES)
                except BodyTooLargeError:
                    pass  # the status is the answer; the body is not read further
                finally:
                    response.close()
        except httpx.HTTPError as exc:
            detail = _describe_transport_error(exc, timeout_s)
            raise ConsumerError(f"consumer {consumer.name!r}: restart hook {detail}") from None
        if not response.is_success:
            raise ConsumerError(f"consumer {consumer.name!r}: restart hook answered HTTP {response.status_code}")

    def _run_restart_command(self, consumer: Consumer, argv: tuple[str, ...]) -> None:
        """Run ``argv`` (no shell) in its own process group; the whole group is killed at the
        deadline. Output goes to a temporary file (never a pipe that could fill up) and only its
        tail is read back, for the log."""
        timeout_s = consumer.restart_timeout_s or _COMMAND_TIMEOUT_S
        program = os.path.basename(argv[0])
        prefix = f"consumer {consumer.name!r}: restart command {program!r}"
        with tempfile.TemporaryFile() as output:
            try:
                process = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except FileNotFoundError:
                raise ConsumerError(f"{prefix} not found") from None
            except OSError as exc:
                raise ConsumerError(f"{prefix} could not start ({exc.strerror or type(exc).__name__})") from None
            try:
                code = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                limit = _format_seconds(timeout_s)
                _log.warning("%s timed out after %s; output: %s", prefix, limit, _tail(output, consumer))
                raise ConsumerError(f"{prefix} timed out after {limit}") from None
            if code != 0:
                _log.warning("%s exited with code %d; output: %s", prefix, code, _tail(output, consumer))
                raise ConsumerError(f"{prefix} exited with code {code}")
            _log.info("%s succeeded; output: %s", prefix, _tail(output, consumer))

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
        if consumer.health_url is None:
            return None, "no health endpoint configured"
        try:
            with deadline(consumer.timeout_s):
                request = self._http.build_request(
                    "GET",
                    consumer.health_url,
                    timeout=consumer.timeout_s,
                    headers={"Accept": "application/json", "Accept-Encoding": "identity", **consumer.request_headers()},
                )
                response = self._http.send(request, stream=True)
                try:
                    if not response.is_success:
                        return None, f"health check answered HTTP {response.status_code}"
                    body = read_capped(response, MAX_BODY_BYTES)
                finally:
                    response.close()
        except httpx.HTTPError as exc:
            return None, f"health check {_describe_transport_error(exc, consumer.timeout_s)}"
        except BodyTooLargeError:
            return None, f"health check answered more than {MAX_BODY_BYTES // 1024} KiB"
        try:
            document = json.loads(body)
        except ValueError:  # json.JSONDecodeError and UnicodeDecodeError both subclass it
            return None, "health check answered invalid JSON"
        value, error = _extract_field(document, consumer.public_key_field)
        if error is not None:
            return None, f"health check: {error}"
        if not isinstance(value, str):
            return None, f"health check: field {consumer.public_key_field!r} is not a string"
        if not value:
            return None, f"health check: field {consumer.public_key_field!r} is empty"
        if not is_public_key(value):
            # Another team's answer, never shown: a consumer reporting anything but a public key
            # counts as one whose key is unknown (a rollback then keeps the key it may be on).
            return (
                None,
                f"health check: field {consumer.public_key_field!r} reported <invalid>, not a Langfuse public key",
            )
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
        on_round: Callable[[dict[str, str | None], list[str], float], None] | None = None,
    ) -> WaitOutcome:
        """Poll every consumer until each has reported ``expected_public_key`` or time runs out.

        Consumers are polled in parallel; once a consumer reports the expected key it counts as
        switched and is not polled again. Between rounds the delay doubles from
        ``initial_poll_s`` up to ``max_poll_s`` and never sleeps past the deadline; a final round
        runs at the deadline. Each probe ends within its consumer's ``timeout_s`` however slowly the
        consumer answers, so the wait ends at the latest one probe timeout after ``timeout_s``.
        Never raises.
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
                if on_round is not None:  # progress: who switched, who is awaited, time left
                    on_round(dict(last_seen), [c.name for c in pending], remaining)
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
