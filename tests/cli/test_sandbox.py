"""``langfuse-rotate sandbox``: the local stack stays up with a ready configuration; with the
``export`` lines it prints, ``status``, ``report`` and ``rotate --all`` work with no other argument;
SIGTERM stops everything it started and removes its folder."""

from __future__ import annotations

import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.prefect_server import PrefectServer
from devstack.sandbox import READY_LINE

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120


class RunningSandbox:
    """The sandbox as a user starts it: a process whose lines are read as they come."""

    def __init__(self, store: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli.main", "sandbox", "--store", store],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, predicate: str, timeout_s: float) -> str:
        """The first line (from the start) containing ``predicate``, waiting up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = next((line for line in self.lines if predicate in line), None)
            if found is not None:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line with {predicate!r} in {timeout_s}s:\n" + "\n".join(self.lines))
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the sandbox ended (rc={self.proc.wait()}):\n" + "\n".join(self.lines))
            self.lines.append(line)

    def exports(self) -> dict[str, str]:
        found = {}
        for line in self.lines:
            if line.startswith("export "):
                name, _, value = shlex.split(line)[1].partition("=")
                found[name] = value
        return found

    def descendants(self) -> set[int]:
        """Every process started by the sandbox, its children's children included (from /proc)."""
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                parents[int(entry.name)] = int(fields[1])
        found: set[int] = set()
        frontier = {self.proc.pid}
        while frontier:
            children = {pid for pid, parent in parents.items() if parent in frontier}
            frontier = children - found
            found |= children
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def sandbox_env() -> dict[str, str]:
    """What a user's shell has: no test variables, no Prefect server configured."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TEST_", "LANGFUSE_ROTATE_", "AWS_", "VAULT_", "PREFECT_API"))
    }


@pytest.fixture
def started(request: pytest.FixtureRequest, sandbox_env: dict[str, str]) -> Iterator[RunningSandbox]:
    sandbox = RunningSandbox(request.param, sandbox_env)
    try:
        yield sandbox
    finally:
        sandbox.stop()


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli.main", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=240
    )


@pytest.mark.parametrize(
    ("started", "stop"),
    [("vault", signal.SIGTERM), pytest.param("aws", signal.SIGINT, marks=pytest.mark.slow)],
    indirect=["started"],
)
def test_the_sandbox_answers_status_report_and_rotate_all_then_stops_everything_it_started(
    started: RunningSandbox, stop: signal.Signals, sandbox_env: dict[str, str], prefect_server: PrefectServer
) -> None:
    started.wait_for(READY_LINE, START_TIMEOUT_S)
    exports = started.exports()
    config = Path(exports["LANGFUSE_ROTATE_CONFIG"])
    referenced = set(re.findall(r"\$\{([A-Z_]+)\}", config.read_text()))
    assert {"LANGFUSE_ORG_PUBLIC_KEY", "LANGFUSE_ORG_SECRET_KEY"} <= referenced <= set(exports)
    assert config.is_relative_to(Path(os.environ["XDG_STATE_HOME"]) / "langfuse-rotate" / "sandbox")
    for command in ("status", "report", "rotate --all"):
        assert [line for line in started.lines if line.startswith(f"langfuse-rotate {command} ")], command
    shell = sandbox_env | exports

    status = _run(shell, "status")
    report = _run(shell, "report")
    # rotate --all under the session's Prefect server (the embedded one would migrate a fresh
    # database first; test_cli covers that)
    rotated = _run(prefect_server.client_env(shell), "rotate", "--all")

    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.startswith("chatbot-prod: pk-lf-") and "\nsearch-prod: pk-lf-" in status.stdout
    assert report.returncode == 4, report.stdout + report.stderr
    [stray] = [line for line in report.stdout.splitlines() if "stray-key" in line]
    assert "which no entry covers" in stray and "pk-lf-" in stray
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    assert "rotate --all: rotated: 2 rotated" in rotated.stdout
    started.wait_for("notification: [success] Langfuse fleet rotation rotated: 2 rotated", 30)

    children = started.descendants()
    assert children, "the store's server and the consumers run as processes of their own"
    started.proc.send_signal(stop)  # SIGINT: Ctrl-C

    assert started.proc.wait(60) == 0, "\n".join(started.lines)
    started.wait_for("[sandbox] stopped", 5)
    assert [pid for pid in children if _alive(pid)] == [], "no process left behind"
    assert not config.parent.exists(), "its folder is removed"
