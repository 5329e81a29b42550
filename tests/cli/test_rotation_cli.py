"""``langfuse-rotate rotate`` as users run it: a subprocess, through a real Prefect server."""

from __future__ import annotations

import json
import re
from uuid import UUID

import pytest

from devstack.prefect_server import PrefectServer
from tests.fixtures.rotation import ENTRY, RotationEnv

CONTRACT_FIELDS = {
    "status",
    "project",
    "old_public_key",
    "new_public_key",
    "store",
    "store_version",
    "verified",
    "old_key_rejected",
    "consumers",
    "duration_s",
    "prefect_flow_run_id",
    "error",
}


@pytest.fixture
def env(rotation_env: RotationEnv, prefect_server: PrefectServer) -> RotationEnv:
    rotation_env.prefect_env = prefect_server.client_env(rotation_env.env)
    return rotation_env


def last_json(stdout: str) -> dict[str, object]:
    line = stdout.strip().splitlines()[-1]
    data: dict[str, object] = json.loads(line)
    return data


def test_rotate_command_rotates_through_prefect_and_prints_the_contract_json(env: RotationEnv) -> None:
    old = env.current()
    proc = env.cli("rotate", "--config", str(env.write_config()), "--project", ENTRY, "--json")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = last_json(proc.stdout)
    assert result.keys() >= CONTRACT_FIELDS
    assert result["status"] == "rotated"
    assert result["old_public_key"] == old.public_key
    assert result["new_public_key"] == env.current().public_key
    assert result["store"] == "main"
    assert result["verified"] is True and result["old_key_rejected"] is True
    assert result["error"] is None
    store_version = result["store_version"]
    assert isinstance(store_version, int) if env.store.kind == "vault" else isinstance(store_version, str)
    assert result["prefect_flow_run_id"]


def test_rotation_run_has_a_readable_name_tags_and_a_summary_artifact(env: RotationEnv) -> None:
    from prefect.client.orchestration import get_client

    proc = env.cli("rotate", "--config", str(env.write_config()), "--project", ENTRY, "--json")
    result = last_json(proc.stdout)
    run_id = UUID(str(result["prefect_flow_run_id"]))

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        artifacts = client.read_artifacts()
    assert re.fullmatch(rf"rotate-{ENTRY}-\d{{8}}-\d{{4}}", run.name)
    assert {f"project:{ENTRY}", "mode:scheduled", "store:main"} <= set(run.tags)
    mine = [a for a in artifacts if a.flow_run_id == run_id]
    assert mine and "| step | outcome |" in str(mine[0].data)
