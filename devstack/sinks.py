"""Local notification receivers for the demo and the tests: an HTTP/JSON sink and an SMTP sink.

``JsonSink`` records every HTTP request (method, path, headers, JSON or text body) and answers
200, or a chosen error status for the next N requests. ``SmtpSink`` is an aiosmtpd server that
records every mail. Both are context managers and thread-safe.

Command line (serves until interrupted, one JSON line per received request or mail)::

    python -m devstack.sinks json [--port P]
    python -m devstack.sinks smtp [--port P]

The first line on stdout is ``{"url": ...}`` (for smtp also ``{"host", "port"}``).
"""

from __future__ import annotations

import argparse
import contextlib
import email
import email.policy
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, TypeVar

from devstack.net import free_port

__all__ = ["JsonSink", "Recorded", "RecordedMail", "SmtpSink"]


_T = TypeVar("_T")


class _Recorder(Generic[_T]):
    """A thread-safe list with a blocking ``wait_for(count)``."""

    def __init__(self, on_record: Callable[[_T], None] | None = None) -> None:
        self._items: list[_T] = []
        self._cond = threading.Condition()
        self._on_record = on_record

    def add(self, item: _T) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()
        if self._on_record is not None:
            self._on_record(item)

    def snapshot(self) -> list[_T]:
        with self._cond:
            return list(self._items)

    def clear(self) -> None:
        with self._cond:
            self._items.clear()

    def wait_for(self, count: int, timeout_s: float, what: str) -> list[_T]:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while len(self._items) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"expected {count} {what}, got {len(self._items)} in {timeout_s:g}s")
                self._cond.wait(remaining)
            return list(self._items)


# --- HTTP -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """One HTTP request the sink received."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    """The parsed JSON body, or None if the body was empty or not JSON."""
    text: str
    """The raw body decoded as UTF-8 (with replacement characters)."""
    status: int
    """The status the sink answered with."""
    received_at: float = field(default_factory=time.time)

    def header(self, name: str) -> str | None:
        """A header by case-insensitive name."""
        lowered = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lowered), None)


class JsonSink:
    """An HTTP server on ``127.0.0.1`` (port 0 by default) that records requests and answers 200."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, on_record: Callable[[Recorded], None] | None = None
    ) -> None:
        self._recorder: _Recorder[Recorded] = _Recorder(on_record)
        self._failures: list[int] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in separate writes

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length > 0 else b""
                text = raw.decode("utf-8", errors="replace")
                try:
                    body: Any = json.loads(text) if text.strip() else None
                except ValueError:
                    body = None
                status = sink._next_status()
                sink._recorder.add(
                    Recorded(
                        method=self.command,
                        path=self.path,
                        headers={k: v for k, v in self.headers.items()},
                        json=body,
                        text=text,
                        status=status,
                    )
                )
                payload = b'{"ok": true}' if status < 400 else b'{"error": "sink told to fail"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="json-sink", daemon=True
        )
        self._thread.start()
        self._stopped = False

    def _next_status(self) -> int:
        with self._lock:
            return self._failures.pop(0) if self._failures else 200

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT`` (no trailing slash)."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def apprise_url(self, path: str = "/hook") -> str:
        """The matching apprise ``json://`` URL for ``path``."""
        return f"json://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def received(self) -> list[Recorded]:
        return self._recorder.snapshot()

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[Recorded]:
        """Block until at least ``count`` requests arrived; raises ``TimeoutError`` otherwise."""
        return self._recorder.wait_for(count, timeout_s, "request(s)")

    def clear(self) -> None:
        """Forget recorded requests and pending failures."""
        self._recorder.clear()
        with self._lock:
            self._failures.clear()

    def fail_next(self, n: int, status: int = 500) -> None:
        """Answer the next ``n`` requests with ``status`` (still recording them)."""
        with self._lock:
            self._failures.extend([status] * n)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> JsonSink:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


# --- SMTP -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedMail:
    """One mail the SMTP sink accepted."""

    mail_from: str
    rcpt_tos: list[str]
    subject: str
    text: str
    """The text/plain part (or the only part), decoded."""
    raw: str
    received_at: float = field(default_factory=time.time)


def _parse_mail(mail_from: str, rcpt_tos: list[str], content: bytes) -> RecordedMail:
    message = email.message_from_bytes(content, policy=email.policy.default)
    text = ""
    if isinstance(message, EmailMessage):
        part = message.get_body(preferencelist=("plain", "html"))
        if part is not None and isinstance(part, EmailMessage):
            text = str(part.get_content())
    return RecordedMail(
        mail_from=mail_from,
        rcpt_tos=list(rcpt_tos),
        subject=str(message.get("Subject", "")),
        text=text,
        raw=content.decode("utf-8", errors="replace"),
    )


class SmtpSink:
    """An aiosmtpd server on ``127.0.0.1`` that records every mail.

    aiosmtpd's ``Controller`` cannot start on port 0 (it connects back to the configured port),
    so a free port is picked first, retrying if another process grabbed it in between.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        on_record: Callable[[RecordedMail], None] | None = None,
    ) -> None:
        from aiosmtpd.controller import Controller  # dev-only dependency

        self._recorder: _Recorder[RecordedMail] = _Recorder(on_record)
        recorder = self._recorder

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                content = envelope.content
                if isinstance(content, str):
                    content = content.encode("utf-8")
                recorder.add(_parse_mail(str(envelope.mail_from), list(envelope.rcpt_tos), content))
                return "250 Message accepted for delivery"

        attempts = 1 if port is not None else 5
        last_error: Exception | None = None
        for _ in range(attempts):
            chosen = port if port is not None else free_port(host)
            controller = Controller(Handler(), hostname=host, port=chosen)
            try:
                controller.start()
            except (OSError, RuntimeError) as exc:
                last_error = exc
                with contextlib.suppress(Exception):
                    controller.stop()
                continue
            self._controller = controller
            self.host = host
            self.port = chosen
            self._stopped = False
            return
        raise RuntimeError(f"SMTP sink could not start: {last_error}")

    def apprise_url(self, mail_from: str = "keyrot@example.test", to: str = "ops@example.test") -> str:
        """The matching apprise ``mailto://`` URL (plain SMTP, no login)."""
        return f"mailto://{self.host}:{self.port}?from={mail_from}&to={to}&mode=insecure"

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def received(self) -> list[RecordedMail]:
        return self._recorder.snapshot()

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[RecordedMail]:
        return self._recorder.wait_for(count, timeout_s, "mail(s)")

    def clear(self) -> None:
        self._recorder.clear()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(Exception):
            self._controller.stop()

    def __enter__(self) -> SmtpSink:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


# --- command line ---------------------------------------------------------------------------


def _print_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, default=str) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.sinks", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["json", "smtp"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    if args.kind == "json":
        json_sink = JsonSink(args.host, args.port or 0, on_record=lambda r: _print_json(asdict(r)))
        _print_json({"url": json_sink.url, "apprise_url": json_sink.apprise_url()})
        with json_sink:
            stop.wait()
    else:
        smtp_sink = SmtpSink(args.host, args.port, on_record=lambda m: _print_json(asdict(m)))
        _print_json({"url": smtp_sink.url, "host": smtp_sink.host, "port": smtp_sink.port})
        with smtp_sink:
            stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
