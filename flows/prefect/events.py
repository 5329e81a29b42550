"""Prefect events of the compliance report, and the proactive automation docs/compliance.md shows;
a run's own event, and how events reach the server, are ``flows.rotation.events``.

| event | when |
|---|---|
| ``langfuse.compliance.findings`` | a report ran: one event per entry, and one for the organization |

Resource: ``langfuse.project.<entry>``, and ``langfuse.compliance.organization`` for the report's
organization-wide event. The payload holds public facts only: finding rules and details. Never a
secret. Emitting is best effort, as for every event (``flows.rotation.events``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, timedelta
from typing import TYPE_CHECKING, Any

from flows.redact import scrub
from flows.rotation.events import RESOURCE_PREFIX, ROTATED, build_event, project_resource, send

if TYPE_CHECKING:
    from flows.compliance.report import Report

logger = logging.getLogger("langfuse_rotate.events")

ORGANIZATION_RESOURCE = "langfuse.compliance.organization"
COMPLIANCE_FINDINGS = "langfuse.compliance.findings"
OVERDUE_AUTOMATION_NAME = "langfuse-key-not-rotated-in-95-days"


def report_events(report: Report, entries: Sequence[str], *, flow_run_id: str | None = None) -> list[dict[str, Any]]:
    """One ``langfuse.compliance.findings`` event per configured entry (zero findings included,
    so an automation can also see an entry come clean) and one for the organization."""
    checked_at = report.checked_at.astimezone(UTC).isoformat()
    by_entry: dict[str, list[dict[str, Any]]] = {name: [] for name in entries}
    for finding in report.findings:
        if finding.entry in by_entry:
            by_entry[finding.entry].append(finding.contract_dict())
    events = [
        build_event(
            COMPLIANCE_FINDINGS,
            project_resource(name),
            {"checked_at": checked_at, "count": len(found), "findings": found},
            flow_run_id=flow_run_id,
        )
        for name, found in by_entry.items()
    ]
    counts: dict[str, int] = {}
    for finding in report.findings:
        counts[finding.rule] = counts.get(finding.rule, 0) + 1
    events.append(
        build_event(
            COMPLIANCE_FINDINGS,
            {"prefect.resource.id": ORGANIZATION_RESOURCE},
            {
                "checked_at": checked_at,
                "count": len(report.findings),
                "by_rule": counts,
                "highest_severity": report.highest(),
                "fingerprint": report.fingerprint(),
                "unreadable": [scrub(e) for e in report.errors],
            },
            flow_run_id=flow_run_id,
        )
    )
    return events


def emit_report_events(report: Report, entries: Sequence[str], *, flow_run_id: str | None = None) -> bool:
    try:
        return send(report_events(report, entries, flow_run_id=flow_run_id))
    except Exception as exc:
        logger.debug("compliance events not sent: %s", type(exc).__name__)
        return False


# --- the proactive automation the README shows --------------------------------------------------


def overdue_rotation_automation(block_document_id: uuid.UUID, within: timedelta = timedelta(days=95)) -> Any:
    """An automation that sends a notification (through a Prefect notification block) for each
    entry that had a ``langfuse.key.rotated`` event and no further one ``within`` (95 days)."""
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    span = f"{within.days} days" if within >= timedelta(days=1) else f"{within.total_seconds():g} s"
    return AutomationCore(
        name=OVERDUE_AUTOMATION_NAME,
        description=f"An entry's key was not rotated for {span} (no {ROTATED} event).",
        trigger=EventTrigger(
            after={ROTATED},
            expect={ROTATED},
            match={"prefect.resource.id": f"{RESOURCE_PREFIX}*"},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=within,
        ),
        actions=[
            SendNotification(
                block_document_id=block_document_id,
                subject="Langfuse key of {{ event.resource['langfuse.project'] }} not rotated in " + span,
                body="No langfuse.key.rotated event for {{ event.resource['langfuse.project'] }} since "
                "{{ event.occurred }}: run langfuse-rotate rotate --project {{ event.resource['langfuse.project'] }}.",
            )
        ],
    )
