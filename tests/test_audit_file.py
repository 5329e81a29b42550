"""The audit file is the rotator's own (docs/audit-log.md): never opened through a symbolic link,
written only when it and its directory belong to the rotator's user and nobody else can write to
them, and a line that cannot be written never stops a containment: the run contains, then says
(exit 4, its result and a notification) that the audit line could not be written.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from flows.audit import AuditLog, run_context
from flows.rotation.entry_run import execute
from flows.rotation.runners import DirectRunner
from tests.fixtures.rotation import ENTRY, RotationEnv

single_store = pytest.mark.parametrize("any_store", ["vault"], indirect=True)
OTHER_UID = 54321


def _write_final(path: Path) -> str | None:
    """Write one final line to ``path`` in a run of its own; what the run says went wrong, if anything."""
    with run_context("rotate") as run:
        AuditLog(path).final("rotate", ENTRY, "rotated")
    return run.audit_error


def test_lines_are_appended_to_a_file_of_our_own_in_a_private_directory(tmp_path: Path) -> None:
    path = tmp_path / "state" / "audit" / "audit.jsonl"

    assert _write_final(path) is None
    assert _write_final(path) is None

    assert [json.loads(line)["langfuse_rotate"]["outcome"] for line in path.read_text().splitlines()] == [
        "rotated",
        "rotated",
    ]
    assert stat.S_IMODE(path.stat().st_mode) & 0o022 == 0
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o022 == 0


def test_a_symbolic_link_at_the_audit_path_is_never_followed(tmp_path: Path) -> None:
    theirs = tmp_path / "chosen-by-someone-else"
    theirs.write_text("their file\n")
    path = tmp_path / "audit.jsonl"
    path.symlink_to(theirs)

    error = _write_final(path)

    assert theirs.read_text() == "their file\n"
    assert error is not None and "symbolic link" in error and str(path) in error


def test_a_symbolic_link_as_the_audit_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "linked").symlink_to(real)

    error = _write_final(tmp_path / "linked" / "audit.jsonl")

    assert list(real.iterdir()) == []
    assert error is not None and "symbolic link" in error


@pytest.mark.parametrize("mode", [0o775, 0o777, 0o1777], ids=["group-writable", "world-writable", "sticky-tmp"])
def test_a_directory_others_can_write_to_is_refused(tmp_path: Path, mode: int) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)

    error = _write_final(shared / "audit.jsonl")

    assert not (shared / "audit.jsonl").exists()
    assert error is not None and "writable by other users" in error


def test_an_audit_file_others_can_write_to_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text("")
    path.chmod(0o666)

    error = _write_final(path)

    assert path.read_text() == ""
    assert error is not None and "writable by other users" in error


@pytest.mark.skipif(
    os.geteuid() != 0,
    reason="making a file owned by another uid needs root (chown); an unprivileged user namespace maps only "
    "this user's own uid, so a file made in one still belongs to this user",
)
def test_an_audit_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text("pre-created by someone else\n")
    path.chmod(0o644)
    os.chown(path, OTHER_UID, OTHER_UID)

    error = _write_final(path)

    assert path.read_text() == "pre-created by someone else\n"
    assert error is not None and f"owned by uid {OTHER_UID}" in error


@pytest.mark.skipif(
    os.geteuid() != 0,
    reason="making a directory owned by another uid needs root (chown); an unprivileged user namespace maps "
    "only this user's own uid",
)
def test_an_audit_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, OTHER_UID, OTHER_UID)

    error = _write_final(theirs / "audit.jsonl")

    assert not (theirs / "audit.jsonl").exists()
    assert error is not None and f"owned by uid {OTHER_UID}" in error


def test_a_fifo_at_the_audit_path_is_refused_without_waiting_for_a_reader(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    os.mkfifo(path, 0o600)

    error = _write_final(path)

    assert error is not None and "not a regular file" in error


def test_a_failed_line_is_said_once_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    path.mkdir()
    with run_context("rotate"):
        log = AuditLog(path)
        log.record("stage", f"entry:{ENTRY}", "done")
        log.final("rotate", ENTRY, "rotated")

    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: the audit line could not be written:") and str(path) in err


# --- a run whose audit lines cannot be written ------------------------------------------------


@single_store
def test_an_emergency_contains_the_key_then_says_the_audit_line_could_not_be_written(
    rotation_env: RotationEnv,
) -> None:
    rotation_env.audit_path.mkdir()  # a directory where the audit file should be
    old = rotation_env.current()

    proc = rotation_env.cli(
        "emergency", "--config", str(rotation_env.write_config()), "--project", ENTRY, "--no-prefect", "--json"
    )

    assert not rotation_env.works(old), proc.stdout + proc.stderr  # contained all the same
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 4, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == "needs_attention" and result["old_key_rejected"] is True
    assert result["new_public_key"] == rotation_env.current().public_key
    assert "contained, but the audit line could not be written" in result["error"]
    assert str(rotation_env.audit_path) in result["error"]
    notes = rotation_env.sink.wait_for(2, timeout_s=10)
    said = [n.json for n in notes if "audit line could not be written" in n.json["message"]]
    assert said and said[-1]["type"] == "failure" and "EMERGENCY" in said[-1]["title"]


@single_store
def test_a_rotation_that_could_not_audit_needs_a_person(rotation_env: RotationEnv) -> None:
    rotation_env.tmp.chmod(0o777)  # the audit file's directory is writable by everyone
    try:
        result = execute("rotate", ENTRY, str(rotation_env.write_config()), DirectRunner())
    finally:
        rotation_env.tmp.chmod(0o700)

    assert result.status == "needs_attention" and int(result.exit_code) == 4
    assert result.new_public_key == rotation_env.current().public_key  # rotated all the same
    assert result.error is not None and result.error.startswith("rotated, but the audit line could not be written")
    assert not rotation_env.audit_path.exists()


@single_store
def test_a_failed_run_keeps_its_exit_code_and_also_says_the_audit_line_could_not_be_written(
    rotation_env: RotationEnv,
) -> None:
    from flows.rotation.lock import local_lock

    rotation_env.audit_path.mkdir()
    with local_lock(ENTRY, wait_s=0):
        result = execute("rotate", ENTRY, str(rotation_env.write_config()), DirectRunner())

    assert result.status == "in_progress" and int(result.exit_code) == 3
    assert result.error is not None and "the audit line could not be written" in result.error
