"""The test suite never writes to the user's home or leaves files in the system temp directory
(``tests/isolation.py``): the check that fails the run, and the run failing when a test does."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.isolation import IGNORE_ENV_VAR, find_writes, take_baseline

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A home with some history and a system temp directory, both existing before the check starts."""
    monkeypatch.delenv(IGNORE_ENV_VAR, raising=False)
    home, temp = tmp_path / "home", tmp_path / "temp"
    (home / ".local" / "state" / "langfuse-rotate").mkdir(parents=True)
    (home / ".local" / "state" / "langfuse-rotate" / "audit.jsonl").write_text("{}\n")
    (home / ".prefect").mkdir()
    (temp / "someone-elses").mkdir(parents=True)
    return home, temp


def test_nothing_written_is_nothing_reported(machine: tuple[Path, Path]) -> None:
    home, temp = machine
    baseline = take_baseline(home, temp)

    assert find_writes(baseline) == []


def test_an_appended_line_a_new_file_and_a_new_folder_in_the_home_are_reported(machine: tuple[Path, Path]) -> None:
    home, temp = machine
    baseline = take_baseline(home, temp)

    with (home / ".local" / "state" / "langfuse-rotate" / "audit.jsonl").open("a") as audit:
        audit.write('{"outcome": "bad_input"}\n')
    (home / ".prefect" / "storage").mkdir()
    (home / ".vault-token").write_text("t")

    assert sorted(find_writes(baseline)) == sorted(
        str(p)
        for p in (
            home / ".local" / "state" / "langfuse-rotate" / "audit.jsonl",
            home / ".prefect" / "storage",
            home / ".vault-token",
        )
    )


def test_a_new_entry_in_the_system_temp_directory_is_reported_but_not_the_tests_own(
    machine: tuple[Path, Path],
) -> None:
    home, temp = machine
    own = temp / "langfuse-rotate-tests-abc"
    own.mkdir()
    baseline = take_baseline(home, temp, own=[own])

    (temp / "tmpk2j3rotation").mkdir()
    (temp / "tmpk2j3rotation" / "rotation.yaml").write_text("projects: []\n")
    (own / "rotation.yaml").write_text("projects: []\n")
    (temp / "pytest-of-someone").mkdir()
    (temp / "someone-elses" / "inside").write_text("x")  # inside a folder that was there before

    assert find_writes(baseline) == [str(temp / "tmpk2j3rotation")]


def test_the_repository_and_the_python_installation_are_not_the_users_data(machine: tuple[Path, Path]) -> None:
    home, temp = machine
    repo = home / "src" / "langfuse-key-rotation"
    repo.mkdir(parents=True)
    baseline = take_baseline(home, temp, skip_in_home=[repo])

    (repo / "__pycache__").mkdir()

    assert find_writes(baseline) == []


def test_paths_other_programs_write_on_a_shared_machine_can_be_left_out(
    machine: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, temp = machine
    monkeypatch.setenv(IGNORE_ENV_VAR, ".cache/pip:bash_tool_*")
    baseline = take_baseline(home, temp)

    (home / ".cache" / "pip").mkdir(parents=True)
    (home / ".cache" / "pip" / "wheel").write_text("x")
    (temp / "bash_tool_123").mkdir()
    (home / ".prefect" / "profiles.toml").write_text("x")

    assert find_writes(baseline) == [str(home / ".prefect" / "profiles.toml")]


# --- the whole run -------------------------------------------------------------------------------


def _inner_session(tmp_path: Path, test_source: str, *plugins: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """A pytest run of its own with this suite's plugins, whose "real" home and system temp directory
    are fresh folders of this test; returns the finished run and that home."""
    home, temp, work = tmp_path / "real-home", tmp_path / "system-temp", tmp_path / "work"
    for folder in (home, temp, work):
        folder.mkdir()
    (work / "pytest.ini").write_text("[pytest]\n")
    (work / "test_inner.py").write_text(textwrap.dedent(test_source))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PYTEST_", "XDG_"))}
    env |= {
        "HOME": str(home),
        "TMPDIR": str(temp),
        "PYTEST_DEBUG_TEMPROOT": str(temp),
        "PYTHONPATH": str(REPO),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "INNER_REAL_HOME": str(home),
    }
    env.pop(IGNORE_ENV_VAR, None)
    args = ["-p", "tests.isolation", *[f"-p{p}" for p in plugins], "-p", "no:cacheprovider", "-q", "test_inner.py"]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *args], cwd=work, env=env, capture_output=True, text=True, timeout=240
    )
    return proc, home


def test_a_test_that_writes_into_the_real_home_fails_the_run(tmp_path: Path) -> None:
    proc, home = _inner_session(
        tmp_path,
        """
        import os
        from pathlib import Path

        def test_writes_where_it_should_not():
            Path(os.environ["INNER_REAL_HOME"], "audit.jsonl").write_text("{}")
        """,
    )

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
    assert "files written outside the tests' own directories" in proc.stdout
    assert str(home / "audit.jsonl") in proc.stdout


def test_a_test_writing_to_its_own_home_and_temp_passes_and_leaves_nothing_behind(tmp_path: Path) -> None:
    proc, home = _inner_session(
        tmp_path,
        """
        import os, tempfile
        from pathlib import Path

        def test_writes_to_its_own_places():
            assert os.environ["HOME"] != os.environ["INNER_REAL_HOME"]
            (Path.home() / ".vault-token").write_text("t")
            state = Path(os.environ["XDG_STATE_HOME"]) / "langfuse-rotate"
            state.mkdir(parents=True)
            (state / "audit.jsonl").write_text("{}")
            Path(tempfile.mkdtemp(), "rotation.yaml").write_text("projects: []")
        """,
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(home.iterdir()) == []
    left = [p.name for p in (tmp_path / "system-temp").iterdir()]
    assert all(name.startswith("pytest-of-") for name in left), left  # pytest's own tmp_path folders


@pytest.mark.slow
def test_a_flow_on_prefects_temporary_server_ends_the_run_without_a_logging_error(tmp_path: Path) -> None:
    proc, _ = _inner_session(
        tmp_path,
        """
        def test_a_flow_without_a_configured_server():
            from prefect import flow

            @flow(persist_result=False)
            def hello() -> int:
                return 1

            assert hello() == 1
        """,
        "tests.fixtures.prefect",
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Logging error" not in proc.stderr and "I/O operation on closed file" not in proc.stderr, proc.stderr
    assert "Error logging to API" not in proc.stderr, proc.stderr
