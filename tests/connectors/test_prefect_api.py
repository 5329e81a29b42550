"""``connectors.prefect_api``, and everything else that calls Prefect's REST API (a run's events, the
compromise forwarder), sends the same Authorization header as Prefect's own client for
every combination of ``PREFECT_API_KEY`` and ``PREFECT_API_AUTH_STRING`` (README "Prefect")."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpx
import pytest

from connectors.prefect_api import PrefectApi
from devstack.prefect_server import PrefectServer


class _Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[str | None]] = []

    def _answer(self) -> None:
        _Recorder.seen.append(self.headers.get("Authorization"))
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = b'{"id": "00000000-0000-0000-0000-000000000001"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@pytest.fixture()
def recording_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()
        server.server_close()


CREDENTIALS = [
    pytest.param(None, None, id="none"),
    pytest.param("key-1", None, id="api-key"),
    pytest.param(None, "user:pass", id="auth-string"),
    pytest.param("key-1", "user:pass", id="both"),
]


def _prefects_headers(url: str, api_key: str | None, auth_string: str | None) -> tuple[str | None, str | None]:
    from prefect.client.orchestration import PrefectClient, SyncPrefectClient
    from prefect.settings import PREFECT_CLIENT_CSRF_SUPPORT_ENABLED, temporary_settings

    _Recorder.seen.clear()
    with temporary_settings({PREFECT_CLIENT_CSRF_SUPPORT_ENABLED: False}):  # one request each, no token fetch
        with SyncPrefectClient(url, api_key=api_key, auth_string=auth_string) as client:
            client.request("POST", "/flows/", json={"name": "x"})

        async def run_async() -> None:
            async with PrefectClient(url, api_key=api_key, auth_string=auth_string) as client:
                await client.request("POST", "/flows/", json={"name": "x"})

        asyncio.run(run_async())
    assert len(_Recorder.seen) == 2
    sync_header, async_header = _Recorder.seen[-2:]
    return sync_header, async_header


def _set_credentials(monkeypatch: pytest.MonkeyPatch, url: str, api_key: str | None, auth_string: str | None) -> None:
    monkeypatch.setenv("PREFECT_API_URL", url)
    for name, value in (("PREFECT_API_KEY", api_key), ("PREFECT_API_AUTH_STRING", auth_string)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


@pytest.mark.parametrize(("api_key", "auth_string"), CREDENTIALS)
def test_the_authorization_header_is_the_one_prefects_clients_send(
    recording_server: str, api_key: str | None, auth_string: str | None
) -> None:
    sync_header, async_header = _prefects_headers(recording_server, api_key, auth_string)
    assert sync_header == async_header

    _Recorder.seen.clear()
    api = PrefectApi(recording_server, api_key=api_key, auth_string=auth_string)
    try:
        api.flow_id("x")
    finally:
        api.close()
    assert _Recorder.seen == [sync_header]


def _rest_client_from_env() -> None:
    api = PrefectApi.from_env()
    assert api is not None
    try:
        api.flow_id("x")
    finally:
        api.close()


def _run_event() -> None:
    from flows.rotation import events

    assert events.send([events.build_event(events.ROTATED, events.project_resource("x"), {})])


def _forwarded_report() -> None:
    from flows.trigger.forwarder import PrefectTarget

    PrefectTarget.from_environment().post({"event": "x"})


# Every transport that calls Prefect's REST API with credentials from the environment.
TRANSPORTS = {"rest-client": _rest_client_from_env, "run-event": _run_event, "forwarder": _forwarded_report}


@pytest.mark.parametrize("transport", list(TRANSPORTS))
@pytest.mark.parametrize(("api_key", "auth_string"), CREDENTIALS)
def test_every_transport_sends_the_same_header_from_the_environment(
    recording_server: str, api_key: str | None, auth_string: str | None, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync_header, _ = _prefects_headers(recording_server, api_key, auth_string)
    _set_credentials(monkeypatch, recording_server, api_key, auth_string)
    _Recorder.seen.clear()

    TRANSPORTS[transport]()

    assert _Recorder.seen == [sync_header]


def test_a_lock_whose_limit_was_deleted_on_the_server_is_created_again(prefect_server: PrefectServer) -> None:
    """A long-running process (the responder, a ``serve()`` worker) remembers the limits it created;
    one deleted on the server meanwhile (by an operator, by a clean-up) must not fail every later
    run of that entry until the process restarts."""
    name = f"langfuse-rotate-deleted-{uuid.uuid4().hex[:8]}"
    api = PrefectApi(prefect_server.api_url)
    first = api.acquire(name, lease_s=60, timeout_s=5)
    assert first is not None
    api.release(first.lease_id)
    assert httpx.delete(f"{prefect_server.api_url}/v2/concurrency_limits/{name}", timeout=10).status_code == 204

    again = api.acquire(name, lease_s=60, timeout_s=5)

    assert again is not None
    api.release(again.lease_id)
