"""How a run of an entry is named and tagged in Prefect: built here once, for the flows, the
fleet's per-entry records, the recorded emergency and the responder alike, and read back by the
emergency checks (``flows.rotation.handover``, ``flows.trigger.checks``). Prefect-free: names and
tags are plain strings (README "Prefect runs" shows them)."""

from __future__ import annotations

from datetime import UTC, datetime

TOOL_TAG = "langfuse-key-rotation"
"""The tag every run of this tool carries."""


def run_name(prefix: str, project: str, now: datetime | None = None) -> str:
    """``<prefix>-<project>-<YYYYMMDD-HHMM>`` (UTC); the project is a name, never a secret."""
    return f"{prefix}-{project}-{now or datetime.now(UTC):%Y%m%d-%H%M}"


def project_tag(project: str) -> str:
    """``project:<entry>``: the runs of one entry."""
    return f"project:{project}"


def mode_tag(mode: str) -> str:
    """``mode:scheduled`` or ``mode:emergency``."""
    return f"mode:{mode}"


def run_tags(project: str, *, mode: str, store: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The tags of a run of ``project``, sorted: the tool, project, mode and store (so runs can
    be filtered in the UI), plus ``extra`` (e.g. ``fleet:<fleet run id>``)."""
    return sorted({TOOL_TAG, project_tag(project), mode_tag(mode), f"store:{store}", *extra})
