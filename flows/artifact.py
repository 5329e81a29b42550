"""The markdown summary published as a Prefect artifact (public facts only)."""

from __future__ import annotations

import re

from flows.models import RotationResult
from flows.redact import scrub


def artifact_key(result: RotationResult) -> str:
    """Artifact keys are lowercase letters, digits and dashes; runs of one entry group together."""
    slug = re.sub(r"[^a-z0-9-]+", "-", result.project.lower()).strip("-")
    return f"langfuse-rotation-{slug}"


def summary_markdown(result: RotationResult) -> str:
    lines = [
        f"# Langfuse key rotation: {result.project} ({result.mode})",
        "",
        f"**Status:** `{result.status}`" + (f"  \n**Error:** {result.error}" if result.error else ""),
        "",
        "| step | outcome | duration (s) | detail |",
        "|---|---|---|---|",
    ]
    for step in result.steps:
        detail = step.detail.replace("|", "\\|")
        lines.append(f"| {step.step} | {step.outcome} | {step.duration_s:.2f} | {detail} |")
    lines += [
        "",
        "| fact | value |",
        "|---|---|",
        f"| old public key | `{result.old_public_key}` |",
        f"| new public key | `{result.new_public_key}` |",
        f"| store | {result.store} `{result.store_location}` |",
        f"| store version | `{result.store_version}` |",
        f"| verified | {result.verified} |",
        f"| old key rejected | {result.old_key_rejected} |",
        f"| rotation id | `{result.rotation_id}` |",
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
            lines.append(f"| {name} | `{seen}` | {switched} |")
    else:
        lines.append("No consumers listed for this entry.")
    if result.reconciled:
        lines += ["", "## Reconciled", "", *[f"- {action}" for action in result.reconciled]]
    return scrub("\n".join(lines))
