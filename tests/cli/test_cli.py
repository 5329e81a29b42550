"""The command line as platform engineers expect it (issue 13 "Command line" and "Failures that look
like crashes"): --version, help, exit codes in --help, one line when Prefect is down, and Prefect's
own settings (profiles included) deciding whether Prefect is reachable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devstack.prefect_server import PrefectServer, free_port
from tests.fixtures.devstack import HealthStub
from tests.fixtures.rotation import ENTRY, RotationEnv

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli.main", *args],
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_version_prints_the_installed_version() -> None:
    from importlib.metadata import version

    proc = cli("--version")

    assert proc.returncode == 0
    assert proc.stdout.strip() == f"langfuse-rotate {version('langfuse-key-rotation')}"


def test_no_command_prints_help_and_exits_2(tmp_path: Path) -> None:
    proc = cli(env=dict(os.environ, XDG_STATE_HOME=str(tmp_path)))

    assert proc.returncode == 2
    assert "usage: langfuse-rotate" in proc.stderr and "emergency" in proc.stderr


def test_help_lists_the_exit_codes() -> None:
    """The rotation's exit codes: the commands that rotate, and ``demo``, which exits with its rotation's code."""
    for command in ([], ["rotate"], ["emergency"], ["reconcile"], ["demo"]):
        args = [*command, "--help"]
        proc = cli(*args)
        assert proc.returncode == 0
        assert "exit codes:" in proc.stdout
        for code in ("0  done", "1  failed", "2  bad input", "3  another rotation", "4  done but needs a person"):
            assert code in proc.stdout, (args, code)


@pytest.mark.parametrize(
    ("command", "codes"),
    [
        ("status", ("0  everything was read", "1  something could not be read", "2  bad input")),
        ("report", ("0  no findings", "1  it could not read what it needs", "2  bad input", "4  findings")),
        ("sandbox", ("0  stopped by Ctrl-C or SIGTERM", "1  the local stack could not start", "2  bad input")),
    ],
)
def test_the_read_only_commands_and_the_sandbox_list_their_own_exit_codes(command: str, codes: tuple[str, ...]) -> None:
    proc = cli(command, "--help")

    assert proc.returncode == 0
    assert "exit codes:" in proc.stdout
    for code in codes:
        assert code in proc.stdout, code


@pytest.mark.parametrize(
    "args",
    [["rotate", "--projct", "a"], ["rotate", "--all", "--dry-rn"], ["status", "--projct", "a"]],
)
def test_a_mistyped_option_names_itself_first_with_the_closest_known_one(args: list[str]) -> None:
    proc = cli(*args)

    assert proc.returncode == 2
    typo = args[-2] if args[-1] == "a" else args[-1]
    meant = {"--projct": "--project", "--dry-rn": "--dry-run"}[typo]
    assert proc.stderr == (
        f"langfuse-rotate {args[0]}: error: unrecognized arguments: {typo} (did you mean {meant}?) (see --help)\n"
    )


def test_an_abbreviated_option_argparse_accepts_is_not_called_a_typo(tmp_path: Path) -> None:
    proc = cli("rotate", "--proj", "a", "--config", "missing.yaml", cwd=tmp_path)

    assert proc.returncode == 2
    assert proc.stderr == "langfuse-rotate: error: missing.yaml: cannot read configuration: No such file or directory\n"


@pytest.mark.parametrize(
    "args",
    [
        ["rotate", "--project", "x"],
        ["rotate", "--all"],
        ["emergency", "--project", "x", "--no-prefect"],
        ["reconcile"],
        ["status"],
        ["report"],
    ],
)
def test_every_command_names_the_configuration_as_given(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "rotation.yaml").write_text("langfuse:\n  hots: http://127.0.0.1:3000\n")

    proc = cli(*args, "--config", "conf/rotation.yaml", cwd=tmp_path)

    assert proc.returncode == 2
    assert "langfuse-rotate: error: conf/rotation.yaml:2: langfuse.hots: unknown key (did you mean `host`?)" in (
        proc.stderr
    ), proc.stderr
    assert str(tmp_path) not in proc.stderr


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_rotate_with_prefect_down_says_so_in_one_line_and_changes_nothing(rotation_env: RotationEnv) -> None:
    before = rotation_env.current()
    down = f"http://127.0.0.1:{free_port()}/api"

    proc = rotation_env.cli(
        "rotate",
        "--config",
        str(rotation_env.write_config()),
        "--project",
        ENTRY,
        "--json",
        env={"PREFECT_API_URL": down},
    )

    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert f"Prefect at {down} is not reachable" in proc.stderr
    assert json.loads(proc.stdout)["status"] == "failed"
    assert rotation_env.current().public_key == before.public_key
    final = [json.loads(x) for x in rotation_env.audit_path.read_text().splitlines()][-1]
    assert final["langfuse_rotate"]["final"] and final["event"]["action"] == "rotate"


def _profile_home(tmp_path: Path, url: str) -> dict[str, str]:
    home = tmp_path / "prefect-home"
    home.mkdir()
    (home / "profiles.toml").write_text(
        f'active = "remote"\n\n[profiles.ephemeral]\n\n[profiles.remote]\nPREFECT_API_URL = "{url}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return env | {"PREFECT_HOME": str(home)}


def test_the_prefect_address_is_read_as_prefect_reads_it_profiles_included(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/api"
    env = _profile_home(tmp_path, url)
    code = (
        "from flows.prefect.rest import prefect_api_url\n"
        "from prefect.settings import get_current_settings\n"
        "print(prefect_api_url()); print(get_current_settings().api.url)\n"
    )

    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )

    ours, prefects = proc.stdout.split()
    assert ours == prefects == url


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_emergency_contains_without_prefect_when_the_active_profiles_server_is_down(
    rotation_env: RotationEnv, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}/api"
    env = _profile_home(tmp_path, url)
    env |= {k: v for k, v in rotation_env.env.items() if not k.startswith("PREFECT_")}
    old = rotation_env.current()

    proc = cli("emergency", "--config", str(rotation_env.write_config()), "--project", ENTRY, "--json", env=env)

    assert proc.returncode == 0, proc.stderr
    assert f"Prefect at {url} is not reachable: running without Prefect" in proc.stderr
    assert json.loads(proc.stdout)["orchestrator"] == "none"
    assert not rotation_env.works(old)


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
@pytest.mark.slow  # waits through several consumer poll rounds
def test_long_waits_show_each_consumer_poll_round_with_the_time_left(
    rotation_env: RotationEnv, health_stub: HealthStub
) -> None:
    health_stub.set(mode="ok", public_key=rotation_env.current().public_key)
    rotation_env.consumers = [{"name": "billing-api", "health_url": health_stub.health_url}]
    rotation_env.entry_overrides = {"wait_timeout_s": 2}

    proc = rotation_env.cli(
        "emergency", "--config", str(rotation_env.write_config()), "--project", ENTRY, "--no-prefect", "--json"
    )

    assert proc.returncode == 4
    rounds = [line for line in proc.stderr.splitlines() if "wait_for_restarts: 0/1 switched" in line]
    assert len(rounds) >= 2 and "waiting for billing-api (on pk-lf-" in rounds[0] and rounds[0].endswith("s left")
    assert "  .. revoke: started" in proc.stderr and "  .. revoke: done in " in proc.stderr
    assert proc.stdout.count("\n") == 1


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_under_prefect_the_runs_logs_tell_each_step_start_and_end(
    rotation_env: RotationEnv, prefect_server: PrefectServer
) -> None:
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from flows.rotate import rotate

    state: Any = rotate(project=ENTRY, config_path=str(rotation_env.write_config()), return_state=True)
    assert state.is_completed(), state.message

    deadline = time.monotonic() + 30
    messages: list[str] = []
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
            )
            messages = [log.message for log in logs]
            if any(m.startswith("finish: done") for m in messages):
                break
            time.sleep(1)
    for step in ("create", "store", "wait_for_restarts", "verify", "revoke", "finish"):
        assert f"{step}: started" in messages, step
        assert any(m.startswith(f"{step}: done in ") for m in messages), step


def test_the_embedded_servers_start_is_announced_and_its_first_start_says_it_migrates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.prefect.rest import embedded_server_notice

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no prefect.toml
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    first = embedded_server_notice()
    (tmp_path / "prefect-home").mkdir()
    (tmp_path / "prefect-home" / "prefect.db").write_bytes(b"")
    later = embedded_server_notice()
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")

    assert first is not None and "starting Prefect's embedded server" in first and "migrates" in first
    assert later is not None and "starting Prefect's embedded server" in later and "migrates" not in later
    assert embedded_server_notice() is None, "a configured server is not the embedded one"


@pytest.mark.slow
@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_a_rotation_on_the_embedded_server_says_first_that_it_is_starting(rotation_env: RotationEnv) -> None:
    env = {k: v for k, v in rotation_env.env.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(rotation_env.tmp / "fresh-prefect-home")

    proc = cli("rotate", "--config", str(rotation_env.write_config()), "--project", ENTRY, env=env)

    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    first = proc.stdout.splitlines()[0]
    assert first.startswith("langfuse-rotate: starting Prefect's embedded server") and "migrates" in first
    assert f"langfuse-rotate rotate {ENTRY}: rotated" in proc.stdout


def test_the_documented_synopsis_lists_every_command_with_every_option() -> None:
    from flows.cli.main import build_parser

    page = (REPO / "docs" / "command-line.md").read_text()
    block = page.split("# Command line", 1)[1].split("```", 2)[1]
    synopsis: dict[str, str] = {}
    for line in block.splitlines():
        words = line.split()
        if len(words) > 1 and words[0] == "langfuse-rotate":
            synopsis[words[1]] = synopsis.get(words[1], "") + " " + line

    for name, command in build_parser().commands.items():
        assert name in synopsis, name
        for action in command._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    assert option in synopsis[name], (name, option)
