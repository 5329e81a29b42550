"""``rotate --dry-run`` checks everything reachable, prints the plan and changes nothing."""

from __future__ import annotations

import json

from tests.fixtures.devstack import HealthStub
from tests.fixtures.rotation import ENTRY, RotationEnv


def test_a_clean_dry_run_prints_the_plan_and_changes_nothing(
    rotation_env: RotationEnv, health_stub: HealthStub
) -> None:
    before = rotation_env.current()
    keys_before = rotation_env.project_keys()
    health_stub.set(mode="ok", public_key=before.public_key)
    rotation_env.consumers = [
        {"name": "api", "health_url": health_stub.health_url, "restart_url": health_stub.restart_url}
    ]
    since = rotation_env.sim.requests()["next"]

    proc = rotation_env.cli(
        "rotate", "--config", str(rotation_env.write_config()), "--project", ENTRY, "--dry-run", "--json"
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == "planned"
    assert result["old_public_key"] == before.public_key
    assert result["consumers"] == {"api": before.public_key}
    assert "create a new pair" in proc.stderr
    assert rotation_env.current().version == before.version
    assert rotation_env.project_keys() == keys_before
    assert health_stub.restarts == 0
    methods = {r["method"] for r in rotation_env.sim.requests(since)["requests"]}
    assert methods == {"GET"}, "a dry run only reads"


def test_a_dry_run_that_cannot_reach_a_consumer_fails_and_says_which(
    rotation_env: RotationEnv, health_stub: HealthStub
) -> None:
    health_stub.set(mode="garbage")
    rotation_env.consumers = [{"name": "api", "health_url": health_stub.health_url}]

    proc = rotation_env.cli(
        "rotate", "--config", str(rotation_env.write_config()), "--project", ENTRY, "--dry-run", "--json"
    )

    assert proc.returncode == 4, "cannot proceed: needs a person, not 'failed and rolled back'"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == "needs_attention"
    assert "api" in result["error"]


def test_a_dry_run_with_a_wrong_project_id_fails(rotation_env: RotationEnv) -> None:
    rotation_env.entry_overrides = {"project_id": rotation_env.sim.projects[1].id}

    proc = rotation_env.cli(
        "rotate", "--config", str(rotation_env.write_config()), "--project", ENTRY, "--dry-run", "--json"
    )

    assert proc.returncode == 4
    assert "not a key of project" in json.loads(proc.stdout.strip().splitlines()[-1])["error"]


def test_an_unknown_project_is_bad_input_with_one_line_and_exit_2(rotation_env: RotationEnv) -> None:
    proc = rotation_env.cli("rotate", "--config", str(rotation_env.write_config()), "--project", "nope")

    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown project 'nope'" in proc.stderr


def test_the_human_dry_run_shows_the_current_key_and_no_new_none(rotation_env: RotationEnv) -> None:
    before = rotation_env.current()

    proc = rotation_env.cli("rotate", "--config", str(rotation_env.write_config()), "--project", ENTRY, "--dry-run")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "None" not in proc.stdout
    assert f"  current {before.public_key} (the rotation creates the new pair); store main " in proc.stdout
