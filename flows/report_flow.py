"""The daily compliance report as a Prefect flow (deployment ``compliance``).

Publishes the report as a markdown artifact (``langfuse-compliance-report``) and a table artifact
(``langfuse-compliance-findings``), emits ``langfuse.compliance.findings`` events, and notifies
only when the set of findings changed since the last complete report (a finding appeared or went
away; an age ticking on is no change). The last set is kept in a Prefect variable. A report with a
``high`` finding is sent as kind ``failure`` (apprise tag ``failure``); other changes as ``info``,
all findings resolved as ``success``. A report that could not read everything fails the run
(the failure hook notifies) and leaves the kept set alone; a cancelled or crashed run notifies too.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Failed
from prefect.variables import Variable

from connectors.notify import Notification, Notifier
from flows.compliance.report import Report, collect_report, report_markdown, report_table
from flows.config.model import RotationConfig, load_config
from flows.prefect.events import emit_report_events
from flows.prefect.flow_run import current_flow_run, run_name
from flows.prefect.hooks import notify_unhandled_failure
from flows.prefect.trust import trusted_config_path
from flows.redact import install_redaction, scrub
from flows.shown import single_line

MARKDOWN_KEY = "langfuse-compliance-report"
TABLE_KEY = "langfuse-compliance-findings"
STATE_VARIABLE = "langfuse_compliance_last_findings"
_MAX_KEPT_CHARS = 4500  # Prefect variables hold up to 5000 characters


def _compliance_run_name() -> str:
    return run_name("compliance")


@flow(
    name="langfuse-compliance-report",
    flow_run_name=_compliance_run_name,
    persist_result=False,
    log_prints=False,
    on_failure=[notify_unhandled_failure],
    on_crashed=[notify_unhandled_failure],
    on_cancellation=[notify_unhandled_failure],
)
def compliance_report(config_path: str | None = None, state_variable: str = STATE_VARIABLE) -> Any:
    """Run the compliance report over every configured entry and the organization."""
    install_redaction()
    config_path = trusted_config_path("compliance", None, config_path)
    flow_run_id, _ = current_flow_run()
    config = load_config(config_path)
    report = collect_report(config)
    _publish_report(report)
    emit_report_events(report, [e.name for e in config.projects], flow_run_id=flow_run_id)
    if report.errors:
        return Failed(message=scrub("compliance report incomplete: could not read " + "; ".join(report.errors)))
    previous = Variable.get(state_variable, default=None)
    notification = change_notification(report, previous if isinstance(previous, dict) else None)
    if notification is not None:
        _notifier(config).send(notification)
    Variable.set(state_variable, kept_state(report), overwrite=True)
    return {"findings": len(report.findings), "highest": report.highest(), "notified": notification is not None}


def _publish_report(report: Report) -> None:
    counts = report.summary()
    create_markdown_artifact(key=MARKDOWN_KEY, markdown=report_markdown(report), description=f"Compliance: {counts}")
    rows = report_table(report) or [
        {"rule": "none", "severity": "", "entry": None, "project": None, "public_key": None, "detail": counts}
    ]
    create_table_artifact(key=TABLE_KEY, table=rows, description=f"Compliance findings: {counts}")


def kept_state(report: Report) -> dict[str, Any]:
    """What the next run compares against: the fingerprint, and the findings' identities if they fit."""
    identities = sorted({f.identity() for f in report.findings})
    if sum(len(i) + 4 for i in identities) > _MAX_KEPT_CHARS:
        identities = []
    return {"fingerprint": report.fingerprint(), "count": len(report.findings), "identities": identities}


def change_notification(report: Report, previous: dict[str, Any] | None) -> Notification | None:
    """The notification for this report, or None when nothing changed (or a first clean report)."""
    if previous is None and not report.findings:
        return None
    if previous is not None and previous.get("fingerprint") == report.fingerprint():
        return None
    current = {f.identity() for f in report.findings}
    before = set(previous.get("identities") or []) if previous else set()
    new = [f for f in report.findings if f.identity() not in before] if before else list(report.findings)
    resolved = sorted(before - current)
    if not report.findings:
        return Notification(
            title="Langfuse compliance: all findings resolved",
            body=scrub("No findings any more.\n" + "\n".join(f"resolved: {_readable(i)}" for i in resolved)),
            kind="success",
        )
    lines = [f"{len(report.findings)} finding(s); {len(new)} new, {len(resolved)} resolved since the last report", ""]
    for f in report.findings:
        mark = "NEW " if f in new else ""
        where = f.entry or (f"project {single_line(f.project)}" if f.project else "organization")
        lines.append(f"{mark}{f.severity} {f.rule} {where}: {single_line(f.detail)}")
    lines += [f"resolved: {_readable(i)}" for i in resolved]
    highest = report.highest()
    return Notification(
        title=f"Langfuse compliance: {len(report.findings)} finding(s), highest {highest}",
        body=scrub("\n".join(lines)),
        kind="failure" if highest == "high" else "info",
    )


def _readable(identity: str) -> str:
    rule, severity, entry, project, public_key, subject = (identity.split("|") + [""] * 6)[:6]
    return " ".join(part for part in (severity, rule, entry or project, public_key, subject) if part)


def _notifier(config: RotationConfig) -> Notifier:
    return Notifier(config.notify.targets())
