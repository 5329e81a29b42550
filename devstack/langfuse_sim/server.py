"""HTTP front end (`ThreadingHTTPServer`), routing, fault injection, and the `Simulator` object."""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from devstack.langfuse_sim import routes_admin as admin
from devstack.langfuse_sim import routes_control as control
from devstack.langfuse_sim import routes_data as data
from devstack.langfuse_sim import routes_members as members
from devstack.langfuse_sim.state import SimState
from devstack.langfuse_sim.store import load_or_create
from devstack.langfuse_sim.wire import Request, Response

Handler = Callable[[SimState, Request, dict[str, str]], Response]

_PROJECT_405 = {"message": "Method Not Allowed"}
_MEMBERSHIP_405 = {"error": "Method not allowed"}
_MIDDLEWARE_405 = {"message": "Method not allowed", "error": "MethodNotAllowedError"}


@dataclass
class Route:
    pattern: re.Pattern[str]
    methods: dict[str, Handler]
    not_allowed: dict[str, Any]


def _route(path: str, methods: dict[str, Handler], not_allowed: dict[str, Any]) -> Route:
    return Route(re.compile("^" + path + "$"), methods, not_allowed)


_SEG = "(?P<{}>[^/]*)"
ROUTES: list[Route] = [
    _route("/api/public/projects", {"GET": admin.get_projects, "POST": admin.create_project}, _PROJECT_405),
    _route(
        f"/api/public/projects/{_SEG.format('project_id')}/apiKeys",
        {"GET": admin.get_api_keys, "POST": admin.create_api_key},
        _PROJECT_405,
    ),
    _route(
        f"/api/public/projects/{_SEG.format('project_id')}/apiKeys/{_SEG.format('api_key_id')}",
        {"DELETE": admin.delete_api_key},
        _PROJECT_405,
    ),
    _route(
        f"/api/public/projects/{_SEG.format('project_id')}",
        {"PUT": admin.update_project, "DELETE": admin.delete_project},
        _PROJECT_405,
    ),
    _route("/api/public/organizations/projects", {"GET": admin.get_org_projects}, {"error": "Method Not Allowed"}),
    _route("/api/public/organizations/apiKeys", {"GET": admin.get_org_api_keys}, {"error": "Method Not Allowed"}),
    _route(
        "/api/public/organizations/memberships",
        {
            "GET": members.get_org_memberships,
            "PUT": members.put_org_membership,
            "DELETE": members.delete_org_membership,
        },
        _MEMBERSHIP_405,
    ),
    _route(
        f"/api/public/projects/{_SEG.format('project_id')}/memberships",
        {
            "GET": members.get_project_memberships,
            "PUT": members.put_project_membership,
            "DELETE": members.delete_project_membership,
        },
        _MEMBERSHIP_405,
    ),
    _route("/api/admin/api-keys", {"POST": admin.admin_api_keys}, {"error": "Method Not Allowed"}),
    _route(
        "/api/public/ingestion",
        {"POST": data.ingestion},
        {"error": "MethodNotAllowedError", "message": "Method not allowed"},
    ),
    _route("/api/public/otel/v1/traces", {"POST": data.otel_traces}, _MIDDLEWARE_405),
    _route("/api/public/scores", {"POST": data.create_scores}, _MIDDLEWARE_405),
    _route("/api/public/v2/observations", {"GET": data.get_observations_v2}, _MIDDLEWARE_405),
    _route("/api/public/traces", {"GET": data.list_traces}, _MIDDLEWARE_405),
    _route(f"/api/public/traces/{_SEG.format('trace_id')}", {"GET": data.get_trace}, _MIDDLEWARE_405),
    _route("/api/public/health", {"GET": data.health}, _MIDDLEWARE_405),
    _route("/api/public/ready", {"GET": data.ready}, _MIDDLEWARE_405),
]
CONTROL_ROUTES: list[Route] = [
    _route("/_sim/keys", {"GET": control.keys, "POST": control.add_keys}, {"error": "Method Not Allowed"}),
    _route(f"/_sim/keys/{_SEG.format('key')}", {"PATCH": control.patch_key}, {"error": "Method Not Allowed"}),
    _route("/_sim/users", {"GET": control.users, "POST": control.add_user}, {"error": "Method Not Allowed"}),
    _route("/_sim/requests", {"GET": control.requests}, {"error": "Method Not Allowed"}),
    _route(
        "/_sim/faults",
        {"GET": control.list_faults, "POST": control.add_fault, "DELETE": control.clear_faults},
        {"error": "Method Not Allowed"},
    ),
    _route(
        "/_sim/config",
        {"GET": control.get_config, "POST": control.set_config},
        {"error": "Method Not Allowed"},
    ),
    _route("/_sim/reset", {"POST": control.reset}, {"error": "Method Not Allowed"}),
    _route("/_sim/cache/flush", {"POST": control.flush_cache}, {"error": "Method Not Allowed"}),
    _route("/_sim/clock", {"GET": control.get_clock, "POST": control.advance_clock}, {"error": "Method Not Allowed"}),
    _route("/_sim/race", {"GET": control.race}, {"error": "Method Not Allowed"}),
    _route("/_sim/race/release", {"POST": control.release_race}, {"error": "Method Not Allowed"}),
    _route("/_sim/bootstrap", {"GET": control.bootstrap}, {"error": "Method Not Allowed"}),
]

#: Sentinel: close the connection without sending any response.
DROP = Response(0)


def _match(routes: list[Route], state: SimState, req: Request) -> Response:
    for route in routes:
        found = route.pattern.match(req.path)
        if found is None:
            continue
        handler = route.methods.get(req.method)
        if handler is None:
            return Response(405, route.not_allowed, {"Allow": ", ".join(route.methods)})
        return handler(state, req, {k: unquote(v) for k, v in found.groupdict().items()})
    return Response(404, {"message": "Not Found", "error": "LangfuseNotFoundError"})


def dispatch(state: SimState, req: Request) -> Response:
    """Control routes, or fault injection around the real routes plus the request log."""
    if req.path.startswith("/_sim/"):
        if not _is_loopback(req.client_ip):
            return Response(404, {"message": "Not Found"})
        return _safe_match(CONTROL_ROUTES, state, req)
    return _dispatch_public(state, req)


def _safe_match(routes: list[Route], state: SimState, req: Request) -> Response:
    """Route; an unexpected exception becomes a 500 and one stderr line (type only, never values)."""
    try:
        return _match(routes, state, req)
    except Exception as exc:
        sys.stderr.write(f"langfuse-sim: {req.method} {req.path} failed with {type(exc).__name__}\n")
        return Response(500, {"message": "Internal Server Error"})


def _dispatch_public(state: SimState, req: Request) -> Response:
    epoch = state.epoch
    fault = state.take_fault(req.method, req.path)
    if fault is not None and fault.delay_s:
        time.sleep(fault.delay_s)
    if fault is not None and fault.replaces_response and not fault.after:
        response = DROP if fault.drop else fault.response()
    else:
        response = _safe_match(ROUTES, state, req)
        if fault is not None and fault.after and fault.replaces_response:
            response = DROP if fault.drop else fault.response()
    status = None if response is DROP else response.status
    state.log_request(req.method, req.path, status, req.public_key, epoch)
    return response


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes; avoid the 40 ms delayed-ACK stall
    server_version = "langfuse-sim"
    sim_state: SimState  # set on the subclass created per server

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging: headers may carry credentials; use `/_sim/requests` instead."""

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        req = Request(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers=self.headers,
            body=self._read_body(),
            client_ip=self.client_address[0],
        )
        response = dispatch(self.sim_state, req)
        if response is DROP:
            self._drop()
            return
        payload = response.encode()
        self.send_response(response.status)
        if response.body is not None and not isinstance(response.body, bytes):
            self.send_header("Content-Type", "application/json; charset=utf-8")
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up (timeouts, dropped faults) are normal here; report anything else briefly."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, ConnectionError | TimeoutError):
            sys.stderr.write(f"langfuse-sim: connection handler failed with {type(exc).__name__}\n")


class Simulator:
    """An in-process simulator; also what `python -m devstack.langfuse_sim` runs.

    >>> with Simulator(projects=2) as sim:
    ...     sim.bootstrap["projects"][0]["public_key"]
    """

    def __init__(
        self,
        projects: int = 1,
        admin_api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        state_file: str | Path | None = None,
        version: str = "4.16.0",
    ) -> None:
        self._host, self._port = host, port
        path = Path(state_file) if state_file is not None else None
        store, boot = load_or_create(path, projects)
        self.state = SimState(store, boot, state_file=path, admin_api_key=admin_api_key, version=version)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("simulator not started")
        host, port = self._server.server_address[:2]
        host_text = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{host_text}:{port}"

    @property
    def bootstrap(self) -> dict[str, Any]:
        with self.state.lock:
            return self.state.bootstrap.describe(self.state.store, self.url, self.state.admin_api_key)

    def start(self) -> Simulator:
        handler = type("SimHandler", (_Handler,), {"sim_state": self.state})
        self._server = _Server((self._host, self._port), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="langfuse-sim", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        if self._thread is None:
            self.start()
        assert self._thread is not None
        while self._thread.is_alive():
            self._thread.join(0.5)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._thread = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
