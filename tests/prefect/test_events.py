"""The events module without a server: which status makes which event, what a payload holds, and
that emitting never raises. (Delivery to a real Prefect server: test_events_and_compliance_flow.)"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from flows.compliance.report import Finding, Report
from flows.models import RotationResult, StepRecord
from flows.prefect import events as report_events
from flows.rotation import events


def _result(status: str, **extra: object) -> RotationResult:
    return RotationResult.model_validate(
        {
            "status": status,
            "project": "chatbot-prod",
            "old_public_key": "pk-lf-old",
            "new_public_key": "pk-lf-new",
            "steps": [StepRecord(step="create", outcome="done", duration_s=0.1)],
            **extra,
        }
    )


@pytest.mark.parametrize(
    ("status", "name"),
    [
        ("rotated", "langfuse.key.rotated"),
        ("contained", "langfuse.key.contained"),
        ("rolled_back", "langfuse.key.rotation_failed"),
        ("failed", "langfuse.key.rotation_failed"),
        ("needs_attention", "langfuse.key.needs_attention"),
    ],
)
def test_each_final_status_has_its_event_on_the_entry_resource(status: str, name: str) -> None:
    event = events.rotation_event(_result(status), "project-id")
    assert event is not None
    assert event["event"] == name
    assert event["resource"] == {
        "prefect.resource.id": "langfuse.project.chatbot-prod",
        "langfuse.project": "chatbot-prod",
    }
    assert event["payload"]["project_id"] == "project-id" and event["payload"]["new_public_key"] == "pk-lf-new"


@pytest.mark.parametrize("status", ["reconciled", "planned", "in_progress"])
def test_other_statuses_have_no_event(status: str) -> None:
    assert events.rotation_event(_result(status)) is None


def test_the_payload_holds_public_facts_only() -> None:
    event = events.rotation_event(_result("failed", error="create: boom", prefect_flow_run_id="abc"))
    assert event is not None
    assert set(event["payload"]) == {
        "status",
        "mode",
        "project_id",
        "old_public_key",
        "new_public_key",
        "store",
        "store_location",
        "store_version",
        "rotation_id",
        "verified",
        "old_key_rejected",
        "lagging_consumers",
        "silent_consumers",
        "orchestrator",
        "duration_s",
        "failed_step",
        "error",
    }
    assert event["related"] == [{"prefect.resource.id": "prefect.flow-run.abc", "prefect.resource.role": "flow-run"}]


def test_without_prefect_api_url_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(events, "_setting", lambda name: None)
    assert events.emit_rotation_event(_result("rotated")) is False


def test_an_unreachable_server_is_skipped_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    started = time.monotonic()
    assert events.emit_rotation_event(_result("rotated")) is False
    # A refused connection ends at once and the emitter's own deadline is 3 s; only retrying
    # without end (or a hang) reaches 30 s.
    assert time.monotonic() - started < 30


def test_emitting_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_: object) -> bool:
        raise RuntimeError("boom")

    monkeypatch.setattr(events, "send", broken)
    monkeypatch.setattr(report_events, "send", broken)
    assert events.emit_rotation_event(_result("rotated")) is False
    report = Report(findings=[], checked_at=datetime.now(UTC))
    assert report_events.emit_report_events(report, ["chatbot-prod"]) is False


def test_a_report_has_one_event_per_entry_and_one_for_the_organization() -> None:
    finding = Finding(rule="key-overdue", severity="high", entry="a", public_key="pk-lf-a", detail="old")
    report = Report(findings=[finding], checked_at=datetime.now(UTC))
    found = report_events.report_events(report, ["a", "b"])
    assert [e["resource"]["prefect.resource.id"] for e in found] == [
        "langfuse.project.a",
        "langfuse.project.b",
        "langfuse.compliance.organization",
    ]
    assert [e["payload"]["count"] for e in found] == [1, 0, 1]
    assert found[2]["payload"]["by_rule"] == {"key-overdue": 1}


def test_events_sent_inside_a_batch_go_out_together_when_it_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    from devstack.sinks import JsonSink

    with JsonSink() as sink:
        monkeypatch.setenv("PREFECT_API_URL", f"{sink.url}/api")
        with events.batched(every_s=60):
            for status in ("rotated", "failed", "rotated"):
                assert events.emit_rotation_event(_result(status)) is True
            assert sink.received() == []
        (request,) = sink.received()
    assert request.path == "/api/events"
    assert [e["event"] for e in request.json] == [
        "langfuse.key.rotated",
        "langfuse.key.rotation_failed",
        "langfuse.key.rotated",
    ]
