"""Prefect events of rotations, containments and reports, and the daily compliance flow, against a
real Prefect server (PostgreSQL): events read back through ``POST /api/events/filter``, artifacts
through ``POST /api/artifacts/filter``, notifications in the JSON sink."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from devstack.prefect_server import PrefectServer
from flows.prefect import events as report_events
from flows.report_flow import MARKDOWN_KEY, TABLE_KEY, compliance_report
from flows.rotation import events
from flows.rotation.entry_run import execute
from flows.rotation.runners import DirectRunner
from tests.fixtures.devstack import HealthStub
from tests.fixtures.inventory import SECOND, InventoryEnv
from tests.fixtures.prefect import wait_until_automations_load
from tests.fixtures.rotation import ENTRY

pytestmark = pytest.mark.slow
vault_only = pytest.mark.parametrize("any_store", ["vault"], indirect=True)


def _events(server: PrefectServer, name: str, resource: str, since: datetime, count: int = 1) -> list[dict[str, Any]]:
    """Events named ``name`` on ``resource`` since ``since``; waits up to 20 s for ``count``."""
    body = {
        "filter": {
            "event": {"name": [name]},
            "resource": {"id": [resource]},
            "occurred": {"since": since.isoformat(), "until": (datetime.now(UTC) + timedelta(hours=1)).isoformat()},
        },
        "limit": 50,
    }
    deadline = time.monotonic() + 20
    while True:
        found = httpx.post(f"{server.api_url}/events/filter", json=body, timeout=10).json()["events"]
        if len(found) >= count or time.monotonic() > deadline:
            return list(found)
        time.sleep(0.5)


def _no_secret(inv: InventoryEnv, text: str) -> None:
    secrets = [inv.sim.org_secret_key, *(p.secret_key for p in inv.sim.projects)]
    assert not [s for s in secrets if s in text]


@vault_only
def test_a_rotation_emits_rotated_with_public_facts(inventory_env: InventoryEnv, prefect_server: PrefectServer) -> None:
    since = datetime.now(UTC)  # only this test's events: earlier tests emit on the same resource
    result = execute("rotate", ENTRY, str(inventory_env.write_config()), DirectRunner())
    assert result.status == "rotated"
    [event] = _events(prefect_server, events.ROTATED, f"langfuse.project.{ENTRY}", since)
    assert event["resource"]["langfuse.project"] == ENTRY
    payload = event["payload"]
    assert (payload["old_public_key"], payload["new_public_key"]) == (result.old_public_key, result.new_public_key)
    assert (payload["project_id"], payload["status"], payload["mode"]) == (
        inventory_env.project.id,
        "rotated",
        "scheduled",
    )
    _no_secret(inventory_env, json.dumps(event))
    assert result.new_public_key is not None
    assert inventory_env.current().secret_key.get_secret_value() not in json.dumps(event)


@vault_only
def test_a_rotation_flow_run_relates_its_event_to_the_run(
    inventory_env: InventoryEnv, prefect_server: PrefectServer
) -> None:
    from flows.rotate import rotate

    since = datetime.now(UTC)  # only this test's events: earlier tests emit on the same resource
    state = rotate(project=ENTRY, config_path=str(inventory_env.write_config()), return_state=True)
    assert state.is_completed(), state.message
    [event] = _events(prefect_server, events.ROTATED, f"langfuse.project.{ENTRY}", since)
    run_id = str(state.state_details.flow_run_id)
    assert event["payload"]["orchestrator"] == "prefect"
    assert {"prefect.resource.id": f"prefect.flow-run.{run_id}", "prefect.resource.role": "flow-run"} in event[
        "related"
    ]


@vault_only
def test_a_rolled_back_rotation_emits_rotation_failed(
    inventory_env: InventoryEnv, prefect_server: PrefectServer, health_stub: HealthStub
) -> None:
    health_stub.set(public_key=inventory_env.project.public_key)  # never switches
    inventory_env.consumers.append({"name": "api", "health_url": health_stub.health_url})
    inventory_env.entry_overrides["wait_timeout_s"] = 1
    since = datetime.now(UTC)  # only this test's events: earlier tests emit on the same resource
    result = execute("rotate", ENTRY, str(inventory_env.write_config()), DirectRunner())
    assert result.status == "rolled_back"
    [event] = _events(prefect_server, events.ROTATION_FAILED, f"langfuse.project.{ENTRY}", since)
    assert event["payload"]["status"] == "rolled_back" and "consumers did not switch" in event["payload"]["error"]


@vault_only
def test_an_emergency_emits_contained(inventory_env: InventoryEnv, prefect_server: PrefectServer) -> None:
    since = datetime.now(UTC)  # only this test's events: earlier tests emit on the same resource
    result = execute("emergency", ENTRY, str(inventory_env.write_config()), DirectRunner())
    assert result.status == "contained"
    [event] = _events(prefect_server, events.CONTAINED, f"langfuse.project.{ENTRY}", since)
    assert event["payload"]["old_public_key"] == inventory_env.project.public_key
    assert event["payload"]["old_key_rejected"] is True


@vault_only
def test_without_a_reachable_server_events_are_skipped_and_the_rotation_is_unaffected(
    inventory_env: InventoryEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    started = time.monotonic()
    result = execute("rotate", ENTRY, str(inventory_env.write_config()), DirectRunner())
    assert result.status == "rotated"
    assert events.emit_rotation_event(result) is False
    assert time.monotonic() - started < 60


@vault_only
def test_a_report_emits_findings_per_entry_and_for_the_organization(
    inventory_env: InventoryEnv, prefect_server: PrefectServer
) -> None:
    inventory_env.sim.control.backdate_key(inventory_env.project.public_key, datetime.now(UTC) - timedelta(days=100))
    since = datetime.now(UTC)  # only this test's events: earlier tests emit on the same resource
    assert inventory_env.report()[0] == 4
    [mine] = _events(prefect_server, report_events.COMPLIANCE_FINDINGS, f"langfuse.project.{ENTRY}", since)
    assert mine["payload"]["count"] == 1 and mine["payload"]["findings"][0]["rule"] == "key-overdue"
    [clean] = _events(prefect_server, report_events.COMPLIANCE_FINDINGS, f"langfuse.project.{SECOND}", since)
    assert clean["payload"] == {"checked_at": mine["payload"]["checked_at"], "count": 0, "findings": []}
    [org] = _events(prefect_server, report_events.COMPLIANCE_FINDINGS, report_events.ORGANIZATION_RESOURCE, since)
    assert org["payload"]["by_rule"] == {"key-overdue": 1} and org["payload"]["highest_severity"] == "high"


def test_the_overdue_automation_the_readme_shows_is_accepted_by_the_server(prefect_server: PrefectServer) -> None:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client

    block = CustomWebhookNotificationBlock(name="sink", url="http://127.0.0.1:9/hook", json_data={"text": "{{body}}"})
    block_id = block.save(f"langfuse-overdue-{uuid.uuid4().hex[:8]}", overwrite=True)
    with get_client(sync_client=True) as client:
        automation_id = client.create_automation(report_events.overdue_rotation_automation(block_id))
        stored = client.read_automation(automation_id)
        client.delete_automation(automation_id)
    assert stored is not None
    assert stored.trigger.within == timedelta(days=95)  # type: ignore[union-attr]
    assert stored.trigger.expect == {events.ROTATED}  # type: ignore[union-attr]


def test_the_overdue_automation_fires_for_an_entry_without_a_further_rotated_event(
    prefect_server: PrefectServer, json_sink: Any
) -> None:
    """The README's automation with a 10 s window (Prefect's minimum) instead of 95 days."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client

    entry = f"overdue-{uuid.uuid4().hex[:8]}"
    block = CustomWebhookNotificationBlock(
        name="sink", url=f"{json_sink.url}/overdue", json_data={"subject": "{{subject}}", "body": "{{body}}"}
    )
    block_id = block.save(f"langfuse-overdue-{uuid.uuid4().hex[:8]}", overwrite=True)
    with get_client(sync_client=True) as client:
        automation_id = client.create_automation(
            report_events.overdue_rotation_automation(block_id, timedelta(seconds=10))
        )
    try:
        wait_until_automations_load()
        rotated = events.build_event(events.ROTATED, events.project_resource(entry), {"status": "rotated"})
        assert events.send([rotated])
        [note] = json_sink.wait_for(1, timeout_s=60)
        assert note.path == "/overdue"
        assert note.json["subject"] == f"Langfuse key of {entry} not rotated in 10 s"
        assert f"langfuse-rotate rotate --project {entry}" in note.json["body"]
    finally:
        with get_client(sync_client=True) as client:
            client.delete_automation(automation_id)


# --- the compliance flow ------------------------------------------------------------------------


def _artifacts(server: PrefectServer, flow_run_id: str) -> dict[str, dict[str, Any]]:
    body = {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
    found = httpx.post(f"{server.api_url}/artifacts/filter", json=body, timeout=10).json()
    return {a["key"]: a for a in found}


def _run(inv: InventoryEnv, variable: str) -> tuple[Any, str]:
    state = compliance_report(config_path=str(inv.write_config()), state_variable=variable, return_state=True)
    return state, str(state.state_details.flow_run_id)


@vault_only
def test_the_compliance_flow_publishes_artifacts_and_notifies_only_on_change(
    inventory_env: InventoryEnv, prefect_server: PrefectServer
) -> None:
    variable = f"test_compliance_{uuid.uuid4().hex[:8]}"
    sink = inventory_env.sink

    state, _ = _run(inventory_env, variable)  # clean, first run: nothing to say
    assert state.is_completed() and sink.received() == []

    extra = f"pk-lf-{uuid.uuid4()}"
    inventory_env.sim.http.post(
        f"/api/public/projects/{inventory_env.project.id}/apiKeys",
        json={"publicKey": extra, "secretKey": f"sk-lf-{uuid.uuid4()}", "note": "by hand"},
        auth=inventory_env.sim.org_auth,
    )
    state, run_id = _run(inventory_env, variable)
    assert state.is_completed()
    [note] = sink.wait_for(1)
    assert "1 finding(s)" in note.json["title"] and note.json["type"] == "info"
    assert f"NEW medium stray-key {ENTRY}" in note.json["message"]
    artifacts = _artifacts(prefect_server, run_id)
    assert "| medium | stray-key | chatbot-prod |" in artifacts[MARKDOWN_KEY]["data"]
    table = artifacts[TABLE_KEY]["data"]
    rows = json.loads(table) if isinstance(table, str) else table
    assert [(r["rule"], r["public_key"]) for r in rows] == [("stray-key", extra)]
    _no_secret(inventory_env, json.dumps(artifacts) + note.text)

    sink.clear()
    state, _ = _run(inventory_env, variable)  # the same findings the next day: silent
    # The flow sends its notification before it returns; it says it sent none, and none arrived.
    assert state.result()["notified"] is False
    assert sink.received() == []

    inventory_env.sim.control.backdate_key(inventory_env.project.public_key, datetime.now(UTC) - timedelta(days=100))
    _run(inventory_env, variable)  # a high finding appears
    [note] = sink.wait_for(1)
    assert note.json["type"] == "failure" and "highest high" in note.json["title"]

    sink.clear()
    inventory_env.sim.control.backdate_key(inventory_env.project.public_key, datetime.now(UTC))
    key_id = next(k["id"] for k in inventory_env.project_keys() if k["publicKey"] == extra)
    inventory_env.sim.http.delete(
        f"/api/public/projects/{inventory_env.project.id}/apiKeys/{key_id}", auth=inventory_env.sim.org_auth
    )
    _run(inventory_env, variable)  # all resolved
    [note] = sink.wait_for(1)
    assert note.json["title"] == "Langfuse compliance: all findings resolved" and note.json["type"] == "success"


@vault_only
def test_a_high_finding_reaches_failure_tagged_urls_only_then(
    inventory_env: InventoryEnv, prefect_server: PrefectServer
) -> None:
    sink = inventory_env.sink
    inventory_env.top_overrides["notify"] = {
        "urls": [f"failure={sink.apprise_url('/oncall')}", sink.apprise_url("/everything")]
    }
    variable = f"test_compliance_{uuid.uuid4().hex[:8]}"
    extra = f"pk-lf-{uuid.uuid4()}"
    inventory_env.sim.http.post(
        f"/api/public/projects/{inventory_env.project.id}/apiKeys",
        json={"publicKey": extra, "secretKey": f"sk-lf-{uuid.uuid4()}"},
        auth=inventory_env.sim.org_auth,
    )
    _run(inventory_env, variable)  # a medium finding: not for the failure-tagged URL
    # Both URLs are sent to together before the flow returns: the untagged one got the report,
    # so the failure-tagged one was passed over, not merely late.
    assert [n.path for n in sink.received()] == ["/everything"]
    sink.clear()
    inventory_env.sim.control.backdate_key(inventory_env.project.public_key, datetime.now(UTC) - timedelta(days=100))
    _run(inventory_env, variable)
    notes = sink.wait_for(2)
    assert sorted(n.path for n in notes) == ["/everything", "/oncall"]
    assert all(n.json["type"] == "failure" for n in notes)


@vault_only
def test_an_incomplete_report_fails_the_run_and_keeps_the_last_findings(
    inventory_env: InventoryEnv, prefect_server: PrefectServer
) -> None:
    variable = f"test_compliance_{uuid.uuid4().hex[:8]}"
    config = inventory_env.store.config()
    inventory_env.top_overrides["stores"] = {"main": {**config, "url": "http://127.0.0.1:9", "timeout_s": 1}}
    state, run_id = _run(inventory_env, variable)
    assert state.is_failed()
    assert "could not read" in (state.message or "") and "store 'main'" in (state.message or "")
    assert MARKDOWN_KEY in _artifacts(prefect_server, run_id)
    from prefect.variables import Variable

    assert Variable.get(variable, default=None) is None
