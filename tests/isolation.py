"""Tests never write to the user's home or leave files behind (a pytest plugin, loaded by conftest).

- At start-up (before any test module imports Prefect), the session gets directories of its own in
  one directory it creates in the system temp directory: ``HOME``, ``XDG_STATE_HOME``,
  ``PREFECT_HOME`` and ``TMPDIR`` point there, so the session-scoped servers and every subprocess
  they start inherit them. pytest keeps its own ``tmp_path`` directories where they always were
  (``PYTEST_DEBUG_TEMPROOT`` pins them to the system temp directory).
- Each test runs with its own ``HOME``, ``XDG_STATE_HOME`` and ``PREFECT_HOME`` (under its own
  temporary directory), which subprocesses it starts inherit through the environment.
- At the end the session directory is removed, and the run fails if anything in the real home
  changed since the session started, or a new entry appeared in the system temp directory, other
  than the tests' own directories (the session directory, pytest's ``pytest-of-<user>``). The
  repository and the Python installation are left out of the home check (bytecode caches).
- ``LANGFUSE_ROTATE_TEST_IGNORE``: paths (globs, relative to the home or the temp directory,
  separated by ``:``) that other programs of the same user write to while the suite runs on a
  shared machine, e.g. ``.cache/pip/*:bash_tool_*``.

``find_writes`` is the check itself, a plain function of two snapshots (``tests/test_isolation.py``).
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import pytest

IGNORE_ENV_VAR = "LANGFUSE_ROTATE_TEST_IGNORE"
SESSION_PREFIX = "langfuse-rotate-tests-"
PER_TEST_VARIABLES = ("HOME", "XDG_STATE_HOME", "PREFECT_HOME")


Snapshot = dict[str, tuple[int, int]]
"""path -> (ctime in ns, size): a file written, appended, renamed or chmodded gets a new ctime."""


@dataclass
class Baseline:
    """What the real home and the system temp directory looked like when the session started."""

    home: Path
    temp: Path
    temp_entries: frozenset[str]
    own: tuple[Path, ...] = ()
    """The tests' own directories (never reported)."""
    ignore: tuple[str, ...] = ()
    skip_in_home: tuple[Path, ...] = ()
    """Trees under the home that are not the user's data: the repository, the Python installation."""
    _home_snapshot: Future[Snapshot] | None = field(default=None, repr=False)

    @property
    def skipped(self) -> set[Path]:
        return {p.resolve() for p in (*self.skip_in_home, *self.own)}

    def home_snapshot(self) -> Snapshot:
        assert self._home_snapshot is not None
        return self._home_snapshot.result()


def take_baseline(
    home: Path, temp: Path, *, own: Iterable[Path] = (), skip_in_home: Iterable[Path] = (), background: bool = False
) -> Baseline:
    """Snapshot the home (``background``: on a thread of its own, e.g. while pytest collects; it
    is waited for before the first test runs) and list the temp directory."""
    ignore = tuple(p for p in os.environ.get(IGNORE_ENV_VAR, "").split(":") if p)
    baseline = Baseline(
        home=home,
        temp=temp,
        temp_entries=frozenset(_names(temp)),
        own=tuple(own),
        ignore=ignore,
        skip_in_home=tuple(skip_in_home),
    )
    future: Future[Snapshot] = Future()
    if background:
        threading.Thread(target=_fill, args=(future, home, baseline.skipped), daemon=True).start()
    else:
        _fill(future, home, baseline.skipped)
    baseline._home_snapshot = future
    return baseline


def _fill(future: Future[Snapshot], root: Path, skipped: set[Path]) -> None:
    try:
        future.set_result(_snapshot(root, skipped))
    except BaseException as exc:  # surfaced when the run compares
        future.set_exception(exc)


def find_writes(baseline: Baseline) -> list[str]:
    """Everything in the real home created or changed since ``baseline`` (written, appended,
    renamed, chmodded), and every new top-level entry of the system temp directory; the tests' own
    directories and the ignored paths left out."""
    before = baseline.home_snapshot()
    after = _snapshot(baseline.home, baseline.skipped)
    changed = sorted(path for path, facts in after.items() if before.get(path) != facts)
    # A folder changes when an entry is added or removed: what is new under it is reported instead;
    # the folder itself only when nothing under it is (a new empty folder, or something removed).
    reported = [
        path for path in changed if not os.path.isdir(path) or not any(c.startswith(path + os.sep) for c in changed)
    ]
    found = [p for p in reported if not _ignored(Path(p), baseline.home, baseline.ignore)]
    own = {p.resolve() for p in baseline.own}
    for name in sorted(set(_names(baseline.temp)) - baseline.temp_entries):
        path = baseline.temp / name
        if path.resolve() in own or name.startswith("pytest-of-") or _ignored(path, baseline.temp, baseline.ignore):
            continue
        found.append(str(path))
    return found


def _names(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []


def _snapshot(root: Path, skipped: set[Path]) -> Snapshot:
    facts: Snapshot = {}
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir and Path(entry.path).resolve() in skipped:
                continue
            facts[entry.path] = (info.st_ctime_ns, info.st_size)
            if is_dir:
                pending.append(Path(entry.path))
    return facts


def _ignored(path: Path, root: Path, patterns: tuple[str, ...]) -> bool:
    relative = str(path.relative_to(root))
    return any(fnmatch.fnmatch(relative, p) or relative.startswith(p.rstrip("/") + "/") for p in patterns)


# --- the plugin ----------------------------------------------------------------------------------

_STATE: dict[str, object] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Before any test module is imported: the session's own HOME, state, Prefect home and TMPDIR."""
    real_temp = Path(tempfile.gettempdir())
    real_home = Path(os.environ.get("HOME") or Path.home())
    session = Path(tempfile.mkdtemp(prefix=SESSION_PREFIX, dir=real_temp))
    skip = [Path(str(config.rootpath)), Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix)]
    skip += [Path(p) for p in sys.path if p and Path(p).is_dir()]
    _STATE["baseline"] = take_baseline(real_home, real_temp, own=[session], skip_in_home=skip, background=True)
    _STATE["session"] = session
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", str(real_temp))  # pytest's tmp_path stays put
    for variable, name in (
        ("HOME", "home"),
        ("XDG_STATE_HOME", "state"),
        ("PREFECT_HOME", "prefect"),
        ("TMPDIR", "tmp"),
    ):
        (session / name).mkdir()
        os.environ[variable] = str(session / name)
    tempfile.tempdir = None  # computed again from TMPDIR


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """The home's snapshot (taken while pytest collected) is complete before the first test runs."""
    baseline = _STATE.get("baseline")
    if isinstance(baseline, Baseline):
        baseline.home_snapshot()


@pytest.fixture(autouse=True)
def own_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own HOME, XDG_STATE_HOME and PREFECT_HOME (subprocesses inherit them)."""
    base = tmp_path_factory.mktemp("env")
    for variable, name in zip(PER_TEST_VARIABLES, ("home", "state", "prefect"), strict=True):
        (base / name).mkdir()
        monkeypatch.setenv(variable, str(base / name))
    return base / "home"


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    baseline = _STATE.get("baseline")
    if not isinstance(baseline, Baseline):
        return
    written = find_writes(baseline)
    if written:
        shown = "\n".join(f"  {path}" for path in written[:50])
        more = f"\n  ... and {len(written) - 50} more" if len(written) > 50 else ""
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = (
            "the tests wrote outside their own directories (the real home or the system temp directory):\n"
            f"{shown}{more}\n"
            f"(another program writing there at the same time? see {IGNORE_ENV_VAR} in tests/isolation.py)"
        )
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_sep("=", "files written outside the tests' own directories", red=True)
            reporter.write_line(message)
        else:
            print(message, file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    session = _STATE.pop("session", None)
    if isinstance(session, Path):
        shutil.rmtree(session, ignore_errors=True)
