"""The compromise forwarder (docs/trust-boundary.md, point 4): the narrow path for secret scanners.

It runs as its own process (``python -m flows.trigger.forwarder``) against a real Prefect server;
events are read back through ``POST /api/events/filter``. A valid report becomes exactly one
``langfuse.key.compromised`` event in the shape the emergency trigger expects; everything else is
refused with a 4xx and a one-line JSON error and posts nothing; no token is ever in its output.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.prefect_server import PrefectServer
from flows.errors import ForwarderSetupError, ReportRefused
from flows.trigger.automation import EVENT
from flows.trigger.forwarder import (
    DEFAULT_MAX_PER_CLIENT,
    RateLimit,
    entry_names,
    parse_report,
)
from tests.fixtures.rotation import ENTRY, RotationEnv
from tests.trigger.test_emergency_trigger import (  # noqa: F401 (fixtures)
    automation,
    finished_run_of,
    no_earlier_emergency_runs,
    served_deployment,
)

SUFFIX = uuid.uuid4().hex[:8]
ALPHA, BETA, SENTINEL = f"fw-alpha-{SUFFIX}", f"fw-beta-{SUFFIX}", f"fw-sentinel-{SUFFIX}"
TOKEN = "scanner-token-" + uuid.uuid4().hex
WRONG_TOKEN = "scanner-token-" + uuid.uuid4().hex
PREFECT_KEY = "pnu_forwarder_only_" + uuid.uuid4().hex
KEY = "pk-lf-" + uuid.uuid4().hex

CONFIG = f"""\
langfuse:
  host: http://127.0.0.1:3000
  org_public_key: ${{ORG_PK_NOT_SET_HERE}}
  org_secret_key: ${{ORG_SK_NOT_SET_HERE}}
stores:
  main: {{kind: vault, url: http://127.0.0.1:8200, token: ${{VAULT_TOKEN_NOT_SET_HERE}}, mount: secret}}
projects:
  - {{name: {ALPHA}, project_id: p1, store: main, path: langfuse/alpha}}
  - {{name: {BETA}, project_id: p2, store: main, path: langfuse/beta}}
  - {{name: {SENTINEL}, project_id: p3, store: main, path: langfuse/sentinel}}
"""


@dataclass
class Running:
    url: str
    log: Path
    process: subprocess.Popen[bytes]

    def report(
        self, body: Any, *, token: str | None = TOKEN, path: str = "/compromised", scheme: str = "Bearer"
    ) -> httpx.Response:
        headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
        return httpx.post(f"{self.url}{path}", json=body, headers=headers, timeout=10)

    def output(self) -> str:
        return self.log.read_text()


def _start(tmp: Path, server: PrefectServer, *extra: str, config: Path | None = None) -> Running:
    if config is None:
        config = tmp / "rotation.yaml"
        config.write_text(CONFIG)
    token_file = tmp / "scanner-token"
    token_file.write_text(TOKEN + "\n")
    log = tmp / "forwarder.log"
    env = server.client_env()
    env["PREFECT_API_KEY"] = PREFECT_KEY  # an unauthenticated test server ignores it; it must never be shown
    argv = ["--config", str(config), "--listen", "127.0.0.1:0", "--token-file", str(token_file), *extra]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.trigger.forwarder", *argv], env=env, stdout=out, stderr=out
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text()
        if "listening on http://" in text:
            url = text.split("listening on ", 1)[1].split("/compromised", 1)[0]
            return Running(url=url, log=log, process=process)
        if process.poll() is not None:
            raise RuntimeError(f"forwarder exited: {text}")
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("forwarder did not start")


def _stop(running: Running) -> None:
    running.process.terminate()
    running.process.wait(10)


@pytest.fixture(scope="module")
def forwarder(prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    running = _start(tmp_path_factory.mktemp("forwarder"), prefect_server, "--per-minute", "100")
    yield running
    _stop(running)


def _events(server: PrefectServer, entry: str, since: datetime) -> list[dict[str, Any]]:
    body = {
        "filter": {
            "event": {"name": [EVENT]},
            "resource": {"id": [f"langfuse.project.{entry}"]},
            "occurred": {"since": since.isoformat(), "until": (datetime.now(UTC) + timedelta(hours=1)).isoformat()},
        },
        "limit": 50,
    }
    found: list[dict[str, Any]] = httpx.post(f"{server.api_url}/events/filter", json=body, timeout=10).json()["events"]
    return found


def _wait_for_event(server: PrefectServer, entry: str, since: datetime, event_id: str) -> list[dict[str, Any]]:
    """All events of ``entry`` since ``since``, once the one with ``event_id`` is stored (20 s at most)."""
    deadline = time.monotonic() + 20
    while True:
        found = _events(server, entry, since)
        if any(e["id"] == event_id for e in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def _assert_posts_nothing(forwarder: Running, server: PrefectServer, entry: str, since: datetime) -> None:
    """No event for ``entry``: checked once a later valid report (the sentinel) is stored."""
    sentinel = forwarder.report({"project": SENTINEL, "public_key": KEY})
    assert sentinel.status_code == 202
    _wait_for_event(server, SENTINEL, since, sentinel.json()["event_id"])
    assert _events(server, entry, since) == []


def _one_line_error(response: httpx.Response) -> str:
    assert response.text.count("\n") == 1 and response.text.endswith("\n")
    body = response.json()
    assert set(body) == {"error"}
    error: str = body["error"]
    return error


def test_a_valid_report_becomes_exactly_one_event_in_the_triggers_shape(
    forwarder: Running, prefect_server: PrefectServer
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=5)
    response = forwarder.report({"project": ALPHA, "public_key": KEY, "source": "gitleaks"})
    assert response.status_code == 202
    answer = response.json()
    assert answer["status"] == "forwarded" and answer["project"] == ALPHA and answer["public_key"] == KEY
    [event] = _wait_for_event(prefect_server, ALPHA, since, answer["event_id"])
    assert event["id"] == answer["event_id"]
    assert event["event"] == "langfuse.key.compromised"
    assert event["resource"] == {"prefect.resource.id": f"langfuse.project.{ALPHA}", "langfuse.project": ALPHA}
    assert event["payload"] == {"public_key": KEY, "source": "gitleaks"}


def test_each_report_gets_a_fresh_event_id_and_a_default_source(
    forwarder: Running, prefect_server: PrefectServer
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=5)
    first = forwarder.report({"project": BETA, "public_key": KEY}).json()["event_id"]
    second = forwarder.report({"project": BETA, "public_key": KEY}).json()["event_id"]
    assert first != second
    found = _wait_for_event(prefect_server, BETA, since, second)
    assert {e["id"] for e in found} >= {first, second}
    assert all(e["payload"]["source"] == "secret-scanner" for e in found)


@pytest.mark.parametrize(
    ("token", "scheme"),
    [(None, "Bearer"), (WRONG_TOKEN, "Bearer"), (TOKEN[:-1], "Bearer"), (TOKEN + "x", "Bearer"), (TOKEN, "Basic")],
    ids=["no-token", "wrong-token", "token-prefix", "token-longer", "not-bearer"],
)
def test_a_report_without_the_right_token_is_refused_and_posts_nothing(
    forwarder: Running, prefect_server: PrefectServer, token: str | None, scheme: str
) -> None:
    since = datetime.now(UTC)
    response = forwarder.report({"project": ALPHA, "public_key": KEY}, token=token, scheme=scheme)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert _one_line_error(response) == "missing or wrong bearer token"
    _assert_posts_nothing(forwarder, prefect_server, ALPHA, since)


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"project": "not-configured", "public_key": KEY}, 422, "project is not a configured entry"),
        ({"project": ALPHA, "public_key": "sk-lf-" + "s" * 32}, 422, "public_key must be"),
        ({"project": ALPHA, "public_key": "pk-lf-"}, 422, "public_key must be"),
        ({"project": ALPHA, "public_key": "pk-lf-a b"}, 422, "public_key must be"),
        ({"project": ALPHA}, 422, "public_key must be"),
        ({"project": ALPHA, "public_key": KEY, "source": "x" * 65}, 422, "source must be"),
        ({"project": ALPHA, "public_key": KEY, "deployment": "other"}, 422, "unexpected field"),
        ([{"project": ALPHA, "public_key": KEY}], 400, "the body must be a JSON object"),
    ],
    ids=["unknown-entry", "secret-key", "empty-key", "key-with-space", "no-key", "long-source", "extra", "list"],
)
def test_a_report_that_fails_its_checks_is_refused_and_posts_nothing(
    forwarder: Running, prefect_server: PrefectServer, body: Any, status: int, error: str
) -> None:
    since = datetime.now(UTC)
    response = forwarder.report(body)
    assert response.status_code == status
    assert _one_line_error(response).startswith(error)
    assert "sk-lf-" not in response.text and "not-configured" not in response.text
    _assert_posts_nothing(forwarder, prefect_server, ALPHA, since)
    if body.__class__ is dict and body.get("project") == "not-configured":
        assert _events(prefect_server, "not-configured", since) == []


def test_a_body_that_is_not_json_is_refused(forwarder: Running, prefect_server: PrefectServer) -> None:
    since = datetime.now(UTC)
    response = httpx.post(
        f"{forwarder.url}/compromised",
        content=b'{"project": "' + ALPHA.encode() + b'", ',
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert response.status_code == 400
    assert _one_line_error(response) == "the body is not JSON"
    _assert_posts_nothing(forwarder, prefect_server, ALPHA, since)


def test_an_oversized_body_is_refused_unread(forwarder: Running, prefect_server: PrefectServer) -> None:
    since = datetime.now(UTC)
    body = json.dumps({"project": ALPHA, "public_key": KEY, "source": "a", "pad": "x" * 5000}).encode()
    response = httpx.post(
        f"{forwarder.url}/compromised", content=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    assert response.status_code == 413
    assert _one_line_error(response).startswith("the body is larger than")
    _assert_posts_nothing(forwarder, prefect_server, ALPHA, since)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/events", 404),
        ("POST", "/compromised/", 404),
        ("POST", "/compromised?project=x", 404),
        ("GET", "/compromised", 405),
        ("PUT", "/compromised", 405),
        ("DELETE", "/compromised", 405),
        ("PROPFIND", "/compromised", 405),
        ("GET", "/", 404),
    ],
)
def test_any_other_path_or_method_is_refused_and_posts_nothing(
    forwarder: Running, prefect_server: PrefectServer, method: str, path: str, status: int
) -> None:
    since = datetime.now(UTC)
    response = httpx.request(
        method,
        f"{forwarder.url}{path}",
        json={"project": ALPHA, "public_key": KEY},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert response.status_code == status
    assert "only POST /compromised" in _one_line_error(response)
    _assert_posts_nothing(forwarder, prefect_server, ALPHA, since)


def test_no_token_or_prefect_credential_ever_appears_in_answers_or_output(forwarder: Running) -> None:
    answers = [
        forwarder.report({"project": ALPHA, "public_key": KEY}, token=WRONG_TOKEN),
        forwarder.report({"project": TOKEN, "public_key": KEY}),
        forwarder.report({"project": ALPHA, "public_key": f"pk-lf-{TOKEN}!", "source": TOKEN}),
        forwarder.report({"project": ALPHA, "public_key": KEY}, path=f"/compromised?token={TOKEN}"),
        forwarder.report({"project": ALPHA, "public_key": KEY}),
    ]
    assert [a.status_code for a in answers] == [401, 422, 422, 404, 202]
    output = forwarder.output()
    assert "status=202" in output and "status=401" in output
    for text in [output, *(a.text for a in answers), *(str(a.headers) for a in answers)]:
        assert TOKEN not in text and WRONG_TOKEN not in text and PREFECT_KEY not in text


def test_each_request_is_logged_in_one_line_with_what_was_checked(forwarder: Running) -> None:
    before = forwarder.output().count("\n")
    forwarder.report({"project": ALPHA, "public_key": KEY, "source": "trufflehog"})
    forwarder.report({"project": "elsewhere", "public_key": KEY})
    deadline = time.monotonic() + 5
    while forwarder.output().count("\n") < before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    forwarded, refused = forwarder.output().splitlines()[before : before + 2]
    assert "status=202" in forwarded and f"project={ALPHA}" in forwarded and f"public_key={KEY}" in forwarded
    assert "source=trufflehog" in forwarded and "event_id=" in forwarded
    assert "status=422" in refused and "elsewhere" not in refused


def test_reports_past_the_rate_of_an_entry_are_refused(prefect_server: PrefectServer, tmp_path: Path) -> None:
    running = _start(tmp_path, prefect_server, "--per-minute", "2")
    try:
        since = datetime.now(UTC)  # the events' time is the forwarder's clock: this machine's
        answers = [running.report({"project": ALPHA, "public_key": KEY}) for _ in range(3)]
        other = running.report({"project": BETA, "public_key": KEY})
    finally:
        _stop(running)
    assert [a.status_code for a in answers] == [202, 202, 429]
    assert _one_line_error(answers[2]).startswith("more than 2 reports for this entry")
    assert other.status_code == 202
    found = _wait_for_event(prefect_server, BETA, since, other.json()["event_id"])
    assert len(found) == 1
    assert {e["id"] for e in _events(prefect_server, ALPHA, since)} == {a.json()["event_id"] for a in answers[:2]}


def test_it_refuses_to_start_without_a_token_and_says_so_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "rotation.yaml"
    config.write_text(CONFIG)
    done = subprocess.run(
        [sys.executable, "-m", "flows.trigger.forwarder", "--config", str(config), "--token-env", "NO_SUCH_VAR"],
        env={"PATH": "/usr/bin:/bin", "PREFECT_API_URL": "http://127.0.0.1:9/api"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: environment variable NO_SUCH_VAR: the token is missing or shorter than 16 characters"
    ]


def test_its_help_lists_its_exit_codes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flows.trigger.forwarder", "--help"], capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0
    assert "exit codes:" in done.stdout
    assert "0  stopped by Ctrl-C or SIGTERM" in done.stdout and "2  it could not start" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
@pytest.mark.usefixtures("no_earlier_emergency_runs")  # the entry's hourly limit counts earlier tests' runs
def test_a_report_through_the_forwarder_makes_the_emergency_trigger_contain_the_key(
    rotation_env: RotationEnv,
    prefect_server: PrefectServer,
    automation: str,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    old = rotation_env.current()
    running = _start(tmp_path, prefect_server, config=rotation_env.write_config())
    try:
        response = running.report({"project": ENTRY, "public_key": old.public_key, "source": "gitleaks"})
        assert response.status_code == 202
        run = finished_run_of(automation)
    finally:
        _stop(running)
    assert run.state.is_completed(), run.state.message
    assert run.parameters["project"] == ENTRY and run.parameters["public_key"] == old.public_key
    assert run.parameters["event_id"] == response.json()["event_id"] and run.parameters["event_source"] == "gitleaks"
    assert not rotation_env.works(old)


# --- the checks on their own ------------------------------------------------------------------


def test_only_the_entry_names_are_read_and_no_referenced_variable_is_needed(tmp_path: Path) -> None:
    config = tmp_path / "rotation.yaml"
    config.write_text(CONFIG)
    assert entry_names(config) == {ALPHA, BETA, SENTINEL}


def test_a_configuration_without_literal_entry_names_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "rotation.yaml"
    config.write_text("projects:\n  - name: ${ENTRY}\n")
    with pytest.raises(ForwarderSetupError, match=r"projects\[0\]\.name"):
        entry_names(config)


def test_a_report_is_parsed_only_when_every_field_checks() -> None:
    report = parse_report(json.dumps({"project": ALPHA, "public_key": KEY}).encode(), frozenset({ALPHA}))
    assert (report.project, report.public_key, report.source) == (ALPHA, KEY, "secret-scanner")
    with pytest.raises(ReportRefused) as refused:
        parse_report(b"\xff", frozenset({ALPHA}))
    assert refused.value.status == 400


def test_the_rate_limit_is_a_sliding_minute_per_entry() -> None:
    limit = RateLimit(2)
    assert [limit.allow("a", now=t) for t in (0, 1, 2)] == [True, True, False]
    assert limit.allow("b", now=2)
    assert limit.allow("a", now=60.5)


# --- slow clients: one deadline per request, a cap on connections, shedding with 503 -----------


class SlowClients:
    """``count`` real sockets from ``source`` (a loopback address) that send a request line and
    then one header line every ``interval_s``, never finishing their headers (a slow-loris client).
    A connection the forwarder answers or closes is kept with what it was told."""

    def __init__(self, url: str, count: int, *, source: str = "127.0.0.1", interval_s: float = 0.5) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.open: list[socket.socket] = []
        self.answers: list[bytes] = []
        self._stop = threading.Event()
        for _ in range(count):
            sock = socket.create_connection((host, int(port)), timeout=10, source_address=(source, 0))
            sock.sendall(b"POST /compromised HTTP/1.1\r\nHost: forwarder\r\n")
            self.open.append(sock)
        self._thread = threading.Thread(target=self._trickle, args=(interval_s,), daemon=True)
        self._thread.start()

    def _trickle(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            for sock in list(self.open):
                try:
                    readable, _, _ = select.select([sock], [], [], 0)
                    if readable:
                        self._answered(sock)
                        continue
                    sock.sendall(b"X-Slow: a\r\n")
                except OSError:
                    self._answered(sock)

    def _answered(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self.answers.append(_read_answer(sock, timeout_s=1))
        with contextlib.suppress(ValueError):
            self.open.remove(sock)
        sock.close()

    def wait_until_open(self, count: int, timeout_s: float = 30) -> None:
        """Until the forwarder has answered or closed all but ``count`` of the connections."""
        deadline = time.monotonic() + timeout_s
        while len(self.open) > count:
            assert time.monotonic() < deadline, f"{len(self.open)} connections still open"
            time.sleep(0.1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self.open:
            sock.close()


def _read_answer(sock: socket.socket, timeout_s: float = 10) -> bytes:
    """The whole answer: the forwarder closes every connection after answering, and may write the
    head and the body in two sends, so one ``recv`` can return the head alone."""
    sock.settimeout(timeout_s)
    chunks = []
    with contextlib.suppress(OSError):
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


def _status(answer: bytes) -> int:
    """The status code of a raw HTTP answer (``HTTP/1.x NNN ...``)."""
    return int(answer.split(b" ", 2)[1])


def _report_from(running: Running, source: str, body: Any) -> httpx.Response:
    """A report over a connection from the loopback address ``source`` (another client)."""
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=10) as client:
        return client.post(f"{running.url}/compromised", json=body, headers={"Authorization": f"Bearer {TOKEN}"})


def _threads(running: Running) -> int:
    return len(os.listdir(f"/proc/{running.process.pid}/task"))


def _wait_for_log(running: Running, text: str, count: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while running.output().count(text) < count:
        assert time.monotonic() < deadline, f"expected {count} log lines with {text!r}: {running.output()[-2000:]}"
        time.sleep(0.1)


def _raw_request(
    running: Running, head: bytes, *, source: str = "127.0.0.1", body_trickle: int = 0
) -> tuple[bytes, int]:
    """Send ``head`` (request line and headers) at once, then ``body_trickle`` body bytes one every
    0.5 s, stopping when the forwarder answers: what it answered and how many body bytes were sent."""
    host, port = running.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30, source_address=(source, 0)) as sock:
        sock.sendall(head)
        sent = 0
        while sent < body_trickle:
            readable, _, _ = select.select([sock], [], [], 0.5)
            if readable:
                break
            with contextlib.suppress(OSError):
                sock.sendall(b"x")
                sent += 1
        return _read_answer(sock), sent


def _trickled_headers(running: Running, lines: int) -> tuple[bytes, int]:
    """A request whose header lines come one every 0.5 s: the answer, and how many lines were sent."""
    host, port = running.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /compromised HTTP/1.1\r\nHost: forwarder\r\n")
        for sent in range(lines):
            readable, _, _ = select.select([sock], [], [], 0.5)
            if readable:
                return _read_answer(sock), sent
            sock.sendall(f"X-Slow-{sent}: a\r\n".encode())
        return b"", lines


@pytest.mark.slow
def test_a_client_trickling_header_lines_is_cut_off_at_the_requests_deadline(
    prefect_server: PrefectServer, tmp_path: Path
) -> None:
    running = _start(tmp_path, prefect_server, "--request-timeout", "2")
    try:
        answer, sent = _trickled_headers(running, lines=60)  # 30 s of headers, each line well within any read timeout
    finally:
        _stop(running)
    assert sent < 60, "the forwarder waited for every header line"
    assert _status(answer) == 408
    assert b'"the request did not arrive in time"' in answer


@pytest.mark.slow
def test_a_body_trickled_one_byte_at_a_time_is_cut_off_at_the_same_deadline(
    prefect_server: PrefectServer, tmp_path: Path
) -> None:
    running = _start(tmp_path, prefect_server, "--request-timeout", "2")
    head = (
        f"POST /compromised HTTP/1.1\r\nHost: forwarder\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 200\r\n\r\n"
    ).encode()
    try:
        answer, sent = _raw_request(running, head, body_trickle=200)
    finally:
        _stop(running)
    assert sent < 200, "the forwarder waited for every byte of the body"
    assert _status(answer) == 408


@pytest.mark.slow
def test_the_token_is_checked_before_any_body_is_waited_for(prefect_server: PrefectServer, tmp_path: Path) -> None:
    running = _start(tmp_path, prefect_server, "--request-timeout", "300")
    head = (
        f"POST /compromised HTTP/1.1\r\nHost: forwarder\r\nAuthorization: Bearer {WRONG_TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 4000\r\n\r\n"
    ).encode()
    try:
        answer, _ = _raw_request(running, head)  # the body never comes
    finally:
        _stop(running)
    assert _status(answer) == 401


@pytest.mark.slow
def test_hundreds_of_slow_clients_hold_a_bounded_number_of_threads_and_a_report_still_gets_through(
    prefect_server: PrefectServer, tmp_path: Path
) -> None:
    # The default caps; a long deadline, so the held clients are still held when the report comes.
    running = _start(tmp_path, prefect_server, "--request-timeout", "300")
    slow = SlowClients(running.url, 300)
    try:
        _wait_for_log(running, "status=503", 300 - DEFAULT_MAX_PER_CLIENT)
        assert _threads(running) <= DEFAULT_MAX_PER_CLIENT + 3  # its own two, one per held connection
        slow.wait_until_open(DEFAULT_MAX_PER_CLIENT)
        assert len(slow.open) == DEFAULT_MAX_PER_CLIENT  # still held, still trickling
        assert {_status(a) for a in slow.answers} == {503}
        legit = _report_from(running, "127.0.0.2", {"project": ALPHA, "public_key": KEY})
        assert legit.status_code == 202, legit.text
        assert len(slow.open) == DEFAULT_MAX_PER_CLIENT
        same_client = httpx.post(
            f"{running.url}/compromised",
            json={"project": ALPHA, "public_key": KEY},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        )
        assert same_client.status_code == 503
        assert same_client.headers["Retry-After"] == "1"
        assert _one_line_error(same_client).startswith("too many connections from this client")
    finally:
        slow.close()
        _stop(running)
    assert TOKEN not in running.output()


@pytest.mark.slow
def test_past_the_connection_cap_every_client_is_shed_with_503_until_a_slot_frees(
    prefect_server: PrefectServer, tmp_path: Path
) -> None:
    running = _start(
        tmp_path, prefect_server, "--max-connections", "6", "--max-per-client", "3", "--request-timeout", "300"
    )
    holders = [SlowClients(running.url, 3, source="127.0.0.3"), SlowClients(running.url, 3, source="127.0.0.4")]
    report = {"project": ALPHA, "public_key": KEY}

    def from_another_client() -> httpx.Response:
        return _report_from(running, "127.0.0.2", report)

    try:
        _wait_for_threads(running, at_least=6)
        busy = from_another_client()
        assert busy.status_code == 503
        assert _one_line_error(busy).startswith("busy: too many connections")
        assert _threads(running) <= 6 + 3
        for holder in holders:
            holder.close()
        deadline = time.monotonic() + 30
        while (answer := from_another_client()).status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert answer.status_code == 202, answer.text
    finally:
        for holder in holders:
            holder.close()
        _stop(running)


def _wait_for_threads(running: Running, *, at_least: int, timeout_s: float = 30) -> None:
    """Until the forwarder serves ``at_least`` connections (one thread each, besides its own two)."""
    deadline = time.monotonic() + timeout_s
    while _threads(running) < at_least + 2:
        assert time.monotonic() < deadline, f"the forwarder runs {_threads(running)} threads"
        time.sleep(0.1)


def test_the_connection_options_are_checked_at_start(tmp_path: Path) -> None:
    config = tmp_path / "rotation.yaml"
    config.write_text(CONFIG)
    token = tmp_path / "token"
    token.write_text(TOKEN)
    for option, value in [("--max-connections", "0"), ("--max-per-client", "0"), ("--request-timeout", "0")]:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "flows.trigger.forwarder",
                "--config",
                str(config),
                "--token-file",
                str(token),
                option,
                value,
            ],
            env={"PATH": "/usr/bin:/bin", "PREFECT_API_URL": "http://127.0.0.1:9/api"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [f"error: {option} must be greater than 0"], done.stderr
