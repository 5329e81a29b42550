"""The event-driven emergency: a ``langfuse.key.compromised`` event POSTed to a real Prefect
server's events API starts the emergency deployment for the project it names (flows.automation).

The deployment is served by ``flow.serve`` in a subprocess (a worker-less deployment); the
automation is created with ``ensure_emergency_automation``; the event is posted with plain HTTP,
as a secret scanner without the Prefect SDK would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.prefect_server import PrefectServer
from flows.automation import AUTOMATION_NAME, compromised_event, ensure_emergency_automation
from tests.fixtures.rotation import ENTRY, RotationEnv

REPO = Path(__file__).resolve().parents[1]
FLOW_NAME = "langfuse-key-emergency"


@pytest.fixture
def served_deployment(rotation_env: RotationEnv, prefect_server: PrefectServer, tmp_path: Path) -> Iterator[str]:
    """The emergency flow served as a uniquely named deployment; yields "flow/deployment"."""
    name = f"emergency-rotation-{uuid.uuid4().hex[:8]}"
    env = prefect_server.client_env(dict(os.environ))
    env.update(
        LANGFUSE_ROTATE_CONFIG=str(rotation_env.write_config()),
        PREFECT_RUNNER_POLL_FREQUENCY="1",
        PYTHONPATH=str(REPO),
    )
    code = (
        "from flows.emergency import emergency\n"
        f"emergency.serve(name={name!r}, pause_on_shutdown=False, print_starting_message=False)\n"
    )
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deployment = f"{FLOW_NAME}/{name}"
    try:
        _wait_for_deployment(deployment, proc, tmp_path / "serve.log")
        yield deployment
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


@pytest.fixture
def automation(served_deployment: str) -> Iterator[str]:
    ensure_emergency_automation(served_deployment)
    yield served_deployment
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for existing in client.read_automations_by_name(AUTOMATION_NAME):
            client.delete_automation(existing.id)


def _wait_for_deployment(deployment: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 90) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"serve exited: {log.read_text()[-2000:]}"
            try:
                client.read_deployment_by_name(deployment)
                return
            except ObjectNotFound:
                time.sleep(0.5)
    raise AssertionError(f"{deployment} was not registered within {timeout_s}s: {log.read_text()[-2000:]}")


def _finished_run_of(deployment: str, timeout_s: float = 120) -> Any:
    """The first flow run of ``deployment``, once it reached a final state."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            )
            if runs and runs[0].state is not None and runs[0].state.is_final():
                return runs[0]
            time.sleep(1)
    raise AssertionError(f"no finished run of {deployment} within {timeout_s}s")


@pytest.mark.slow
@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_a_compromised_key_event_runs_the_emergency_deployment_for_that_project(
    rotation_env: RotationEnv, prefect_server: PrefectServer, automation: str
) -> None:
    old = rotation_env.current()
    event = compromised_event(ENTRY, old.public_key, source="test secret scanner")

    response = httpx.post(f"{prefect_server.api_url}/events", json=[event], timeout=10)

    assert response.status_code == 204, response.text
    run = _finished_run_of(automation)
    assert run.state.is_completed(), run.state.message
    assert run.parameters["project"] == ENTRY and run.parameters["public_key"] == old.public_key
    assert {f"project:{ENTRY}", "mode:emergency"} <= set(run.tags)
    assert not rotation_env.works(old)
    assert rotation_env.current().public_key != old.public_key
    final = [json.loads(line) for line in rotation_env.audit_path.read_text().splitlines()]
    contained = [e for e in final if e["action"] == "emergency"]
    assert contained and contained[-1]["outcome"] == "contained" and contained[-1]["run_id"] == str(run.id)
