"""The demo consumer as a real subprocess: reads its pair from OpenBao (or moto), traces into the
Langfuse simulator with the real SDK, and switches keys only when restarted."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import httpx
import pytest

from devstack.consumer import ConsumerProcess, start_consumer_process
from devstack.moto_server import MotoServer
from devstack.openbao import OpenBaoServer
from tests.fixtures.langfuse_sim import SimHandle

OTLP_PATH = "/api/public/otel/v1/traces"


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def health(proc: ConsumerProcess) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(proc.health_url, timeout=5).json()
    return body


def trace(proc: ConsumerProcess) -> dict[str, Any]:
    body: dict[str, Any] = httpx.post(proc.trace_url, timeout=20).json()
    return body


def restart(proc: ConsumerProcess) -> None:
    assert httpx.post(proc.restart_url, timeout=5).status_code == 202


def otlp_requests(sim: SimHandle) -> list[dict[str, Any]]:
    return [r for r in sim.requests()["requests"] if r["path"] == OTLP_PATH]


def new_project_key(sim: SimHandle) -> tuple[str, str]:
    """A second key pair for project 0, created through the admin API like a rotation would."""
    response = httpx.post(
        f"{sim.url}/api/public/projects/{sim.projects[0].id}/apiKeys",
        auth=(sim.org_public_key, sim.org_secret_key),
        json={"note": "demo-consumer-test"},
        timeout=10,
    )
    response.raise_for_status()
    body = response.json()
    return str(body["publicKey"]), str(body["secretKey"])


class VaultSecret:
    """One KV v2 path in the session OpenBao that the test rewrites like a rotation would."""

    def __init__(self, server: OpenBaoServer, host: str) -> None:
        self.server = server
        self.path = f"demo-consumer/{uuid.uuid4().hex[:12]}"
        self.host = host

    def write(self, public_key: str, secret_key: str, **extra: str) -> None:
        data = {"LANGFUSE_PUBLIC_KEY": public_key, "LANGFUSE_SECRET_KEY": secret_key, "LANGFUSE_HOST": self.host}
        data.update(extra)
        self.server.client().secrets.kv.v2.create_or_update_secret(path=self.path, secret=data, mount_point="secret")

    def start(self, **options: Any) -> ConsumerProcess:
        return start_consumer_process(
            name=options.pop("name", "api"),
            store="vault",
            path=self.path,
            vault_url=self.server.url,
            vault_token=self.server.root_token,
            **options,
        )


@pytest.fixture
def vault_secret(openbao: OpenBaoServer, sim: SimHandle) -> VaultSecret:
    openbao.ensure_unsealed()
    secret = VaultSecret(openbao, sim.url)
    project = sim.projects[0]
    secret.write(project.public_key, project.secret_key)
    return secret


@pytest.fixture
def consumer(vault_secret: VaultSecret) -> Iterator[ConsumerProcess]:
    with vault_secret.start() as proc:
        yield proc


def test_health_reports_the_public_key_read_from_vault(consumer: ConsumerProcess, sim: SimHandle) -> None:
    body = health(consumer)
    assert body["status"] == "ok"
    assert body["langfuse_public_key"] == sim.projects[0].public_key
    assert (body["restarts"], body["traces_sent"], body["last_export_ok"]) == (0, 0, None)
    assert body["started_at"]


def test_trace_is_exported_over_otlp_with_the_stored_pair(consumer: ConsumerProcess, sim: SimHandle) -> None:
    result = trace(consumer)
    assert len(result["trace_id"]) == 32 and result["export_ok"] is True
    [request] = otlp_requests(sim)
    assert (request["method"], request["status"]) == ("POST", 200), "the simulator accepted the secret"
    assert request["public_key"] == sim.projects[0].public_key
    assert health(consumer)["traces_sent"] == 1 and health(consumer)["last_export_ok"] is True


def test_restart_switches_to_the_key_now_current_in_the_store(
    consumer: ConsumerProcess, vault_secret: VaultSecret, sim: SimHandle
) -> None:
    new_public, new_secret = new_project_key(sim)
    vault_secret.write(new_public, new_secret)
    assert health(consumer)["langfuse_public_key"] == sim.projects[0].public_key, "no switch before restart"
    restart(consumer)
    wait_until(lambda: health(consumer)["langfuse_public_key"] == new_public, what="switch")
    assert health(consumer)["restarts"] == 1
    assert trace(consumer)["export_ok"] is True
    assert otlp_requests(sim)[-1]["public_key"] == new_public


def test_restart_back_to_an_earlier_key_builds_a_working_client(
    consumer: ConsumerProcess, vault_secret: VaultSecret, sim: SimHandle
) -> None:
    """A rollback reuses a public key the process already had a (shut down) SDK client for."""
    old = sim.projects[0]
    new_public, new_secret = new_project_key(sim)
    vault_secret.write(new_public, new_secret)
    restart(consumer)
    wait_until(lambda: health(consumer)["restarts"] == 1, what="first restart")
    vault_secret.write(old.public_key, old.secret_key)
    restart(consumer)
    wait_until(lambda: health(consumer)["restarts"] == 2, what="second restart")
    assert health(consumer)["langfuse_public_key"] == old.public_key
    assert trace(consumer)["export_ok"] is True
    last = otlp_requests(sim)[-1]
    assert (last["public_key"], last["status"]) == (old.public_key, 200)


def test_field_names_are_configurable(vault_secret: VaultSecret, sim: SimHandle) -> None:
    project = sim.projects[1]
    vault_secret.write("pk-lf-ignored", "sk-lf-ignored", APP_PK=project.public_key, APP_SK=project.secret_key)
    with vault_secret.start(public_key_field="APP_PK", secret_key_field="APP_SK") as proc:
        assert health(proc)["langfuse_public_key"] == project.public_key
        assert trace(proc)["export_ok"] is True


def test_restart_delay_keeps_the_old_key_until_the_rollout_finishes(vault_secret: VaultSecret, sim: SimHandle) -> None:
    new_public, new_secret = new_project_key(sim)
    with vault_secret.start(restart_delay_s=1.0) as proc:
        vault_secret.write(new_public, new_secret)
        restart(proc)
        during = health(proc)
        assert during["langfuse_public_key"] == sim.projects[0].public_key
        assert during["restart_pending"] is True
        wait_until(lambda: health(proc)["langfuse_public_key"] == new_public, what="delayed switch")
        assert health(proc)["restart_pending"] is False


def test_ignore_restart_acknowledges_but_never_switches(vault_secret: VaultSecret, sim: SimHandle) -> None:
    new_public, new_secret = new_project_key(sim)
    with vault_secret.start(ignore_restart=True) as proc:
        vault_secret.write(new_public, new_secret)
        restart(proc)
        body = health(proc)
    # The request was acknowledged (counted), and no restart was scheduled: a consumer that will
    # switch marks the restart pending before it answers the request (see the delayed test above).
    assert (body["restarts"], body["restart_requests"], body["restart_pending"]) == (0, 1, False)
    assert body["langfuse_public_key"] == sim.projects[0].public_key


def test_rejected_key_shows_as_failed_export(vault_secret: VaultSecret, sim: SimHandle) -> None:
    vault_secret.write(f"pk-lf-{uuid.uuid4()}", f"sk-lf-{uuid.uuid4()}")
    with vault_secret.start() as proc:
        assert trace(proc)["export_ok"] is False
        assert health(proc)["last_export_ok"] is False
    assert [r["status"] for r in otlp_requests(sim)] == [401]


def test_trace_interval_keeps_sending_traces(vault_secret: VaultSecret, sim: SimHandle) -> None:
    with vault_secret.start(trace_interval_s=0.2) as proc:
        wait_until(lambda: health(proc)["traces_sent"] >= 3, what="three background traces")
    assert len(otlp_requests(sim)) >= 3


def test_secret_never_appears_on_health_stdout_or_stderr(
    vault_secret: VaultSecret, sim: SimHandle, openbao: OpenBaoServer
) -> None:
    secret_key = sim.projects[0].secret_key
    with vault_secret.start() as proc:
        trace(proc)
        restart(proc)
        wait_until(lambda: health(proc)["restarts"] == 1, what="restart")
        exposed = httpx.get(proc.health_url, timeout=5).text + httpx.post(proc.trace_url, timeout=20).text
        assert proc.stop() == 0, "SIGTERM shuts down cleanly"
        exposed += proc.stdout_text() + proc.stderr_text()
    assert secret_key not in exposed
    assert openbao.root_token not in exposed


def test_unreadable_secret_fails_startup_with_a_one_line_reason(openbao: OpenBaoServer) -> None:
    with pytest.raises(RuntimeError, match=r"did not start \(rc=1\): consumer api: cannot read vault secret/"):
        start_consumer_process(
            name="api",
            store="vault",
            path=f"demo-consumer/missing-{uuid.uuid4().hex[:8]}",
            vault_url=openbao.url,
            vault_token=openbao.root_token,
        )


def test_aws_store_reads_only_the_awscurrent_version(moto: MotoServer, sim: SimHandle) -> None:
    current, pending = sim.projects[0], sim.projects[1]
    client = boto3.client(
        "secretsmanager",
        endpoint_url=moto.url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    name = f"demo-consumer/{uuid.uuid4().hex[:12]}"

    def pair(project: Any) -> str:
        return json.dumps(
            {
                "LANGFUSE_PUBLIC_KEY": project.public_key,
                "LANGFUSE_SECRET_KEY": project.secret_key,
                "LANGFUSE_HOST": sim.url,
            }
        )

    client.create_secret(Name=name, SecretString=pair(current))
    client.put_secret_value(SecretId=name, SecretString=pair(pending), VersionStages=["AWSPENDING"])
    with start_consumer_process(name="aws-api", store="aws", path=name, aws_endpoint_url=moto.url) as proc:
        assert health(proc)["langfuse_public_key"] == current.public_key
        assert trace(proc)["export_ok"] is True
    assert otlp_requests(sim)[-1]["public_key"] == current.public_key
