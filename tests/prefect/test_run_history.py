"""What a run leaves behind for the people who read it later: the state message of a failed run,
the summary artifact, and a notification for failures the checklist never reached (a crash).

Rotations run as users run them (``langfuse-rotate rotate`` in a subprocess) through the session's
real Prefect server, and what they left is read back through the Prefect API.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from devstack.prefect_server import PrefectServer
from tests.fixtures.devstack import HealthStub
from tests.fixtures.rotation import ENTRY, RotationEnv

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("any_store", ["vault"], indirect=True)]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(rotation_env: RotationEnv, prefect_server: PrefectServer) -> RotationEnv:
    rotation_env.prefect_env = prefect_server.client_env(rotation_env.env)
    return rotation_env


@pytest.fixture
def lagging_consumer(env: RotationEnv, health_stub: HealthStub) -> HealthStub:
    """A consumer that never moves off the old key, so the rotation fails at wait_for_restarts."""
    health_stub.set(mode="ok", public_key=env.current().public_key)
    env.consumers = [{"name": "api", "health_url": health_stub.health_url, "restart_url": health_stub.restart_url}]
    env.entry_overrides = {"wait_timeout_s": 1.5}
    return health_stub


def rotate(env: RotationEnv) -> dict[str, Any]:
    proc = env.cli("rotate", "--config", str(env.write_config()), "--project", ENTRY, "--json")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def read_run(run_id: str | UUID) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(str(run_id)))


def artifact_markdown(run_id: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        only_this_run = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(run_id)]))
        (artifact,) = client.read_artifacts(artifact_filter=only_this_run)
    return str(artifact.data)


def secrets_of(env: RotationEnv) -> list[str]:
    return [env.project.secret_key, env.sim.org_secret_key, str(env.store.config()["token"])]


def test_a_failed_run_names_the_failed_step_and_the_reason_in_its_state_message(
    env: RotationEnv, lagging_consumer: HealthStub
) -> None:
    result = rotate(env)

    state = read_run(result["prefect_flow_run_id"]).state
    assert state.type.value == "FAILED"
    message = state.message
    assert message.startswith("rolled_back: wait_for_restarts: consumers did not switch")
    assert "api (still on " in message
    assert f"old pair {result['old_public_key']} is current" in message
    for secret in secrets_of(env):
        assert secret not in message
    assert "sk-lf-" not in message


def test_the_summary_artifact_has_the_step_table_keys_store_version_and_consumers_without_links(
    env: RotationEnv, lagging_consumer: HealthStub
) -> None:
    result = rotate(env)

    markdown = artifact_markdown(result["prefect_flow_run_id"])
    assert "| step | outcome | duration (s) | detail |" in markdown
    assert re.search(r"^\| create \| done \| \d+\.\d\d \|", markdown, re.MULTILINE)
    assert re.search(r"^\| wait_for_restarts \| failed \|", markdown, re.MULTILINE)
    assert re.search(r"^\| rollback \| rolled_back \|", markdown, re.MULTILINE)
    assert f"| old public key | `{result['old_public_key']}` |" in markdown
    assert f"| new public key | `{result['new_public_key']}` |" in markdown
    assert f"| store version | `{result['store_version']}` |" in markdown
    assert f"| api | `{result['old_public_key']}` | **no** |" in markdown
    assert "http" not in markdown, "consumer health and restart URLs stay out of the UI"
    assert "](" not in markdown, "no markdown links"
    for secret in secrets_of(env):
        assert secret not in markdown


def test_a_rotation_killed_by_sigterm_ends_crashed_and_the_crash_hook_notifies(env: RotationEnv) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    env.entry_overrides = {"approval": "required", "approval_timeout_s": 300}  # a stable point to stop at
    config_path = str(env.write_config())
    assert env.prefect_env is not None
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli.main", "rotate", "--config", config_path, "--project", ENTRY, "--json"],
        env=env.prefect_env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    run = None
    with get_client(sync_client=True) as client:
        for _ in range(240):
            run = next(
                (
                    r
                    for r in client.read_flow_runs(flow_run_filter=paused)
                    if r.parameters.get("config_path") == config_path
                ),
                None,
            )
            if run is not None or proc.poll() is not None:
                break
            time.sleep(0.5)
    assert run is not None, "the rotation never paused"

    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)

    assert read_run(run.id).state.type.value == "CRASHED", err[-3000:]
    crash = [n for n in env.sink.received() if "Crashed" in n.json["title"]]
    assert len(crash) == 1, [n.json["title"] for n in env.sink.received()]
    assert run.name in crash[0].json["title"]
    assert f"project: {ENTRY}" in crash[0].json["message"]
