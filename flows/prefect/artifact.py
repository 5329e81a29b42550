"""The markdown summary published as a Prefect artifact (public facts only)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel

from flows.models import DONE_STATUSES, RotationResult
from flows.redact import scrub
from flows.shown import markdown_code, markdown_key, markdown_text, markdown_version


def artifact_key(result: RotationResult) -> str:
    """Artifact keys are lowercase letters, digits and dashes; runs of one entry group together."""
    slug = re.sub(r"[^a-z0-9-]+", "-", result.project.lower()).strip("-")
    return f"langfuse-rotation-{slug}"


def artifact_description(result: RotationResult) -> str:
    """The summary artifact's one-line description."""
    return f"Langfuse key rotation of {result.project}: {result.status}"


def summary_markdown(result: RotationResult) -> str:
    """The run's summary. Everything that did not come from the tool itself (keys, versions,
    details and errors quoting stores, Langfuse or consumers) is shown only as checked and escaped
    (``flows.shown``): it can start no link and leave no code span or table cell."""
    lines = [
        f"# Langfuse key rotation: {result.project} ({result.mode})",  # a configured entry name
        "",
        f"**Status:** `{result.status}`" + (f"  \n**Error:** {markdown_text(result.error)}" if result.error else ""),
        "",
        "| step | outcome | duration (s) | detail |",
        "|---|---|---|---|",
    ]
    for step in result.steps:
        lines.append(f"| {step.step} | {step.outcome} | {step.duration_s:.2f} | {markdown_text(step.detail)} |")
    lines += [
        "",
        "| fact | value |",
        "|---|---|",
        f"| old public key | {markdown_key(result.old_public_key)} |",
        f"| new public key | {markdown_key(result.new_public_key)} |",
        f"| store | {markdown_text(result.store)} {markdown_code(result.store_location)} |",
        f"| store version | {markdown_version(result.store_version)} |",
        f"| verified | {result.verified} |",
        f"| old key rejected | {result.old_key_rejected} |",
        f"| rotation id | {markdown_code(result.rotation_id)} |",
        f"| resumed | {result.resumed} |",
        f"| duration (s) | {result.duration_s:.2f} |",
        "",
        "## Consumers",
        "",
    ]
    if result.consumers:
        lines += ["| consumer | public key seen last | switched |", "|---|---|---|"]
        for name, seen in result.consumers.items():
            switched = "yes" if seen == result.new_public_key else "**no**"
            lines.append(f"| {markdown_text(name)} | {markdown_key(seen)} | {switched} |")
    else:
        lines.append("No consumers listed for this entry.")
    if result.reconciled:
        lines += ["", "## Reconciled", "", *[f"- {markdown_text(action)}" for action in result.reconciled]]
    return scrub("\n".join(lines))


class FinalState(BaseModel):
    """The final state of a run's flow run, in the API's terms (``flows.prefect.flow_run.final_state``
    builds Prefect's state object from it; run records post it as it is)."""

    type: Literal["COMPLETED", "FAILED"]
    name: Literal["Completed", "NeedsAttention", "Refused", "Failed"]
    message: str | None = None


def state_of(result: RotationResult) -> FinalState:
    """The final state a flow run of this result gets: failed runs say which step failed and why
    (no secrets); a run needing attention completes with a name saying so."""
    if result.status in DONE_STATUSES:
        return FinalState(type="COMPLETED", name="Completed")
    message = f"{result.status}: {result.error or 'see the summary artifact'}"
    if result.status == "needs_attention":
        return FinalState(type="COMPLETED", name="NeedsAttention", message=message)
    return FinalState(type="FAILED", name="Failed", message=message)


def refused_state(message: str) -> FinalState:
    """The final state of an event's run that refused to contain (nothing was changed)."""
    return FinalState(type="COMPLETED", name="Refused", message=message)
