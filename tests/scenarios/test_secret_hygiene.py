"""No secret key ever lands anywhere a rotation run writes.

A Prefect server of its own (fresh PostgreSQL database, fresh ``PREFECT_HOME`` for server and
clients) serves this module. Full rotations run through the command line as users run them:
success, rollback, a failure whose Langfuse error body echoes secrets, emergency, and a run killed
with SIGKILL then resumed. Then every secret that existed is collected (the bootstrap project keys,
the organization key, the instance admin key, the Vault token, and every secret key in every
version of the entry's secret) and searched for in: the Prefect database (``pg_dump``), every file
under both ``PREFECT_HOME`` directories and the server log, the Prefect API (artifacts, events,
logs, flow and task runs, state messages), stdout and stderr of every run, the notification
sink's payloads, the audit log and the lock directory. Anything shaped like a Langfuse secret key
counts too, known or not. ``test_the_scanner_finds_planted_secrets`` proves the search can fail.
"""

from __future__ import annotations

import base64
import json
import pickle
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from devstack.prefect_server import PrefectServer
from devstack.sinks import JsonSink
from flows.rotation.crashpoints import CRASH_ENV_VAR
from tests.fixtures.devstack import HealthStub
from tests.fixtures.prefect import EVENT_FLUSH_INTERVAL_S, started_prefect_server
from tests.fixtures.rotation import ENTRY, RotationEnv
from tests.fixtures.stores import AWS_REGION, AWS_TEST_CREDENTIALS
from tests.secret_scan import (
    Source,
    collect_files,
    collect_postgres,
    collect_prefect_api,
    collect_sink,
    read_events,
    scan,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hygiene_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    with started_prefect_server(home=tmp_path_factory.mktemp("prefect-home")) as server:
        yield server


def prefect_database(server: PrefectServer) -> list[Source]:
    """A dump of the server's PostgreSQL database."""
    assert server.db_name is not None, "the hygiene server runs on PostgreSQL"
    return collect_postgres(server.db_name)


class Runs:
    """CLI runs against the module's Prefect server; keeps every stdout and stderr."""

    def __init__(self, env: RotationEnv, server: PrefectServer) -> None:
        self.env = env
        self.server = server
        self.outputs: list[Source] = []

    def __call__(self, *args: str, expect: int, crash_at: str | None = None) -> dict[str, Any] | None:
        child = self.server.client_env(self.env.env)
        if crash_at is not None:
            child[CRASH_ENV_VAR] = crash_at
        config = str(self.env.write_config())
        proc = subprocess.run(
            [sys.executable, "-m", "flows.cli.main", *args, "--config", config, "--project", ENTRY, "--json"],
            env=child,
            capture_output=True,
            timeout=240,
            cwd=REPO,
        )
        label = f"{' '.join(args)}{f' (killed at {crash_at})' if crash_at else ''}"
        self.outputs += [(f"stdout of {label}", proc.stdout), (f"stderr of {label}", proc.stderr)]
        assert proc.returncode == expect, f"{label}: rc={proc.returncode}\n{proc.stdout.decode()[-3000:]}"
        return json.loads(proc.stdout.decode().strip().splitlines()[-1]) if crash_at is None else None


def stored_secret_keys(env: RotationEnv, request: pytest.FixtureRequest) -> dict[str, str]:
    """The secret key of every version of the entry's secret, as the store keeps them."""
    found: dict[str, str] = {}
    if env.store.kind == "vault":
        client = request.getfixturevalue("openbao").client()
        meta = client.secrets.kv.v2.read_secret_metadata(path=env.path, mount_point="secret")
        for number in meta["data"]["versions"]:
            data = client.secrets.kv.v2.read_secret_version(
                path=env.path, version=int(number), mount_point="secret", raise_on_deleted_version=False
            )["data"]["data"]
            if data:
                found[f"secret key in Vault version {number}"] = data["LANGFUSE_SECRET_KEY"]
    else:
        sm = boto3.client(
            "secretsmanager",
            endpoint_url=env.store.config()["endpoint_url"],
            region_name=AWS_REGION,
            **AWS_TEST_CREDENTIALS,
        )
        versions = sm.list_secret_version_ids(SecretId=env.path, IncludeDeprecated=True)["Versions"]
        for version in versions:
            value = sm.get_secret_value(SecretId=env.path, VersionId=version["VersionId"])["SecretString"]
            found[f"secret key in AWS version {version['VersionId']}"] = json.loads(value)["LANGFUSE_SECRET_KEY"]
    return found


def wait_for_events_to_settle(api_url: str, timeout_s: float = 30) -> None:
    """The server persists events in the background: wait until their number stops growing over
    twice the server's flush interval."""
    with httpx.Client(base_url=api_url.rstrip("/") + "/", timeout=30) as client:
        last, deadline = -1, time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            count = len(read_events(client))
            if count == last:
                return
            last = count
            time.sleep(2 * EVENT_FLUSH_INTERVAL_S)


def all_outcomes(env: RotationEnv, run: Runs, health_stub: HealthStub) -> None:
    """Rollback, a failure whose Langfuse error bodies echo secrets, and an emergency."""
    sim = env.sim
    # rollback: a consumer that never switches
    health_stub.set(mode="ok", public_key=env.current().public_key)
    env.consumers = [{"name": "api", "health_url": health_stub.health_url, "restart_url": health_stub.restart_url}]
    env.entry_overrides = {"wait_timeout_s": 1.5}
    assert run("rotate", expect=1)["status"] == "rolled_back"
    env.consumers = []
    # a failure whose error bodies echo secrets back (a proxy or a buggy server would)
    echo = f"upstream rejected {sim.org_secret_key} / {env.current().secret_key.get_secret_value()}"
    sim.inject_fault(
        f"/api/public/projects/{env.project.id}/apiKeys", method="POST", status=500, body={"message": echo}, count=5
    )
    assert run("rotate", expect=1)["failed_step"] == "create"
    sim.control.clear_faults()
    # emergency through Prefect
    assert run("emergency", expect=0)["status"] == "contained"


def test_no_secret_is_written_anywhere_by_rotations_rollbacks_failures_emergencies_and_crashes(
    rotation_env: RotationEnv,
    hygiene_server: PrefectServer,
    health_stub: HealthStub,
    json_sink: JsonSink,
    request: pytest.FixtureRequest,
) -> None:
    env, sim = rotation_env, rotation_env.sim
    env.top_overrides = {"langfuse": {**env.config_dict()["langfuse"], "admin_api_key": sim.admin_api_key}}
    run = Runs(env, hygiene_server)

    # success
    assert run("rotate", expect=0)["status"] == "rotated"
    if env.store.kind == "vault":  # what follows does not depend on the store: once is enough
        all_outcomes(env, run, health_stub)
    # killed after promotion, then resumed
    run("rotate", expect=-9, crash_at="after_promote")
    resumed = run("rotate", expect=0)
    assert resumed["status"] == "rotated" and resumed["resumed"] is True
    known = {
        **{f"bootstrap secret key of project {p.name}": p.secret_key for p in sim.projects},
        "organization secret key": sim.org_secret_key,
        "instance admin key": sim.admin_api_key or "",
        **stored_secret_keys(env, request),
    }
    if env.store.kind == "vault":
        known["Vault token"] = env.store.config()["token"]
    assert len([label for label in known if "version" in label]) >= 3, "the runs created new pairs"
    wait_for_events_to_settle(hygiene_server.api_url)
    sources = [
        *run.outputs,
        *prefect_database(hygiene_server),
        *collect_files(hygiene_server.home, label="PREFECT_HOME"),
        *collect_prefect_api(hygiene_server.api_url),
        *collect_sink(json_sink),
        *collect_files(env.audit_path, label="audit log"),
        *collect_files(env.tmp / "locks", label="lock dir"),
    ]
    assert len(collect_sink(json_sink)) >= 2, "the runs notified"
    # Positive control: the same search does reach into what the runs wrote.
    reached = scan({"public key": resumed["new_public_key"], "flow run": resumed["prefect_flow_run_id"]}, sources)
    for place in (
        "postgres dump",
        "Prefect API artifacts",
        "Prefect API events",
        "notification sink",
        "audit log",
        "stdout of rotate",
    ):
        assert any(f.where.startswith(place) for f in reached), f"nothing of the runs found in {place}"

    assert scan(known, sources) == []


def test_the_scanner_finds_planted_secrets(hygiene_server: PrefectServer, json_sink: JsonSink, tmp_path: Path) -> None:
    """Planted where a leak would land: a log file and a base64 pickle under PREFECT_HOME, a
    notification payload, an artifact and an event in the Prefect database."""
    in_log, in_pickle, in_payload = (f"sk-lf-{uuid.uuid4()}" for _ in range(3))
    unknown = f"sk-lf-{uuid.uuid4()}"
    in_db = f"planted-{secrets.token_hex(12)}"  # not sk-lf-shaped: the module's server stays clean
    home = tmp_path / "prefect-home"
    (home / "logs").mkdir(parents=True)
    (home / "logs" / "run.log").write_text(f"12:00:00 | INFO | connecting with {in_log} and {unknown}\n")
    (home / "storage").mkdir()
    record = {"result": base64.b64encode(pickle.dumps({"secret": in_pickle})).decode()}
    (home / "storage" / "result.json").write_text(json.dumps(record))
    httpx.post(f"{json_sink.url}/hook", json={"body": f"key {in_payload}"}, timeout=5)
    with httpx.Client(base_url=hygiene_server.api_url.rstrip("/") + "/", timeout=30) as api:
        api.post("artifacts/", json={"type": "markdown", "data": f"# oops {in_db}"}).raise_for_status()
        event = {
            "id": str(uuid.uuid4()),
            "occurred": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "event": "planted.secret",
            "resource": {"prefect.resource.id": f"planted.{in_db}"},
        }
        api.post("events", json=[event]).raise_for_status()
        deadline = time.monotonic() + 30
        while in_db not in json.dumps(read_events(api)):
            assert time.monotonic() < deadline, "the planted event was never stored"
            time.sleep(0.5)
    known = {"log secret": in_log, "pickled secret": in_pickle, "payload secret": in_payload, "db secret": in_db}

    findings = scan(
        known,
        [
            *collect_files(home, label="PREFECT_HOME"),
            *collect_sink(json_sink),
            *prefect_database(hygiene_server),
            *collect_files(hygiene_server.home, label="server PREFECT_HOME"),
            *collect_prefect_api(hygiene_server.api_url),
        ],
    )

    where = {(f.secret, f.where) for f in findings}
    assert ("log secret", "PREFECT_HOME/logs/run.log") in where
    assert ("pickled secret", "PREFECT_HOME/storage/result.json (base64)") in where
    assert ("payload secret", "notification sink payload 0 (/hook)") in where
    if hygiene_server.db_name:
        assert ("db secret", f"postgres dump of {hygiene_server.db_name}") in where
    assert ("db secret", "Prefect API artifacts") in where
    assert ("db secret", "Prefect API events") in where
    assert any(f.secret.endswith("(unknown)") and f.where == "PREFECT_HOME/logs/run.log" for f in findings)
    assert all(s not in repr(findings) for s in (in_log, in_pickle, in_payload, unknown)), "findings never hold values"
