"""Distributed mode as the README sets it up: a ``prefect server start``, a process work pool, the
deployments from ``deployments/prefect.yaml``, and the README's ``prefect worker start`` commands as
subprocesses whose environment holds the config path and every secret: one worker on the pool's
``default`` queue (every deployment but ``fleet-batch``) and two on its ``fleet-batch`` queue with
``--limit 1``, as two hosts sharing a fleet would run them. Runs are triggered through the API
(``run_deployment``), exactly as the schedule, the UI or an automation would.

The workers run from a directory that is not the repository and know nothing of the checkout:
the yaml's entrypoints are modules of the package installed in the worker's Python.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.openbao import OpenBaoServer
from devstack.prefect_server import PrefectServer
from devstack.sinks import JsonSink
from tests.fixtures.langfuse_sim import SimProcess
from tests.fixtures.prefect import drain_prefect_workers, started_prefect_server
from tests.fixtures.rotation import ENTRY, RotationEnv

pytestmark = pytest.mark.slow
# One store kind keeps this suite short: the store contract is covered elsewhere for both.
vault_only = pytest.mark.parametrize("any_store", ["vault"], indirect=True)

REPO = Path(__file__).resolve().parents[2]
POOL = "langfuse-rotation"  # the work pool deployments/prefect.yaml names
MAIN_WORKER = "main"
BATCH_WORKERS = ("batch-a", "batch-b")
RUN_TIMEOUT_S = 240


def _prefect() -> str:
    return shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"


@dataclass
class Stack:
    server: PrefectServer
    config_path: Path
    worker_logs: dict[str, Path]

    def write_config(self, env: RotationEnv) -> None:
        """The worker's ``LANGFUSE_ROTATE_CONFIG``: the test's entry, with the Vault token taken from
        the worker's environment (the file holds no secret)."""
        config = env.config_dict()
        config["stores"]["main"]["token"] = "${TEST_VAULT_TOKEN}"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def worker_output(self) -> str:
        return "\n".join(f"{name}: {p.read_text(errors='replace')[-3000:]}" for name, p in self.worker_logs.items())


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    openbao: OpenBaoServer,
    langfuse_sim_process: SimProcess,
    json_sink_server: JsonSink,
) -> Iterator[Stack]:
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings

    home = tmp_path_factory.mktemp("distributed")
    worker_dir = home / "worker-cwd"  # not the repository: the entrypoints must load from the package
    worker_dir.mkdir()
    config_path = home / "etc" / "rotation.yaml"
    config_path.parent.mkdir()
    worker_logs = {name: home / f"worker-{name}.log" for name in (MAIN_WORKER, *BATCH_WORKERS)}
    with started_prefect_server() as server:
        cli_env = server.client_env()

        def prefect(*args: str) -> None:
            proc = subprocess.run(
                [_prefect(), *args], env=cli_env, cwd=REPO, capture_output=True, text=True, timeout=180
            )
            assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

        # The locked template docs/trust-boundary.md asks for (job variables cannot
        # change the command, environment or working directory).
        template = "deployments/process-work-pool-template.json"
        prefect("work-pool", "create", POOL, "--type", "process", "--base-job-template", template)
        prefect("--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all")

        bootstrap = langfuse_sim_process.bootstrap
        worker_env = server.client_env(
            {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "LANGFUSE_ROTATE_", "AWS_"))}
        )
        worker_env.update(
            LANGFUSE_ROTATE_CONFIG=str(config_path),
            LANGFUSE_ROTATE_LOCK_DIR=str(home / "locks"),
            LANGFUSE_ROTATE_NOTIFY_URLS=f"json://{json_sink_server.url.removeprefix('http://')}/hook",
            TEST_LANGFUSE_ORG_PUBLIC_KEY=bootstrap["org_public_key"],
            TEST_LANGFUSE_ORG_SECRET_KEY=bootstrap["org_secret_key"],
            TEST_VAULT_TOKEN=openbao.root_token,
            PREFECT_WORKER_QUERY_SECONDS="1",
            PREFECT_WORKER_PREFETCH_SECONDS="1",
            PYTHONPATH="",
        )
        workers = []
        # The README's commands: the default queue's worker (no limit: an emergency never waits
        # behind a batch) and, per host sharing the fleet, a fleet-batch worker taking one batch at
        # a time. Prefect hands each batch to whichever of those has a free slot.
        queue_args = {MAIN_WORKER: ["--work-queue", "default"]}
        queue_args |= {name: ["--work-queue", "fleet-batch", "--limit", "1"] for name in BATCH_WORKERS}
        for name, log_path in worker_logs.items():
            with log_path.open("wb") as log:
                workers.append(
                    subprocess.Popen(
                        [_prefect(), "worker", "start", "--pool", POOL, *queue_args[name], "--name", name],
                        env=worker_env,
                        cwd=worker_dir,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        try:
            with temporary_settings(updates={PREFECT_API_URL: server.api_url, PREFECT_SERVER_ANALYTICS_ENABLED: False}):
                stack = Stack(server=server, config_path=config_path, worker_logs=worker_logs)
                _wait_until_the_queues_are_polled(stack, ("default", "fleet-batch"))
                yield stack
                drain_prefect_workers()  # while this server still answers
        finally:
            for worker in workers:
                os.killpg(worker.pid, 15)
            for worker in workers:
                try:
                    worker.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(worker.pid, 9)
                    worker.wait(10)


def _wait_until_the_queues_are_polled(stack: Stack, queues: tuple[str, ...], timeout_s: float = 120) -> None:
    """Until Prefect marks every queue READY (a worker polled it): a fleet refuses a batch queue
    that nobody polls, so no test may start before the workers did."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import WorkQueueStatus

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            statuses = {q: client.read_work_queue_by_name(q, work_pool_name=POOL).status for q in queues}
            if set(statuses.values()) == {WorkQueueStatus.READY}:
                return
            assert time.monotonic() < deadline, f"queues not polled: {statuses}\n{stack.worker_output()}"
            time.sleep(0.5)


def run_deployment_and_wait(stack: Stack, name: str, **parameters: Any) -> Any:
    from prefect.deployments import run_deployment

    run = run_deployment(name, parameters=parameters, timeout=RUN_TIMEOUT_S, poll_interval=1)
    assert run.state is not None and run.state.is_final(), f"{name} did not finish:\n{stack.worker_output()}"
    return run


def read_run(run_id: str) -> Any:
    from uuid import UUID

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(run_id))


def artifact_markdown(run: Any) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        only_this_run = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        artifacts = client.read_artifacts(artifact_filter=only_this_run)
    assert len(artifacts) == 1, [a.key for a in artifacts]
    text: str = str(artifacts[0].data)
    return text


@vault_only
def test_the_rotate_deployment_rotates_the_named_entry_on_a_process_worker(
    stack: Stack, rotation_env: RotationEnv
) -> None:
    stack.write_config(rotation_env)
    old = rotation_env.current()

    run = run_deployment_and_wait(stack, "langfuse-key-rotation/rotate", project=ENTRY)

    assert run.state.is_completed(), f"{run.state.message}\n{stack.worker_output()}"
    assert run.work_pool_name == POOL
    assert re.fullmatch(rf"rotate-{ENTRY}-\d{{8}}-\d{{4}}", run.name)
    assert {f"project:{ENTRY}", "mode:scheduled", "store:main"} <= set(run.tags)
    new = rotation_env.current()
    assert new.public_key != old.public_key
    assert rotation_env.works(new)
    assert not rotation_env.works(old), "the old key is revoked"
    markdown = artifact_markdown(run)
    assert "| step | outcome | duration (s) | detail |" in markdown
    assert re.search(r"^\| verify \| done \|", markdown, re.MULTILINE)
    assert f"| new public key | `{new.public_key}` |" in markdown
    assert new.secret_key.get_secret_value() not in markdown
    assert old.secret_key.get_secret_value() not in markdown


@vault_only
def test_the_emergency_deployment_contains_the_named_entry_on_a_process_worker(
    stack: Stack, rotation_env: RotationEnv
) -> None:
    stack.write_config(rotation_env)
    compromised = rotation_env.current()

    # Triggered with the README's command line rather than the Python API.
    proc = subprocess.run(
        [
            _prefect(),
            "deployment",
            "run",
            "langfuse-key-emergency/emergency-rotation",
            "-p",
            f"project={ENTRY}",
            "--watch",
            "--watch-interval",
            "1",
            "--watch-timeout",
            str(RUN_TIMEOUT_S),
        ],
        env=stack.server.client_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S + 30,
    )

    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{stack.worker_output()}"
    run = read_run(re.search(r"UUID: ([0-9a-f-]{36})", proc.stdout).group(1))  # type: ignore[union-attr]
    assert run.state.is_completed(), run.state.message
    assert re.fullmatch(rf"emergency-{ENTRY}-\d{{8}}-\d{{4}}", run.name)
    assert {f"project:{ENTRY}", "mode:emergency", "store:main"} <= set(run.tags)
    new = rotation_env.current()
    assert new.public_key != compromised.public_key
    assert rotation_env.works(new)
    assert not rotation_env.works(compromised), "the compromised key is revoked"
    markdown = artifact_markdown(run)
    assert "(emergency)" in markdown
    assert re.search(r"^\| revoke \| done \|", markdown, re.MULTILINE)


@vault_only
def test_a_run_whose_config_is_missing_on_the_worker_fails_and_notifies(
    stack: Stack, rotation_env: RotationEnv
) -> None:
    stack.config_path.unlink(missing_ok=True)

    run = run_deployment_and_wait(stack, "langfuse-key-rotation/rotate", project=ENTRY)

    assert run.state.is_failed()
    assert "cannot read configuration" in (run.state.message or "")
    notes = rotation_env.sink.wait_for(1, timeout_s=30)
    assert notes[0].json["type"] == "failure"
    assert run.name in notes[0].json["title"]
    assert "cannot read configuration" in notes[0].json["message"]


@vault_only
def test_the_quarterly_deployment_records_every_entry_as_its_own_run_and_fails_if_any_entry_fails(
    stack: Stack, rotation_env: RotationEnv
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    rotation_env.extra_entries = [
        {
            "name": "no-secret-yet",
            "project_id": rotation_env.project.id,
            "store": "main",
            "path": "langfuse/nothing-here",
        }
    ]
    stack.write_config(rotation_env)
    old = rotation_env.current()

    run = run_deployment_and_wait(stack, "langfuse-key-rotation-all/quarterly")

    assert re.fullmatch(r"rotate-all-\d{8}-\d{4}", run.name)
    assert run.state.is_failed(), f"{run.state.message}\n{stack.worker_output()}"
    assert run.state.message.startswith("failed: fleet partial: 1 of 2 entries: no-secret-yet failed")
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"fleet:{run.id}"]))
        )
    by_entry = {re.sub(r"^rotate-|-\d{8}-\d{4}$", "", c.name): c for c in children}
    assert set(by_entry) == {ENTRY, "no-secret-yet"}
    assert by_entry[ENTRY].state is not None and by_entry[ENTRY].state.is_completed()
    assert {f"project:{ENTRY}", "mode:scheduled", "store:main"} <= set(by_entry[ENTRY].tags)
    assert rotation_env.current().public_key != old.public_key
    assert "| step | outcome |" in artifact_markdown(by_entry[ENTRY])
    assert by_entry["no-secret-yet"].state is not None and by_entry["no-secret-yet"].state.is_failed()
    lines = [json.loads(line) for line in rotation_env.audit_path.read_text().splitlines()]
    finals = {(e["event"]["action"], e["labels"]["run_id"]): e for e in lines if e["langfuse_rotate"]["final"]}
    assert set(finals) == {("rotate", str(c.id)) for c in children} | {("rotate-all", str(run.id))}
    assert finals[("rotate-all", str(run.id))]["langfuse_rotate"]["failed_entries"] == ["no-secret-yet"]
    initiator = finals[("rotate-all", str(run.id))]["langfuse_rotate"]["initiator"]
    assert initiator["type"] == "prefect-deployment" and initiator["deployment"].endswith("/quarterly")


@vault_only
def test_a_compromised_key_event_runs_the_emergency_deployment_through_the_trigger_prefect_deploy_created(
    stack: Stack, rotation_env: RotationEnv
) -> None:
    import httpx

    from flows.trigger.automation import compromised_event

    stack.write_config(rotation_env)
    compromised = rotation_env.current()
    event = compromised_event(ENTRY, compromised.public_key, source="distributed test")

    assert httpx.post(f"{stack.server.api_url}/events", json=[event], timeout=10).status_code == 204
    run = _run_with_parameter("event_id", event["id"], timeout_s=RUN_TIMEOUT_S)

    assert run.state.is_completed() and run.state.name != "Refused", f"{run.state.message}\n{stack.worker_output()}"
    assert not rotation_env.works(compromised)
    assert run.labels["prefect.worker.name"] == MAIN_WORKER, "an emergency never waits for a batch worker's slot"


def _run_with_parameter(name: str, value: str, *, timeout_s: float) -> Any:
    import time

    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = [r for r in client.read_flow_runs() if (r.parameters or {}).get(name) == value]
            if runs and runs[0].state is not None and runs[0].state.is_final():
                return runs[0]
            time.sleep(1)
    raise AssertionError(f"no finished run with {name}={value} within {timeout_s}s")


@vault_only
def test_the_reconcile_deployment_fails_when_an_entry_could_not_be_reconciled(
    stack: Stack, rotation_env: RotationEnv
) -> None:
    rotation_env.extra_entries = [
        {"name": "no-secret-yet", "project_id": rotation_env.project.id, "store": "main", "path": "langfuse/nothing"}
    ]
    stack.write_config(rotation_env)

    run = run_deployment_and_wait(stack, "langfuse-key-reconcile/reconcile")

    assert run.state.is_failed(), run.state.message
    assert run.state.message.startswith("failed: 1 of 2 entries not reconciled: no-secret-yet")


@vault_only
def test_a_fleet_with_batch_size_spreads_its_batches_over_every_batch_worker_one_batch_each_at_a_time(
    stack: Stack, rotation_env: RotationEnv
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from pydantic import SecretStr

    from connectors.keypair import KeyPair
    from connectors.langfuse import LangfuseAdminClient
    from connectors.store import SecretLocation

    sim = rotation_env.sim
    with LangfuseAdminClient(sim.url, sim.org_public_key, SecretStr(sim.org_secret_key)) as admin:
        for i in range(7):
            pair = KeyPair.generate()
            admin.create_api_key(rotation_env.project.id, pair, note="seed")
            path = f"{rotation_env.path}/svc-{i}"
            rotation_env.store.store.seed(SecretLocation(path=path), pair, sim.url)
            rotation_env.extra_entries.append(
                {
                    "name": f"svc-{i}",
                    "project_id": rotation_env.project.id,
                    "store": "main",
                    "path": path,
                    "grace_period_s": 0,
                    "canary_timeout_s": 5,
                }
            )
    rotation_env.top_overrides = {"fleet": {"batch_size": 2}}
    stack.write_config(rotation_env)

    run = run_deployment_and_wait(stack, "langfuse-key-rotation-all/quarterly")

    assert run.state.is_completed(), f"{run.state.message}\n{stack.worker_output()}"
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id]))
        )
        deployments = {d.id: d.name for d in client.read_deployments()}
    batches = [c for c in children if deployments.get(c.deployment_id) == "fleet-batch"]
    assert len(batches) == 4 and all(b.state is not None and b.state.is_completed() for b in batches)
    assert all(b.work_pool_name == POOL and b.work_queue_name == "fleet-batch" for b in batches)
    # Which worker ran a run: the label Prefect's worker gives the run when it submits it.
    assert run.labels["prefect.worker.name"] == MAIN_WORKER, "the fleet run never holds a batch worker's slot"
    by_worker: dict[str, list[Any]] = {}
    for batch in batches:
        by_worker.setdefault(batch.labels["prefect.worker.name"], []).append(batch)
    assert set(by_worker) == set(BATCH_WORKERS), {w: len(b) for w, b in by_worker.items()}
    for worker, runs in by_worker.items():  # --limit 1: a worker's next batch starts after its last one ended
        runs.sort(key=lambda b: b.start_time)
        for earlier, later in itertools.pairwise(runs):
            assert later.start_time >= earlier.end_time, f"{worker} ran {earlier.name} and {later.name} at once"
    summary = [a for a in _artifacts(run) if a.key == "langfuse-fleet-summary"]
    rows = summary[0].data if isinstance(summary[0].data, list) else json.loads(summary[0].data)
    assert sorted(r["entry"] for r in rows) == sorted([ENTRY, *(f"svc-{i}" for i in range(7))])
    assert {r["status"] for r in rows} == {"rotated"}
    notes = rotation_env.sink.wait_for(1, timeout_s=30)
    assert len(notes) == 1 and "8 rotated" in notes[0].json["title"], [n.json["title"] for n in notes]


@vault_only
def test_a_fleet_whose_batch_queue_no_worker_polls_fails_at_once_and_starts_nothing(
    stack: Stack, rotation_env: RotationEnv
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        flow = client.read_flow_by_name("langfuse-key-rotation-all")
        unserved = client.create_deployment(
            flow_id=flow.id,
            name="fleet-batch-unserved",
            entrypoint="flows.rotate:rotate_all",
            work_pool_name=POOL,
            work_queue_name="nobody-polls",
        )
    rotation_env.top_overrides = {
        "fleet": {"batch_size": 1, "batch_deployment": "langfuse-key-rotation-all/fleet-batch-unserved"}
    }
    stack.write_config(rotation_env)
    old = rotation_env.current()

    try:
        run = run_deployment_and_wait(stack, "langfuse-key-rotation-all/quarterly")
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(unserved)

    assert run.state.is_failed(), f"{run.state.message}\n{stack.worker_output()}"
    assert "no worker polls work queue nobody-polls of pool langfuse-rotation" in (run.state.message or "")
    assert "--work-queue nobody-polls --limit 1" in (run.state.message or "")
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id]))
        )
    assert children == [], "no batch was handed out"
    assert rotation_env.current().public_key == old.public_key
    assert rotation_env.works(old)
    notes = rotation_env.sink.wait_for(1, timeout_s=30)
    assert notes[0].json["type"] == "failure" and "no worker polls work queue" in notes[0].json["message"]


# Every flow a deployment runs, cancelled while it runs (the README: a cancelled run notifies).
CANCELLED_DEPLOYMENTS = {
    "langfuse-key-rotation/rotate": {"project": ENTRY},
    "langfuse-key-rotation-all/quarterly": {},
    "langfuse-key-emergency/emergency-rotation": {"project": ENTRY},
    "langfuse-key-reconcile/reconcile": {},
    "langfuse-compliance-report/compliance": {},
}


@pytest.mark.parametrize("deployment", list(CANCELLED_DEPLOYMENTS))
@vault_only
def test_a_run_cancelled_while_it_runs_ends_cancelled_and_notifies_once(
    stack: Stack, rotation_env: RotationEnv, deployment: str
) -> None:
    """The store never answers, so the run is still at work when a person cancels it; the worker
    kills it and the flow's cancellation hook says so (once, with the run's name)."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Cancelling

    from tests.hostile_http import Tarpit

    with Tarpit() as store:
        rotation_env.top_overrides = {
            "stores": {"main": rotation_env.store.config() | {"url": store.url, "timeout_s": 300}}
        }
        stack.write_config(rotation_env)
        run = run_deployment(deployment, parameters=CANCELLED_DEPLOYMENTS[deployment], timeout=0)
        wait_for_state(stack, run.id, lambda state: state.is_running())
        _wait_until(lambda: store.hits > 0, "the run is waiting for the store", timeout_s=60)

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.id, Cancelling(message="cancelled by the test"), force=True)

        final = wait_for_state(stack, run.id, lambda state: state.is_final())
    assert final.is_cancelled(), f"{final.name}: {final.message}\n{stack.worker_output()}"
    (note,) = rotation_env.sink.wait_for(1, timeout_s=60)
    run_name = read_run(str(run.id)).name
    assert run_name in note.json["title"] and "Cancel" in note.json["title"], note.json["title"]
    assert note.json["type"] == "failure", note.json  # apprise's type for both kinds, failure and emergency
    assert len(rotation_env.sink.received()) == 1, [n.json["title"] for n in rotation_env.sink.received()]


def wait_for_state(stack: Stack, run_id: Any, done: Any, timeout_s: float = RUN_TIMEOUT_S) -> Any:
    found: list[Any] = []

    def reached() -> bool:
        state = read_run(str(run_id)).state
        found[:] = [state]
        return state is not None and bool(done(state))

    _wait_until(reached, f"run {run_id} reached the state wanted (last: {found})", timeout_s, stack)
    return found[0]


def _wait_until(predicate: Any, what: str, timeout_s: float, stack: Stack | None = None) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}\n{stack.worker_output() if stack else ''}"
        time.sleep(0.5)


def _artifacts(run: Any) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return list(
            client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
        )


@vault_only
def test_the_reconcile_deployment_leaves_a_named_run_with_a_summary_per_entry(
    stack: Stack, rotation_env: RotationEnv
) -> None:
    stack.write_config(rotation_env)
    old = rotation_env.current()

    run = run_deployment_and_wait(stack, "langfuse-key-reconcile/reconcile")

    assert run.state.is_completed(), f"{run.state.message}\n{stack.worker_output()}"
    assert re.fullmatch(r"reconcile-all-\d{8}-\d{4}", run.name)
    assert "mode:reconcile" in run.tags
    assert "**Status:** `reconciled`" in artifact_markdown(run)
    assert rotation_env.current().public_key == old.public_key, "reconcile never rotates"


def test_the_yaml_schedules_rotation_quarterly_and_reconcile_daily_and_leaves_emergency_unscheduled(
    stack: Stack,
) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments()}

    assert set(deployments) == {"quarterly", "fleet-batch", "rotate", "emergency-rotation", "reconcile", "compliance"}
    schedules = {name: [s.schedule for s in d.schedules] for name, d in deployments.items()}
    (quarterly,) = schedules["quarterly"]
    assert (quarterly.cron, quarterly.timezone) == ("0 3 1 1,4,7,10 *", "Europe/Berlin")
    (daily,) = schedules["reconcile"]
    assert daily.cron.endswith("* * *") and daily.timezone == "Europe/Berlin"
    (report,) = schedules["compliance"]
    assert report.cron.endswith("* * *") and report.timezone == "Europe/Berlin"
    assert schedules["rotate"] == schedules["emergency-rotation"] == schedules["fleet-batch"] == []
    assert all(d.work_pool_name == POOL for d in deployments.values())
    queues = {name: d.work_queue_name for name, d in deployments.items()}
    assert queues.pop("fleet-batch") == "fleet-batch" and set(queues.values()) == {"default"}
    # Parameters are names only: no deployment carries a default beyond the entry name.
    assert all(not d.parameters for d in deployments.values())
    assert "project" in deployments["emergency-rotation"].parameter_openapi_schema["required"]
    with get_client(sync_client=True) as client:
        owned = client.read_resource_related_automations(f"prefect.deployment.{deployments['emergency-rotation'].id}")
    assert [a.name for a in owned] == ["langfuse-emergency-rotation-on-compromise"]


@vault_only
def test_the_compliance_deployment_publishes_the_report_on_a_process_worker(
    stack: Stack, rotation_env: RotationEnv
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    stack.write_config(rotation_env)  # one entry: the simulator's second project is uncovered
    run = run_deployment_and_wait(stack, "langfuse-compliance-report/compliance")
    assert run.state.is_completed(), f"{run.state.message}\n{stack.worker_output()}"
    assert re.fullmatch(r"compliance-all-\d{8}-\d{4}", run.name)
    with get_client(sync_client=True) as client:
        only_this_run = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        artifacts = {a.key: a for a in client.read_artifacts(artifact_filter=only_this_run)}
    assert set(artifacts) == {"langfuse-compliance-report", "langfuse-compliance-findings"}
    assert "stray-key" in str(artifacts["langfuse-compliance-report"].data)
    assert artifacts["langfuse-compliance-findings"].type == "table"
