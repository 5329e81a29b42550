"""The narrow path for secret scanners to raise a compromise (docs/trust-boundary.md, point 4).

A scanner should not hold the Prefect API key: that key (or auth string) is full admin, so whoever
holds it can start any deployment with any job variables. This small HTTP endpoint holds it
instead, and can do nothing with it but post one checked ``langfuse.key.compromised`` event::

    python -m flows.trigger.forwarder --config rotation.yaml --listen 127.0.0.1:8765 \\
        --token-file /etc/langfuse-rotate/scanner-token

It accepts only ``POST /compromised`` with a bearer token (compared in constant time) and the JSON
``{"project": "<entry>", "public_key": "pk-lf-...", "source": "<optional>"}``, where ``project`` is
a configured entry name. Everything else is refused with a 4xx and a one-line JSON error, and
posts nothing. At most ``--per-minute`` reports per entry are forwarded each minute. Each request
is logged in one line without secrets: the scanner's token, the Prefect credential and anything
the caller sent that was not checked are never logged or answered back.

Slow or many clients cannot hold it down: each request has one deadline for its request line,
headers and body together (``--request-timeout``; past it: 408 and closed), the token is checked
as soon as the headers are in (a client without it never gets to send a body), and at most
``--max-connections`` connections are served at once, at most ``--max-per-client`` from one client
address; a connection past either cap is answered 503 at once by the accepting thread and closed by
one shedding thread, so the process runs at most ``--max-connections`` + 2 threads.

From the rotation configuration it reads only the entry names: it needs none of the store or
Langfuse credentials, and none of the environment variables the file refers to.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import io
import json
import logging
import os
import re
import selectors
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import yaml
from pydantic import SecretStr

from connectors.prefect_api import authorization_header
from flows.config.model import CONFIG_ENV_VAR
from flows.errors import ForwarderSetupError, ReportRefused
from flows.redact import install_redaction, register_secret, register_url
from flows.shown import ENTRY_NAME_PATTERN
from flows.trigger.automation import compromised_event

logger = logging.getLogger("langfuse_rotate.forwarder")

PATH = "/compromised"
MAX_BODY_BYTES = 4096
DEFAULT_PER_MINUTE = 5
DEFAULT_LISTEN = "127.0.0.1:8765"
DEFAULT_SOURCE = "secret-scanner"
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_MAX_PER_CLIENT = 8
DEFAULT_REQUEST_TIMEOUT_S = 10.0
POST_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 2.0
SHED_LINGER_S = 2.0
MAX_LINGERING = 256
_PUBLIC_KEY = re.compile(r"pk-lf-[A-Za-z0-9_-]{1,200}")
_SOURCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_ENTRY_NAME = re.compile(ENTRY_NAME_PATTERN)
_ENV_REFERENCE = re.compile(r"\$\{[^}]*\}")
_FIELDS = {"project", "public_key", "source"}


@dataclass(frozen=True)
class Report:
    """A checked report: a configured entry, a Langfuse public key, where it came from."""

    project: str
    public_key: str
    source: str


@dataclass(frozen=True)
class PrefectTarget:
    """Where events go, and the only credential this process holds for it."""

    api_url: str
    authorization: SecretStr | None = None

    @classmethod
    def from_environment(cls) -> PrefectTarget:
        url = os.environ.get("PREFECT_API_URL", "").strip()
        if not url:
            raise ForwarderSetupError("PREFECT_API_URL is not set: the forwarder posts to that server's events API")
        api_key = os.environ.get("PREFECT_API_KEY", "")
        auth_string = os.environ.get("PREFECT_API_AUTH_STRING", "")
        for secret in (api_key, auth_string):
            if secret:
                register_secret(secret)
        # The one credential rule of every REST call to Prefect (connectors.prefect_api).
        header = authorization_header(auth_string=auth_string, api_key=api_key).get("Authorization")
        register_url(url)
        return cls(api_url=url.rstrip("/"), authorization=SecretStr(header) if header is not None else None)

    def post(self, event: dict[str, Any]) -> None:
        """POST the one event; raises ``RuntimeError`` (no secret in it) when the server does not take it."""
        headers = {"Content-Type": "application/json"}
        if self.authorization is not None:
            headers["Authorization"] = self.authorization.get_secret_value()
        try:
            response = httpx.post(f"{self.api_url}/events", json=[event], headers=headers, timeout=POST_TIMEOUT_S)
        except httpx.HTTPError as exc:
            raise RuntimeError(f"Prefect events API not reachable ({type(exc).__name__})") from None
        if response.status_code >= 300:
            raise RuntimeError(f"Prefect events API answered {response.status_code}")


@dataclass
class RateLimit:
    """At most ``per_minute`` forwarded reports per entry in any 60 s window."""

    per_minute: int
    _seen: dict[str, deque[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def allow(self, entry: str, now: float | None = None) -> bool:
        moment = time.monotonic() if now is None else now
        with self._lock:
            recent = self._seen.setdefault(entry, deque())
            while recent and recent[0] <= moment - 60:
                recent.popleft()
            if len(recent) >= self.per_minute:
                return False
            recent.append(moment)
            return True


def entry_names(path: str | os.PathLike[str]) -> frozenset[str]:
    """The configured entry names (``projects[].name``) of the rotation configuration, and nothing
    else: ``${VAR}`` references are not resolved, so no credential has to be in this process."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ForwarderSetupError(f"{file}: cannot read configuration: {exc.strerror}") from None
    try:
        data = yaml.safe_load(_ENV_REFERENCE.sub("__env_reference__", text))
    except (yaml.YAMLError, RecursionError):
        raise ForwarderSetupError(
            f"{file}: invalid YAML (langfuse-rotate validate --config {file} says where)"
        ) from None
    projects = data.get("projects") if isinstance(data, dict) else None
    if not isinstance(projects, list) or not projects:
        raise ForwarderSetupError(f"{file}: no projects configured")
    names: set[str] = set()
    for index, entry in enumerate(projects):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not _ENTRY_NAME.match(name):
            raise ForwarderSetupError(f"{file}: projects[{index}].name is missing or not a literal entry name")
        names.add(name)
    return frozenset(names)


def _read_token(*, token_file: str | None, token_env: str | None) -> SecretStr:
    """The scanners' bearer token, from a file (first line) or an environment variable."""
    if token_file:
        try:
            raw = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ForwarderSetupError(f"{token_file}: cannot read the token file: {exc.strerror}") from None
        where = token_file
    elif token_env:
        raw = os.environ.get(token_env, "").strip()
        where = f"environment variable {token_env}"
    else:
        raise ForwarderSetupError("name the scanners' token: --token-file PATH or --token-env NAME")
    if len(raw) < 16:
        raise ForwarderSetupError(f"{where}: the token is missing or shorter than 16 characters")
    register_secret(raw)
    return SecretStr(raw)


def parse_report(body: bytes, entries: frozenset[str]) -> Report:
    """The report in ``body``, checked; ``ReportRefused`` (never echoing the input) otherwise."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ReportRefused(400, "the body is not JSON") from None
    if not isinstance(data, dict):
        raise ReportRefused(400, "the body must be a JSON object")
    if set(data) - _FIELDS:
        raise ReportRefused(422, "unexpected field (allowed: project, public_key, source)")
    project, public_key, source = data.get("project"), data.get("public_key"), data.get("source", DEFAULT_SOURCE)
    if not isinstance(project, str) or project not in entries:
        raise ReportRefused(422, "project is not a configured entry")
    if not isinstance(public_key, str) or not _PUBLIC_KEY.fullmatch(public_key):
        raise ReportRefused(422, "public_key must be a Langfuse public key (pk-lf-...)")
    if not isinstance(source, str) or not _SOURCE.fullmatch(source):
        raise ReportRefused(422, "source must be 1-64 letters, digits or ._:-")
    return Report(project=project, public_key=public_key, source=source)


@dataclass
class Forwarder:
    """Checks one request and forwards it as one event; knows nothing of HTTP framing."""

    entries: frozenset[str]
    token: SecretStr
    target: PrefectTarget
    limit: RateLimit

    def authorized(self, header: str | None) -> bool:
        scheme, _, presented = (header or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(presented.strip().encode(), self.token.get_secret_value().encode())

    def forward(self, report: Report) -> str:
        """Post the event; its id. ``ReportRefused`` when the entry is over its rate."""
        if not self.limit.allow(report.project):
            raise ReportRefused(429, f"more than {self.limit.per_minute} reports for this entry in a minute")
        event = compromised_event(report.project, report.public_key, source=report.source)
        try:
            self.target.post(event)
        except RuntimeError as exc:
            raise ReportRefused(502, str(exc)) from None
        return str(event["id"])


@dataclass(frozen=True)
class Limits:
    """How much of the forwarder clients may hold: connections at once (in all, and from one client
    address), and one deadline per request for its request line, headers and body together."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_per_client: int = DEFAULT_MAX_PER_CLIENT
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S


@dataclass
class Slots:
    """The connections being served, in all and per client address."""

    limits: Limits
    _held: dict[str, int] = field(default_factory=dict)
    _total: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, client: str) -> str | None:
        """Take a slot for ``client``; None when taken, else why not (the 503's one line)."""
        with self._lock:
            if self._total >= self.limits.max_connections:
                return "busy: too many connections; try again shortly"
            if self._held.get(client, 0) >= self.limits.max_per_client:
                return "too many connections from this client; try again shortly"
            self._total += 1
            self._held[client] = self._held.get(client, 0) + 1
            return None

    def give_back(self, client: str) -> None:
        with self._lock:
            self._total -= 1
            left = self._held.get(client, 0) - 1
            if left > 0:
                self._held[client] = left
            else:
                self._held.pop(client, None)


def _shed_answer(reason: str) -> bytes:
    body = (json.dumps({"error": reason}) + "\n").encode()
    head = (
        "HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
        f"Retry-After: 1\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _Shedder:
    """Closes the connections answered 503, all in one thread: each gets its answer and the end of
    our side at once, then is read (and what it sent dropped) until the client closes or
    ``SHED_LINGER_S`` passes, so closing it does not reset the connection before the client has
    read the answer. More than ``MAX_LINGERING`` at once are closed at once."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._incoming: list[socket.socket] = []
        self._until: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="forwarder-shedder", daemon=True)
        self._thread.start()

    def shed(self, sock: socket.socket, answer: bytes) -> None:
        try:
            sock.setblocking(False)
            sock.send(answer)  # a few hundred bytes: a fresh connection's buffer takes them
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        with self._lock:
            if len(self._incoming) + len(self._until) >= MAX_LINGERING:
                sock.close()
                return
            self._incoming.append(sock)

    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                incoming, self._incoming = self._incoming, []
            for sock in incoming:
                self._until[sock] = time.monotonic() + SHED_LINGER_S
                self._selector.register(sock, selectors.EVENT_READ)
            for key, _ in self._selector.select(timeout=0.1) if self._until else []:
                conn = key.fileobj
                assert isinstance(conn, socket.socket)
                try:
                    if conn.recv(65536):
                        continue
                except BlockingIOError:
                    continue
                except OSError:
                    pass
                self._close(conn)
            if not self._until:
                self._stopping.wait(0.1)
            now = time.monotonic()
            for sock in [s for s, until in self._until.items() if until <= now]:
                self._close(sock)

    def _close(self, sock: socket.socket) -> None:
        self._until.pop(sock, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)
        sock.close()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        for sock in list(self._until):
            self._close(sock)


class _DeadlinePassed(Exception):
    """The request (line, headers and body together) did not arrive before its deadline."""


class _DeadlineReader(io.RawIOBase):
    """The connection's reading side, bounded by one deadline for the whole request: each read
    waits at most what is left of it, so trickling bytes cannot stretch it."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise _DeadlinePassed
        self._sock.settimeout(left)
        try:
            return self._sock.recv_into(buffer)
        except TimeoutError:
            raise _DeadlinePassed from None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the kernel's backlog: a burst is accepted (and shed) rather than dropped

    def __init__(self, address: tuple[str, int], forwarder: Forwarder, limits: Limits | None = None) -> None:
        super().__init__(address, _Handler)
        self.forwarder = forwarder
        self.limits = limits or Limits()
        self.slots = Slots(self.limits)
        self.shedder = _Shedder()

    def process_request(self, request: Any, client_address: Any) -> None:
        """One thread per connection, while there is a slot; past the caps: 503, from this thread."""
        client = str(client_address[0])
        refused = self.slots.take(client)
        if refused is not None:
            _log_request(client, "-", "-", 503, refused)
            self.shedder.shed(request, _shed_answer(refused))
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.give_back(client)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.give_back(str(client_address[0]))

    def server_close(self) -> None:
        super().server_close()
        self.shedder.stop()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "langfuse-rotate-forwarder"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # Set before any request line is read: an answer to a request cut off early needs them.
        self.requestline, self.request_version, self.command = "", self.protocol_version, ""
        deadline = time.monotonic() + self.server.limits.request_timeout_s
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline))

    def handle(self) -> None:
        """One request per connection (every answer closes it), within the request's deadline."""
        try:
            self.handle_one_request()
        except _DeadlinePassed:
            self._answer(408, {"error": "the request did not arrive in time"})
        except OSError:
            self.close_connection = True  # the client went away

    def do_POST(self) -> None:
        if self.path != PATH:
            self._answer(404, {"error": f"not found: only POST {PATH}"})
            return
        forwarder = self.server.forwarder
        if not forwarder.authorized(self.headers.get("Authorization")):
            self._answer(401, {"error": "missing or wrong bearer token"}, {"WWW-Authenticate": "Bearer"})
            return
        try:
            report = parse_report(self._body(), forwarder.entries)
        except ReportRefused as refused:
            self._answer(refused.status, {"error": refused.reason})
            return
        try:
            event_id = forwarder.forward(report)
        except ReportRefused as refused:
            self._answer(refused.status, {"error": refused.reason}, log={"project": report.project})
            return
        accepted = {"status": "forwarded", "event_id": event_id, "project": report.project}
        logged = {**accepted, "public_key": report.public_key, "source": report.source}
        self._answer(202, {**accepted, "public_key": report.public_key}, log=logged)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise ReportRefused(411, "send the body with a Content-Length, not chunked")
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            raise ReportRefused(411, "Content-Length required")
        try:
            length = int(length_header)
        except ValueError:
            raise ReportRefused(400, "invalid Content-Length") from None
        if length < 0:
            raise ReportRefused(400, "invalid Content-Length")
        if length > MAX_BODY_BYTES:
            raise ReportRefused(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
        try:
            body = self.rfile.read(length)
        except (OSError, _DeadlinePassed):
            raise ReportRefused(408, "the request did not arrive in time") from None
        if len(body) != length:
            raise ReportRefused(400, "the body is shorter than its Content-Length")
        return body

    def _refuse_method(self) -> None:
        if self.path == PATH:
            self._answer(405, {"error": f"method not allowed: only POST {PATH}"}, {"Allow": "POST"})
        else:
            self._answer(404, {"error": f"not found: only POST {PATH}"})

    do_GET = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse_method

    def do_HEAD(self) -> None:
        self._answer(405, {"error": f"method not allowed: only POST {PATH}"}, {"Allow": "POST"})

    def __getattr__(self, name: str) -> Callable[[], None]:
        # Any other method (BaseHTTPRequestHandler would answer 501 with an HTML page).
        if name.startswith("do_"):
            return self._refuse_method
        raise AttributeError(name)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed requests (bad request line, headers too long): the same JSON line, never the input."""
        self.close_connection = True
        self._answer(code, {"error": "malformed HTTP request"} if code < 500 else {"error": "cannot serve"})

    def _answer(
        self,
        status: int,
        body: dict[str, str],
        headers: dict[str, str] | None = None,
        *,
        log: dict[str, str] | None = None,
    ) -> None:
        self._log_line(status, body, log or {})  # before the answer: a client that has it finds the line
        data = (json.dumps(body) + "\n").encode()
        try:
            self.connection.settimeout(WRITE_TIMEOUT_S)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if getattr(self, "command", None) != "HEAD":
                self.wfile.write(data)
        except OSError:
            pass  # the client went away; the log line says what it was told
        self.close_connection = True

    def _log_line(self, status: int, body: dict[str, str], details: dict[str, str]) -> None:
        """One line per request: who, what, the answer; only values the forwarder checked or made."""
        method = getattr(self, "command", None) or "-"
        method = method if method in {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"} else "other"
        path = PATH if getattr(self, "path", None) == PATH else "other"
        outcome = body.get("error") or body.get("status", "")
        fields = " ".join(f"{name}={value}" for name, value in details.items() if name != "status")
        _log_request(str(self.client_address[0]), method, path, status, outcome, fields)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the base class's own lines (they would repeat the raw request line)."""


def _log_request(client: str, method: str, path: str, status: int, outcome: str, fields: str = "") -> None:
    logger.info(
        "client=%s method=%s path=%s status=%d %s%s",
        client,
        method,
        path,
        status,
        json.dumps(outcome),
        f" {fields}" if fields else "",
    )


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ForwarderSetupError(f"--listen {value}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    return host.strip("[]"), int(port)


def _build_server(
    *,
    config: str | None,
    listen: str,
    token_file: str | None,
    token_env: str | None,
    per_minute: int,
    limits: Limits | None = None,
) -> _Server:
    chosen = config or os.environ.get(CONFIG_ENV_VAR)
    if not chosen:
        raise ForwarderSetupError(f"no configuration file: pass --config or set {CONFIG_ENV_VAR}")
    if per_minute < 1:
        raise ForwarderSetupError("--per-minute must be at least 1")
    limits = limits or Limits()
    for option, value in (
        ("--max-connections", limits.max_connections),
        ("--max-per-client", limits.max_per_client),
        ("--request-timeout", limits.request_timeout_s),
    ):
        if not value > 0:
            raise ForwarderSetupError(f"{option} must be greater than 0")
    forwarder = Forwarder(
        entries=entry_names(chosen),
        token=_read_token(token_file=token_file, token_env=token_env),
        target=PrefectTarget.from_environment(),
        limit=RateLimit(per_minute),
    )
    try:
        return _Server(_parse_listen(listen), forwarder, limits)
    except OSError as exc:
        raise ForwarderSetupError(f"--listen {listen}: {exc.strerror}") from None


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


EXIT_CODES = """exit codes:
  0  stopped by Ctrl-C or SIGTERM
  2  it could not start (usage, configuration, token, --listen address): one line on stderr
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="langfuse-rotate-forwarder",
        description="Forward secret scanners' compromise reports (POST /compromised) as langfuse.key.compromised "
        "events to the Prefect server in PREFECT_API_URL; nothing else.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", help=f"the rotation configuration (only its entry names are read; default ${CONFIG_ENV_VAR})"
    )
    parser.add_argument(
        "--listen", default=DEFAULT_LISTEN, help=f"HOST:PORT (default {DEFAULT_LISTEN}; port 0 picks one)"
    )
    token = parser.add_mutually_exclusive_group(required=True)
    token.add_argument("--token-file", help="file holding the scanners' bearer token")
    token.add_argument("--token-env", help="environment variable holding the scanners' bearer token")
    parser.add_argument(
        "--per-minute", type=int, default=DEFAULT_PER_MINUTE, help="reports forwarded per entry per minute"
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        help=f"connections served at once; more are answered 503 (default {DEFAULT_MAX_CONNECTIONS})",
    )
    parser.add_argument(
        "--max-per-client",
        type=int,
        default=DEFAULT_MAX_PER_CLIENT,
        help=f"connections served at once from one client address; more are answered 503 (default "
        f"{DEFAULT_MAX_PER_CLIENT})",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=DEFAULT_REQUEST_TIMEOUT_S,
        help=f"seconds for a request's line, headers and body together; past it: 408 (default "
        f"{DEFAULT_REQUEST_TIMEOUT_S:g})",
    )
    args = parser.parse_args(argv)

    install_redaction()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s compromise-forwarder %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        server = _build_server(
            config=args.config,
            listen=args.listen,
            token_file=args.token_file,
            token_env=args.token_env,
            per_minute=args.per_minute,
            limits=Limits(args.max_connections, args.max_per_client, args.request_timeout),
        )
    except ForwarderSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    entries = ", ".join(sorted(server.forwarder.entries))
    logger.info("listening on http://%s:%s%s for entries: %s", host, port, PATH, entries)
    signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever(poll_interval=0.2)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
