"""The host-local lock directory is private (docs/deployments.md).

Another local user must not be able to pre-create it, fill it with symlinks, or hold the lock
files: the directory is created 0700, must belong to the user running the rotation, must not be
writable by anyone else, and neither it nor a lock file is ever followed through a symlink. By
default it lives in the user's home, not in the shared temporary directory.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from flows.errors import ConfigError, LockDirError
from flows.rotation.lock import LOCK_DIR_ENV_VAR, local_lock, lock_name


def _take(entry: str = "chatbot-prod") -> None:
    with local_lock(entry, wait_s=0):
        pass


def test_the_default_lock_directory_is_private_in_the_users_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(LOCK_DIR_ENV_VAR, raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    _take()
    expected = tmp_path / "home" / ".local" / "state" / "langfuse-rotate" / "locks"
    assert (expected / f"{lock_name('chatbot-prod')}.lock").is_file()
    assert stat.S_IMODE(expected.stat().st_mode) == 0o700


def test_xdg_state_home_moves_the_lock_directory_and_the_audit_log_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.audit import default_audit_path
    from flows.state import state_dir

    home, state = tmp_path / "home", tmp_path / "state"
    monkeypatch.delenv(LOCK_DIR_ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_STATE_HOME", str(state))

    _take()

    assert state_dir() == state / "langfuse-rotate"
    assert default_audit_path() == state / "langfuse-rotate" / "audit.jsonl"
    assert (state / "langfuse-rotate" / "locks" / f"{lock_name('chatbot-prod')}.lock").is_file()
    assert not home.exists(), "nothing of the tool's state lands in the home directory"


def test_the_lock_dir_variable_still_overrides_the_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv(LOCK_DIR_ENV_VAR, str(tmp_path / "locks"))

    _take()

    assert (tmp_path / "locks" / f"{lock_name('chatbot-prod')}.lock").is_file()
    assert not (tmp_path / "state" / "langfuse-rotate" / "locks").exists()


def test_a_configured_lock_directory_is_created_0700(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOCK_DIR_ENV_VAR, str(tmp_path / "locks"))
    old_umask = os.umask(0)
    try:
        _take()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "locks").stat().st_mode) == 0o700


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770])
def test_a_lock_directory_others_can_write_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    monkeypatch.setenv(LOCK_DIR_ENV_VAR, str(shared))
    with pytest.raises(LockDirError, match="writable by other users") as raised:
        _take()
    assert isinstance(raised.value, ConfigError)  # the command line exits 2 with this one line
    assert list(shared.iterdir()) == []


@pytest.fixture
def another_users_directory(tmp_path: Path) -> Path:
    """A directory that belongs to another user and that nobody else may write. Run as root, the
    test makes one and gives it to ``nobody`` (uid 65534). Any other user cannot give a directory
    away, so the test uses one that already belongs to someone else: ``/``, owned by root."""
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
        return theirs
    root = Path("/")
    assert root.stat().st_uid != os.geteuid() and not root.stat().st_mode & 0o022
    return root


def test_a_lock_directory_owned_by_another_user_is_refused(
    another_users_directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = another_users_directory.stat().st_uid
    monkeypatch.setenv(LOCK_DIR_ENV_VAR, str(another_users_directory))
    with pytest.raises(LockDirError, match=f"owned by uid {owner}, not by this user"):
        _take()
    assert not any(p.name.startswith("langfuse-rotate-") for p in another_users_directory.iterdir())


def test_a_symlinked_lock_directory_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    monkeypatch.setenv(LOCK_DIR_ENV_VAR, str(tmp_path / "link"))
    with pytest.raises(LockDirError, match="symbolic link"):
        _take()
    assert list(real.iterdir()) == []


def test_a_lock_file_planted_as_a_symlink_is_not_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    (locks / f"{lock_name('chatbot-prod')}.lock").symlink_to(victim)
    monkeypatch.setenv(LOCK_DIR_ENV_VAR, str(locks))
    with pytest.raises(LockDirError, match="symbolic link"):
        _take()
    assert victim.read_text() == "precious\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
