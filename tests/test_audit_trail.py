"""The audit trail misses nothing (issue 10 item 9, issue 13 "Audit log that a SIEM can take"):
every run of every command writes exactly one final line whatever its outcome (done, refused,
bad input, a setup failure), every line carries a run id in every mode and the rotation id once
there is one, and names who started the run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from devstack.prefect_server import free_port
from flows.rotation.entry_run import execute
from flows.rotation.lock import local_lock
from flows.rotation.runners import DirectRunner
from tests.fixtures.rotation import ENTRY, RotationEnv

single_store = pytest.mark.parametrize("any_store", ["vault"], indirect=True)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def finals(path: Path) -> list[dict[str, Any]]:
    return [line for line in lines(path) if line["langfuse_rotate"]["final"]]


@single_store
def test_a_rotation_writes_one_final_line_and_every_line_names_the_run_and_the_rotation(
    rotation_env: RotationEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LANGFUSE_ROTATE_ACTOR", "alice")
    result = execute("rotate", ENTRY, str(rotation_env.write_config()), DirectRunner())

    assert result.status == "rotated"
    every = lines(rotation_env.audit_path)
    (final,) = finals(rotation_env.audit_path)
    assert final == every[-1]
    assert final["event"]["action"] == "rotate" and final["event"]["outcome"] == "success"
    assert final["langfuse_rotate"]["outcome"] == "rotated"
    assert final["langfuse_rotate"]["new_public_key"] == result.new_public_key
    assert len({line["labels"]["run_id"] for line in every}) == 1, "one run id, without Prefect too"
    assert {line["labels"].get("rotation_id") for line in every} == {result.rotation_id}
    assert {line["labels"]["entry"] for line in every} == {ENTRY}
    assert {line["langfuse_rotate"]["resource"] for line in every} == {f"langfuse.project.{ENTRY}"}
    assert {line["user"]["name"] for line in every} == {"alice"}
    assert final["langfuse_rotate"]["initiator"]["type"] == "cli"


@single_store
def test_a_run_refused_because_another_holds_the_key_is_audited_and_notified(rotation_env: RotationEnv) -> None:
    config = str(rotation_env.write_config())

    with local_lock(ENTRY, wait_s=0):
        result = execute("rotate", ENTRY, config, DirectRunner())

    assert result.status == "in_progress" and int(result.exit_code) == 3
    (final,) = finals(rotation_env.audit_path)
    assert final["langfuse_rotate"]["outcome"] == "in_progress" and final["event"]["outcome"] == "failure"
    (note,) = rotation_env.sink.wait_for(1, timeout_s=10)
    assert note.json["type"] == "failure" and ENTRY in note.json["title"]


@single_store
def test_a_setup_failure_is_audited_and_notified_once(rotation_env: RotationEnv) -> None:
    """The organization key lives in a store that does not answer: the run cannot even start."""
    broken = rotation_env.store.config() | {"url": f"http://127.0.0.1:{free_port()}", "timeout_s": 1}
    config = rotation_env.config_dict()
    langfuse = {k: v for k, v in config["langfuse"].items() if not k.startswith("org_")}
    rotation_env.top_overrides = {
        "stores": {"main": rotation_env.store.config(), "broken": broken},
        "langfuse": langfuse | {"org_key": {"store": "broken", "path": "langfuse/org"}},
    }

    result = execute("rotate", ENTRY, str(rotation_env.write_config()), DirectRunner())

    assert result.status == "failed" and result.error and result.error.startswith("setup:")
    (final,) = finals(rotation_env.audit_path)
    assert final["langfuse_rotate"]["outcome"] == "failed"
    notes = rotation_env.sink.wait_for(1, timeout_s=10)
    assert len(notes) == 1 and "setup" in notes[0].json["message"]


@single_store
def test_bad_input_on_the_command_line_is_audited_with_exit_2(rotation_env: RotationEnv) -> None:
    proc = rotation_env.cli(
        "rotate",
        "--config",
        str(rotation_env.write_config()),
        "--project",
        "nope",
        env={"LANGFUSE_ROTATE_ACTOR": "bob"},
    )

    assert proc.returncode == 2
    (final,) = finals(rotation_env.audit_path)
    assert final["event"]["action"] == "rotate" and final["event"]["outcome"] == "failure"
    assert (
        final["langfuse_rotate"]["outcome"] == "bad_input"
        and "unknown project 'nope'" in final["langfuse_rotate"]["error"]
    )
    assert final["user"]["name"] == "bob" and final["labels"]["run_id"]


def test_an_unreadable_configuration_is_audited_at_the_default_path(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli.main",
            "emergency",
            "--config",
            str(tmp_path / "missing.yaml"),
            "--project",
            "x",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    (final,) = finals(tmp_path / "state" / "langfuse-rotate" / "audit.jsonl")
    assert final["event"]["action"] == "emergency" and final["langfuse_rotate"]["outcome"] == "bad_input"


@single_store
def test_with_a_dash_for_path_the_audit_goes_to_stdout_but_never_into_the_json_output(
    rotation_env: RotationEnv,
) -> None:
    rotation_env.top_overrides = {"audit": {"path": "-"}}
    config = str(rotation_env.write_config())

    plain = rotation_env.cli("rotate", "--config", config, "--project", ENTRY, "--dry-run")
    as_json = rotation_env.cli("rotate", "--config", config, "--project", ENTRY, "--dry-run", "--json")

    assert plain.returncode == 0, plain.stderr
    audit = [json.loads(line) for line in plain.stdout.splitlines() if line.startswith("{")]
    assert audit and audit[-1]["langfuse_rotate"]["final"] and audit[-1]["langfuse_rotate"]["dry_run"]
    assert as_json.returncode == 0 and as_json.stdout.count("\n") == 1
    assert json.loads(as_json.stdout)["status"] == "planned"
    assert '"langfuse_rotate"' in as_json.stderr
