"""Restart hooks beyond HTTP: ``restart_command`` (argv, no shell, timeout, exit code, redacted
log), and ``headers`` from the environment on restart and health requests, kept secret."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from connectors.consumers import Consumer, ConsumerClient
from connectors.errors import ConsumerError
from devstack.consumer import start_consumer_process
from flows.config.model import parse_config
from flows.errors import ConfigError
from flows.rotation.entry_run import execute
from flows.rotation.runners import DirectRunner
from tests.fixtures.rotation import ENTRY, RotationEnv

PY = sys.executable
TOKEN = "restart-token-7f3a9c2e5b"


def command_consumer(argv: list[str], **overrides: Any) -> Consumer:
    fields: dict[str, Any] = {
        "name": "api",
        "health_url": "http://127.0.0.1:9/health",
        "restart_command": argv,
    }
    fields.update(overrides)
    return Consumer.model_validate(fields)


def script(code: str) -> list[str]:
    return [PY, "-c", code]


# --- restart_command --------------------------------------------------------------------------------


def test_a_restart_command_runs_as_argv_without_a_shell(tmp_path: Path) -> None:
    record = tmp_path / "argv.json"
    argv = [
        *script(f"import json, sys; open({str(record)!r}, 'w').write(json.dumps(sys.argv[1:]))"),
        "rollout",
        "restart",
        "deployment/api; touch /tmp/pwned",
        "$HOME",
        "$(id)",
    ]
    ConsumerClient().restart(command_consumer(argv))
    assert json.loads(record.read_text()) == [
        "rollout",
        "restart",
        "deployment/api; touch /tmp/pwned",
        "$HOME",
        "$(id)",
    ]


def test_a_real_local_command_restarts(tmp_path: Path) -> None:
    marker = tmp_path / "restarted"
    ConsumerClient().restart(command_consumer(["touch", str(marker)]))
    assert marker.exists()


def test_a_non_zero_exit_is_a_failed_restart(tmp_path: Path) -> None:
    with pytest.raises(ConsumerError) as caught:
        ConsumerClient().restart(command_consumer(script("import sys; sys.exit(3)")))
    assert caught.value.message == f"consumer 'api': restart command {os.path.basename(PY)!r} exited with code 3"


def test_a_command_that_does_not_exist_is_a_failed_restart() -> None:
    with pytest.raises(ConsumerError, match="restart command 'no-such-kubectl' not found"):
        ConsumerClient().restart(command_consumer(["no-such-kubectl", "rollout", "restart"]))


def test_a_hanging_command_is_killed_with_its_children_at_the_timeout(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, time\n"
        f"child = subprocess.Popen(['sleep', '60'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    with pytest.raises(ConsumerError, match=r"timed out after 1s"):
        ConsumerClient().restart(command_consumer(script(code), restart_timeout_s=1))
    assert time.monotonic() - started < 10
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_command_output_is_logged_redacted_and_cut_short(caplog: pytest.LogCaptureFixture) -> None:
    code = (
        "import sys\n"
        "for i in range(2000): print('progress line', i)\n"
        f"print('Authorization: Bearer {TOKEN}')\n"
        "print('token=abc123secretvalue and sk-lf-0123456789abcdef')\n"
        f"print('the header value itself: {TOKEN}')\n"
        "print('error: deployments.apps \"api\" not found', file=sys.stderr)\n"
        "sys.exit(1)\n"
    )
    consumer = command_consumer(script(code), headers={"Authorization": f"Bearer {TOKEN}"})
    with caplog.at_level(logging.INFO, logger="langfuse_rotate.consumers"), pytest.raises(ConsumerError) as caught:
        ConsumerClient().restart(consumer)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert 'error: deployments.apps "api" not found' in logged
    assert TOKEN not in logged and "abc123secretvalue" not in logged and "sk-lf-0123456789abcdef" not in logged
    assert "progress line 10 " not in logged  # only the tail
    assert len(logged) < 800
    assert "\n" not in caught.value.message and "not found" not in caught.value.message  # output stays in the log


def test_a_successful_command_logs_its_output(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="langfuse_rotate.consumers"):
        ConsumerClient().restart(command_consumer(script("print('deployment.apps/api restarted')")))
    assert "deployment.apps/api restarted" in caplog.text


# --- configuration ---------------------------------------------------------------------------------

CONFIG = """\
langfuse:
  host: http://127.0.0.1:3000
  org_public_key: pk-lf-org
  org_secret_key: sk-lf-org-secret
stores:
  main: {kind: vault, url: http://127.0.0.1:8200, token: s.t}
projects:
  - name: chatbot
    project_id: p1
    store: main
    path: langfuse/chatbot
    consumers:
      - CONSUMER
"""


def consumers_of(consumer: str) -> Any:
    return parse_config(CONFIG.replace("CONSUMER", consumer), source="rotation.yaml").projects[0].consumers


def config_error(consumer: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(CONFIG.replace("CONSUMER", consumer), source="rotation.yaml")
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_restart_command_in_the_configuration() -> None:
    (consumer,) = consumers_of(
        "{name: api, health_url: 'http://a/health', "
        "restart_command: [kubectl, rollout, restart, deployment/api, -n, prod], restart_timeout_s: 90}"
    )
    assert consumer.restart_command == ["kubectl", "rollout", "restart", "deployment/api", "-n", "prod"]
    assert consumer.restart_timeout_s == 90


def test_a_shell_string_is_rejected() -> None:
    message = config_error("{name: api, health_url: 'http://a/health', restart_command: 'kubectl rollout restart x'}")
    assert message.startswith("rotation.yaml:13:")
    assert "restart_command: must be a list of arguments (argv), not a shell string" in message


def test_an_empty_command_is_rejected() -> None:
    assert "must name the program" in config_error("{name: api, health_url: 'http://a/health', restart_command: []}")


def test_url_and_command_together_are_rejected() -> None:
    message = config_error(
        "{name: api, health_url: 'http://a/health', restart_url: 'http://a/restart', restart_command: [/bin/true]}"
    )
    assert "restart_url or restart_command, not both" in message


def test_headers_come_from_the_environment_and_stay_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTART_TOKEN", TOKEN)
    text = CONFIG.replace(
        "CONSUMER",
        "{name: api, health_url: 'http://a/health', headers: {Authorization: 'Bearer ${RESTART_TOKEN}'}}",
    )
    config = parse_config(text)
    (consumer,) = config.projects[0].consumers
    assert consumer.headers["Authorization"].get_secret_value() == f"Bearer {TOKEN}"
    assert TOKEN not in repr(config) and TOKEN not in str(config)
    assert TOKEN not in config.model_dump_json()


def test_a_missing_header_variable_is_named() -> None:
    message = config_error(
        "{name: api, health_url: 'http://a/health', headers: {Authorization: 'Bearer ${NO_SUCH_RESTART_TOKEN}'}}"
    )
    assert "NO_SUCH_RESTART_TOKEN" in message


def test_an_invalid_header_name_is_rejected() -> None:
    assert "not a valid HTTP header name" in config_error(
        "{name: api, health_url: 'http://a/health', headers: {'Bad Header': x}}"
    )


# --- headers on the wire --------------------------------------------------------------------------


class RecordingConsumer:
    """``GET /health`` and ``POST /restart`` that record the headers they got."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, body: bytes) -> None:
                recorder.seen.append((self.command, self.path, dict(self.headers.items())))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._reply(json.dumps({"langfuse_public_key": "pk-lf-abc"}).encode())

            def do_POST(self) -> None:
                self._reply(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def recorder() -> Iterator[RecordingConsumer]:
    server = RecordingConsumer()
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_restart_and_health_requests_carry_the_headers(
    recorder: RecordingConsumer, caplog: pytest.LogCaptureFixture
) -> None:
    consumer = Consumer(
        name="api",
        health_url=f"{recorder.url}/health",
        restart_url=f"{recorder.url}/restart",
        headers={"Authorization": SecretStr(f"Bearer {TOKEN}"), "X-Team": SecretStr("billing")},
    )
    with caplog.at_level(logging.DEBUG):
        client = ConsumerClient()
        client.restart(consumer)
        observation = client.observe(consumer)
    assert observation.public_key == "pk-lf-abc"
    assert [(method, path) for method, path, _ in recorder.seen] == [("POST", "/restart"), ("GET", "/health")]
    for _, _, headers in recorder.seen:
        assert headers["Authorization"] == f"Bearer {TOKEN}"
        assert headers["X-Team"] == "billing"
    assert TOKEN not in caplog.text
    assert TOKEN not in repr(consumer) and TOKEN not in consumer.model_dump_json()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(0): count it as dead
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except OSError:
        return False


# --- a whole rotation with a command as the restart hook --------------------------------------------


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_a_rotation_restarts_its_consumer_through_a_command(
    rotation_env: RotationEnv, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = rotation_env
    store_config = env.store.config()
    monkeypatch.setenv("RESTART_TOKEN", TOKEN)
    calls = tmp_path / "restart-calls"
    with start_consumer_process(
        name="api",
        store="vault",
        path=env.path,
        vault_url=store_config["url"],
        vault_token=store_config["token"],
        env=env.env,
    ) as proc:
        poke = (
            "import sys, urllib.request\n"
            "open(sys.argv[2], 'a').write('restart\\n')\n"
            "urllib.request.urlopen(urllib.request.Request(sys.argv[1], method='POST'), timeout=5)\n"
        )
        env.consumers = [
            {
                "name": "api",
                "health_url": proc.health_url,
                "restart_command": [PY, "-c", poke, proc.restart_url, str(calls)],
                "restart_timeout_s": 30,
                "headers": {"Authorization": "Bearer ${RESTART_TOKEN}"},
            }
        ]
        result = execute("rotate", ENTRY, str(env.write_config()), DirectRunner())

    assert result.status == "rotated", result.error
    assert calls.read_text() == "restart\n"
    assert env.current().public_key != env.project.public_key
    assert TOKEN not in env.audit_path.read_text()
