"""Small real HTTP servers that misbehave on purpose: for redirect, deadline and body-size tests.

- ``Recorder``: answers 200 ``{}`` to everything and keeps every request (method, path, headers, body).
- ``Redirector``: answers every request with a redirect (307 by default) to ``target``.
- ``Trickler``: answers 200 with a long body, one byte every ``interval_s`` (headers at once).
- ``HeaderTrickler``: sends its headers one byte every ``interval_s``, forever.
- ``HugeBody``: answers 200 with ``size`` bytes of JSON-ish filler, streamed, with or without
  ``Content-Length``.
- ``Tarpit``: reads the request and never answers (until it stops); ``hits`` counts requests.

Every server binds 127.0.0.1 on a free port, serves from a daemon thread, and stops on ``stop()``
or when its ``with`` block ends (stopping also ends a trickle in progress).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = field(default=b"")


class _Server:
    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                server.handle(self, body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def handle(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        raise NotImplementedError

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def stop(self) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> _Server:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


class Recorder(_Server):
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        super().__init__()

    def handle(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        self.seen.append(Seen(request.command, request.path, dict(request.headers.items()), body))
        reply = b"{}"
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(reply)))
        request.end_headers()
        request.wfile.write(reply)

    def __enter__(self) -> Recorder:
        return self


class Tarpit(_Server):
    def __init__(self) -> None:
        self.hits = 0
        super().__init__()

    def handle(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        self.hits += 1
        self.stopping.wait()

    def __enter__(self) -> Tarpit:
        return self


class Redirector(_Server):
    def __init__(self, target: str, status: int = 307) -> None:
        self.target = target.rstrip("/")
        self.status = status
        self.hits = 0
        super().__init__()

    def handle(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        self.hits += 1
        request.send_response(self.status)
        request.send_header("Location", self.target + request.path)
        request.send_header("Content-Length", "0")
        request.end_headers()

    def __enter__(self) -> Redirector:
        return self


class Trickler(_Server):
    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        super().__init__()

    def handle(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", "10000")  # under any body cap: only time can stop it
        request.end_headers()
        request.wfile.flush()
        try:
            while not self.stopping.is_set():
                request.wfile.write(b" ")
                request.wfile.flush()
                time.sleep(self.interval_s)
        except OSError:
            pass  # the client gave up: that is the point

    def __enter__(self) -> Trickler:
        return self


class HeaderTrickler(_Server):
    """Sends the status line, then one header byte every ``interval_s``: the headers never end."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        super().__init__()

    def handle(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        try:
            request.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            request.wfile.flush()
            while not self.stopping.is_set():
                request.wfile.write(b"a")
                request.wfile.flush()
                time.sleep(self.interval_s)
        except OSError:
            pass

    def __enter__(self) -> HeaderTrickler:
        return self


class HugeBody(_Server):
    def __init__(self, size: int = 300 * 1024 * 1024, *, content_length: bool = True) -> None:
        self.size = size
        self.content_length = content_length
        self.sent = 0
        super().__init__()

    def handle(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        if self.content_length:
            request.send_header("Content-Length", str(self.size))
        else:
            request.send_header("Connection", "close")
        request.end_headers()
        chunk = b'{"langfuse_public_key": "pk-lf-x", "pad": "' + b"x" * (1024 * 1024)
        try:
            while self.sent < self.size and not self.stopping.is_set():
                piece = chunk[: self.size - self.sent]
                request.wfile.write(piece)
                self.sent += len(piece)
        except OSError:
            pass
        if not self.content_length:
            request.close_connection = True

    def __enter__(self) -> HugeBody:
        return self
