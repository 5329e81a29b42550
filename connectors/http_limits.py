"""Overall deadlines and body caps for HTTP requests to endpoints we do not control.

httpx's timeouts bound each network operation, not the request: a server that sends one byte
every half second (in its headers or its body) never trips a 5 s read timeout and can hold a
request forever, and ``response.json()`` reads a body of any size into memory. Here:

- ``deadline(seconds)`` sets an overall deadline for the requests this thread makes inside the
  block. The transport from ``deadline_transport()`` shortens every connect, read and write to
  the time left, and fails with a timeout once it is spent: connect, send, headers and body
  together never take longer than the deadline (plus scheduling noise).
- ``read_capped(response, limit)`` reads a streamed response's body, refusing anything larger
  than ``limit`` bytes (by ``Content-Length`` up front, or as soon as the stream passes it) and any
  compressed body (a few KiB of gzip can inflate to gigabytes).
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx

__all__ = ["BodyTooLargeError", "deadline", "deadline_transport", "read_capped"]

_state = threading.local()


class BodyTooLargeError(Exception):
    """The response body is larger than the cap (or compressed, so its size is unknown).

    ``declared``: the ``Content-Length`` past the cap, when the server sent one; ``encoding``: the
    ``Content-Encoding`` of a compressed body."""

    def __init__(self, message: str, *, declared: int | None = None, encoding: str | None = None) -> None:
        super().__init__(message)
        self.declared = declared
        self.encoding = encoding


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Requests made by this thread through a ``deadline_transport`` end within ``seconds``."""
    previous = getattr(_state, "deadline", None)
    mine = time.monotonic() + seconds
    _state.deadline = mine if previous is None else min(previous, mine)
    try:
        yield
    finally:
        _state.deadline = previous


def _remaining(timeout: float | None, expired: type[Exception]) -> float | None:
    end: float | None = getattr(_state, "deadline", None)
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise expired("deadline exceeded")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _remaining(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _remaining(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = _remaining(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = _remaining(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_tcp(host, port, left, local_address, socket_options))

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = _remaining(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, left, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def deadline_transport(*, verify: bool | ssl.SSLContext = True) -> httpx.HTTPTransport:
    """An ``httpx.HTTPTransport`` (direct, no proxy) whose every network operation honours ``deadline``."""
    transport = httpx.HTTPTransport(verify=verify)
    # httpx has no parameter for httpcore's network backend: swap in an equivalent pool that has one.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(verify=verify),
        max_connections=100,
        max_keepalive_connections=20,
        keepalive_expiry=5.0,
        network_backend=_DeadlineBackend(),
    )
    return transport


def read_capped(response: httpx.Response, limit: int) -> bytes:
    """The body of a response opened with ``stream=True``, or ``BodyTooLargeError`` past ``limit`` bytes."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise BodyTooLargeError(f"compressed body ({encoding})", encoding=encoding)
    declared = response.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise BodyTooLargeError(f"Content-Length {int(declared)}", declared=int(declared))
    try:
        already = response.content  # read before it reached us (e.g. a test transport)
    except httpx.ResponseNotRead:
        pass
    else:
        if len(already) > limit:
            raise BodyTooLargeError("body exceeds the cap")
        return already
    body = bytearray()
    for chunk in response.iter_raw(chunk_size=16 * 1024):
        body += chunk
        if len(body) > limit:
            raise BodyTooLargeError("body exceeds the cap")
    return bytes(body)
