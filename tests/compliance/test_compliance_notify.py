"""When the compliance deployment notifies: only when the set of findings changed."""

from __future__ import annotations

from datetime import UTC, datetime

from flows.compliance.report import Finding, Report
from flows.report_flow import change_notification, kept_state

OVERDUE = Finding(rule="key-overdue", severity="high", entry="a", public_key="pk-lf-a", detail="key is 100 days old")
STRAY = Finding(rule="stray-key", severity="medium", entry="a", public_key="pk-lf-x", subject="id1", detail="stray")


def _report(*findings: Finding) -> Report:
    return Report(findings=list(findings), checked_at=datetime.now(UTC))


def test_a_first_clean_report_says_nothing() -> None:
    assert change_notification(_report(), None) is None


def test_the_same_findings_again_say_nothing_even_as_ages_tick_on() -> None:
    before = kept_state(_report(OVERDUE))
    older = OVERDUE.model_copy(update={"detail": "key is 101 days old"})
    assert change_notification(_report(older), before) is None


def test_a_new_finding_is_marked_new_and_a_high_one_is_a_failure() -> None:
    note = change_notification(_report(OVERDUE, STRAY), kept_state(_report(STRAY)))
    assert note is not None
    assert note.kind == "failure" and "1 new, 0 resolved" in note.body
    assert "NEW high key-overdue a" in note.body and "NEW medium stray-key" not in note.body


def test_a_change_without_high_findings_is_info() -> None:
    note = change_notification(_report(STRAY), kept_state(_report(OVERDUE, STRAY)))
    assert note is not None
    assert note.kind == "info" and "resolved: high key-overdue a pk-lf-a" in note.body


def test_all_findings_resolved_is_a_success() -> None:
    note = change_notification(_report(), kept_state(_report(STRAY)))
    assert note is not None
    assert (note.kind, note.title) == ("success", "Langfuse compliance: all findings resolved")


def test_the_kept_state_fits_a_prefect_variable() -> None:
    many = [STRAY.model_copy(update={"subject": f"key-{n}", "public_key": f"pk-lf-{n:040d}"}) for n in range(500)]
    state = kept_state(_report(*many))
    assert state["identities"] == [] and state["count"] == 500 and len(str(state)) < 5000
