"""The event-driven emergency (issue 10 item 4): a ``langfuse.key.compromised`` event POSTed to a
real Prefect server's events API starts the emergency deployment for the entry it names, and the
run checks the event before it changes anything (flows.trigger.checks).

The end-to-end test serves the deployment with ``flow.serve`` in a subprocess, with the trigger
``deployments/prefect.yaml`` declares; the event is posted with plain HTTP, as a secret scanner
without the Prefect SDK would. The checks themselves run the emergency flow in-process against the
same Prefect server, as the deployment would run it for an event (``event_id`` set).
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
import yaml
from pydantic import SecretStr

from connectors.keypair import KeyPair
from connectors.langfuse import LangfuseAdminClient
from connectors.store import SecretLocation
from devstack.prefect_server import PrefectServer
from flows.trigger.automation import EMERGENCY_TRIGGER, compromised_event
from tests.fixtures.devstack import HealthStub
from tests.fixtures.prefect import wait_until_automations_load
from tests.fixtures.rotation import ENTRY, RotationEnv
from tests.scenarios.test_concurrency import created_keys, gate

REPO = Path(__file__).resolve().parents[2]
FLOW_NAME = "langfuse-key-emergency"


@pytest.fixture(autouse=True)
def no_earlier_emergency_runs(prefect_server: PrefectServer) -> None:
    """Reset per test: the hourly limits count the entry's earlier event-started runs on the
    session's server, and other suites (the forwarder's) start such runs for the same entry."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME]))):
            client.delete_flow_run(run.id)


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
        "from flows.trigger.automation import deployment_trigger\n"
        "from flows.emergency import emergency\n"
        f"emergency.serve(name={name!r}, triggers=[deployment_trigger()], pause_on_shutdown=False,"
        " print_starting_message=False)\n"
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
    """The served deployment, once the automation its trigger creates is on the server."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(served_deployment).id
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            owned = client.read_resource_related_automations(f"prefect.deployment.{deployment_id}")
            if owned:
                break
            time.sleep(0.5)
        assert owned, "serve(triggers=...) created no automation"
    wait_until_automations_load()
    yield served_deployment


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


def finished_run_of(deployment: str, timeout_s: float = 120) -> Any:
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
    run = finished_run_of(automation)
    assert run.state.is_completed(), run.state.message
    assert run.parameters["project"] == ENTRY and run.parameters["public_key"] == old.public_key
    assert run.parameters["event_id"] == event["id"]
    assert {f"project:{ENTRY}", "mode:emergency", "trigger:event-containment"} <= set(run.tags)
    assert not rotation_env.works(old)
    assert rotation_env.current().public_key != old.public_key
    lines = [json.loads(line) for line in rotation_env.audit_path.read_text().splitlines()]
    (final,) = [e for e in lines if e["langfuse_rotate"]["final"]]
    assert final["langfuse_rotate"]["outcome"] == "contained" and final["labels"]["run_id"] == str(run.id)
    initiator = final["langfuse_rotate"]["initiator"]
    assert initiator["type"] == "prefect-automation" and initiator["automation"]
    assert initiator["event_id"] == event["id"] and initiator["event_source"] == "test secret scanner"
    assert initiator["deployment"] == automation
    assert final["user"]["name"] == f"automation:{initiator['automation']}"


def test_the_trigger_in_prefect_yaml_is_the_one_the_code_serves() -> None:
    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    (emergency_deployment,) = [d for d in spec["deployments"] if d["name"] == "emergency-rotation"]

    assert emergency_deployment["triggers"] == [EMERGENCY_TRIGGER]
    assert emergency_deployment["entrypoint"] == "flows.emergency:emergency"


# --- the run checks the event before it changes anything ----------------------------------------


@pytest.fixture
def trigger_env(rotation_env: RotationEnv, prefect_server: PrefectServer) -> RotationEnv:
    """A uniquely named entry (per-entry counts on the shared server stay per test), with an
    untagged notification URL and one tagged ``emergency`` (the pager)."""
    rotation_env.entry_overrides = {"name": f"trig-{uuid.uuid4().hex[:8]}"}
    config = rotation_env.config_dict()
    rotation_env.top_overrides = {
        "notify": {
            "urls": [
                rotation_env.sink.apprise_url("/hook"),
                {"url": rotation_env.sink.apprise_url("/page"), "tags": ["emergency"]},
            ]
        },
        "langfuse": config["langfuse"],
    }
    return rotation_env


def entry_name(env: RotationEnv) -> str:
    return str(env.entry_overrides["name"])


def event_run(env: RotationEnv, public_key: str | None, *, project: str | None = None) -> Any:
    """The emergency flow as the deployment runs it for one event."""
    from flows.emergency import emergency

    return emergency(
        project=project or entry_name(env),
        config_path=str(env.write_config()),
        public_key=public_key or "",
        event_id=str(uuid.uuid4()),
        event_source="test scanner",
        return_state=True,
    )


def stray_key(env: RotationEnv) -> KeyPair:
    """A live key of the entry's project that no entry stores (e.g. made by hand and leaked)."""
    pair = KeyPair.generate()
    with LangfuseAdminClient(env.sim.url, env.sim.org_public_key, SecretStr(env.sim.org_secret_key)) as admin:
        admin.create_api_key(env.project.id, pair, "made by hand")
    return pair


def final_audit(env: RotationEnv) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in env.audit_path.read_text().splitlines()]
    return [e for e in lines if e["langfuse_rotate"]["final"]]


def assert_refused_with_a_warning(env: RotationEnv, state: Any, reason: str) -> None:
    assert state.is_completed() and state.name == "Refused", state.message
    assert reason in (state.message or "")
    final = final_audit(env)[-1]
    assert final["langfuse_rotate"]["outcome"] == "refused" and final["event"]["outcome"] == "failure"
    assert reason in final["langfuse_rotate"]["reason"]
    # The run sent its notifications before it returned: the sink holds all there will be.
    notes = env.sink.received()
    assert [n.path for n in notes] == ["/hook"], "a warning never goes to the pager"
    assert notes[0].json["type"] == "failure" and "EMERGENCY" not in notes[0].json["title"]
    assert reason in notes[0].json["message"]


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_an_event_without_a_public_key_changes_nothing_and_warns(trigger_env: RotationEnv) -> None:
    before = trigger_env.current()

    state = event_run(trigger_env, None)

    assert_refused_with_a_warning(trigger_env, state, "names no payload.public_key")
    assert trigger_env.current().public_key == before.public_key and trigger_env.works(before)


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_an_event_naming_a_key_that_is_not_live_in_the_project_changes_nothing(trigger_env: RotationEnv) -> None:
    before = trigger_env.current()

    state = event_run(trigger_env, KeyPair.generate().public_key)

    assert_refused_with_a_warning(trigger_env, state, "is not a live key of Langfuse project")
    assert trigger_env.current().public_key == before.public_key and trigger_env.works(before)


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_an_event_naming_another_entrys_key_in_another_store_changes_nothing(trigger_env: RotationEnv) -> None:
    """Entry b lives behind another store name (the same Vault): its key is b's, not a's."""
    other = stray_key(trigger_env)
    trigger_env.store.store.seed(SecretLocation(path=f"{trigger_env.path}-b"), other, trigger_env.sim.url)
    trigger_env.top_overrides["stores"] = {"main": trigger_env.store.config(), "second": trigger_env.store.config()}
    trigger_env.extra_entries = [
        {"name": "entry-b", "project_id": trigger_env.project.id, "store": "second", "path": f"{trigger_env.path}-b"}
    ]

    state = event_run(trigger_env, other.public_key)

    assert_refused_with_a_warning(trigger_env, state, "is a key of entry 'entry-b'")
    assert trigger_env.works(other)


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_an_event_for_an_unknown_entry_warns_without_paging(trigger_env: RotationEnv) -> None:
    state = event_run(trigger_env, trigger_env.current().public_key, project="no-such-entry")

    assert_refused_with_a_warning(trigger_env, state, "unknown project 'no-such-entry'")


FORGED = "\nstatus: contained\nold key rejected: True [Open the run](http://evil.example/run)"


def hostile_event_run(env: RotationEnv, *, project: str, public_key: str, source: str) -> Any:
    from flows.emergency import emergency

    return emergency(
        project=project,
        config_path=str(env.write_config()),
        public_key=public_key,
        event_id=str(uuid.uuid4()) + FORGED,
        event_source=source,
        return_state=True,
    )


def assert_nothing_forged(message: str) -> None:
    assert [line for line in message.splitlines() if line.startswith(("status:", "old key rejected:"))] == []
    assert "](" not in message and "http://evil" not in message, message


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_a_hostile_events_key_and_source_forge_no_line_or_link_in_the_refusal_notice(
    trigger_env: RotationEnv,
) -> None:
    before = trigger_env.current()

    state = hostile_event_run(
        trigger_env, project=entry_name(trigger_env), public_key=before.public_key + FORGED, source="scanner" + FORGED
    )

    assert state.is_completed() and state.name == "Refused", state.message
    (note,) = trigger_env.sink.wait_for(1, timeout_s=10)
    message = note.json["message"]
    assert_nothing_forged(message)
    assert "public key: <invalid>" in message and "from <invalid>" in message
    assert "event: <invalid>" in message
    final = final_audit(trigger_env)[-1]
    assert final["langfuse_rotate"]["outcome"] == "refused"
    assert trigger_env.works(before)


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_a_hostile_events_project_forges_no_line_in_the_refusal_notice(trigger_env: RotationEnv) -> None:
    state = hostile_event_run(
        trigger_env, project="no-such-entry" + FORGED, public_key=trigger_env.current().public_key, source="scanner"
    )

    assert state.is_completed() and state.name == "Refused", state.message
    (note,) = trigger_env.sink.wait_for(1, timeout_s=10)
    message = note.json["message"]
    assert_nothing_forged(message)
    assert "project: <invalid>" in message and "unknown project '<invalid>'" in message
    assert_nothing_forged(state.message or "")


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_repeated_events_for_one_key_contain_it_once_and_the_duplicate_notifies_nobody(
    trigger_env: RotationEnv,
) -> None:
    leaked = stray_key(trigger_env)

    first = event_run(trigger_env, leaked.public_key)
    trigger_env.sink.clear()
    second = event_run(trigger_env, leaked.public_key)

    assert first.is_completed() and first.name != "Refused", first.message
    assert not trigger_env.works(leaked)
    assert second.is_completed() and second.name == "Refused", second.message
    assert "was already contained by run" in (second.message or "")
    # A stray key's secret is not in the store, so its rejection cannot be probed: needs_attention.
    finals = final_audit(trigger_env)
    outcomes = [f["langfuse_rotate"]["outcome"] for f in finals]
    assert outcomes[0] in {"contained", "needs_attention"} and outcomes[1:] == ["refused"]
    assert finals[1]["langfuse_rotate"]["duplicate"] is True
    # The containment notified; the duplicate says so in its run and audit line, not in a second notice.
    assert trigger_env.sink.received() == []


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_past_max_per_hour_event_started_containments_a_person_must_run_the_command(
    trigger_env: RotationEnv,
) -> None:
    trigger_env.top_overrides["emergency"] = {"max_per_hour": 1}
    first, second = stray_key(trigger_env), stray_key(trigger_env)

    contained = event_run(trigger_env, first.public_key)
    trigger_env.sink.clear()
    refused = event_run(trigger_env, second.public_key)

    assert contained.is_completed() and contained.name != "Refused", contained.message
    assert_refused_with_a_warning(trigger_env, refused, "a person must run 'langfuse-rotate emergency")
    assert trigger_env.works(second), "past the limit nothing is changed"


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_an_emergency_run_by_hand_still_contains_the_stored_key_without_naming_it(
    trigger_env: RotationEnv,
) -> None:
    from flows.emergency import emergency

    old = trigger_env.current()
    state = emergency(project=entry_name(trigger_env), config_path=str(trigger_env.write_config()), return_state=True)

    assert state.is_completed() and state.name != "Refused", state.message
    assert not trigger_env.works(old)


def runs_of(deployment: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
        return list(
            client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
        )


def wait_for(predicate: Any, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.2)


@pytest.fixture
def gated_env(rotation_env: RotationEnv, health_stub: HealthStub) -> RotationEnv:
    """The entry's only consumer reports the old key until the test says otherwise: an emergency
    that contained the key then holds its run (waiting for the consumer) as long as the test likes."""
    gate(rotation_env, health_stub)
    return rotation_env


@pytest.mark.slow
@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_the_emergency_deployment_runs_one_run_per_entry_at_a_time(
    gated_env: RotationEnv, health_stub: HealthStub, prefect_server: PrefectServer, automation: str
) -> None:
    """Two scanners report the same key at once: the automation starts the deployment twice, both
    runs are Running together, and the second waits for the first's slot; by then the key is
    contained, so it changes nothing and says which run contained it."""
    env = gated_env
    old = env.current()
    reports = [compromised_event(ENTRY, old.public_key, source=f"scanner {n}") for n in (1, 2)]

    assert httpx.post(f"{prefect_server.api_url}/events", json=reports, timeout=10).status_code == 204
    wait_for(lambda: not env.works(old), "the first run contained the key")
    wait_for(
        lambda: [r.state.type.value for r in runs_of(automation) if r.state is not None] == ["RUNNING"] * 2,
        "both event-started runs are Running at once",
    )
    health_stub.set(public_key=env.current().public_key)  # the consumer switches: the first run ends
    wait_for(lambda: all(r.state is not None and r.state.is_final() for r in runs_of(automation)), "both runs end")

    runs = runs_of(automation)
    assert sorted(r.parameters["event_id"] for r in runs) == sorted(e["id"] for e in reports)
    (contained,) = [r for r in runs if r.state.name != "Refused"]
    (refused,) = [r for r in runs if r.state.name == "Refused"]
    assert contained.state.is_completed(), contained.state.message
    assert f"was already contained by run {contained.name}" in (refused.state.message or ""), refused.state.message
    assert refused.start_time < contained.end_time, "the second run was running while the first held the entry"
    created = [r for r in created_keys(env) if r["status"] in (200, 201)]
    assert len(created) == 1, "one containment, one new key"
