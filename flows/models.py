"""Public (secret-free) records of a rotation: the plan, each step's outcome, and the result.

Everything here may be logged, returned from tasks, put in artifacts, notifications and the
audit log: it holds public keys, key ids, store versions and timings, never a secret.
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import IntEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from connectors.store import StoreVersion

Mode = Literal["scheduled", "emergency"]
Status = Literal[
    "rotated",
    "contained",
    "planned",
    "reconciled",
    "rolled_back",
    "failed",
    "in_progress",
    "needs_attention",
    "skipped",  # a fleet run's entry rotated within fleet.skip_if_rotated_within, or a project the template refused
]


class ExitCode(IntEnum):
    """The command line's exit codes (docs/command-line.md)."""

    OK = 0
    FAILED = 1
    BAD_INPUT = 2
    IN_PROGRESS = 3
    NEEDS_ATTENTION = 4


STATUS_EXIT: dict[str, ExitCode] = {
    "rotated": ExitCode.OK,
    "contained": ExitCode.OK,
    "planned": ExitCode.OK,
    "reconciled": ExitCode.OK,
    "rolled_back": ExitCode.FAILED,
    "failed": ExitCode.FAILED,
    "in_progress": ExitCode.IN_PROGRESS,
    "needs_attention": ExitCode.NEEDS_ATTENTION,
    "skipped": ExitCode.OK,
}

OK_STATUSES = frozenset(status for status, code in STATUS_EXIT.items() if code is ExitCode.OK)
"""Statuses that exit 0 (a skipped entry among them): derived from ``STATUS_EXIT``."""

DONE_STATUSES = OK_STATUSES - {"skipped"}
"""A run that did what it was asked (a skipped entry did nothing): derived from ``STATUS_EXIT``."""


class RotationPlan(BaseModel):
    """What one run will do (or resume), decided before any change."""

    model_config = ConfigDict(frozen=True)

    rotation_id: str
    entry: str
    project_id: str
    mode: Mode
    store_name: str
    store_location: str
    old_public_key: str | None
    old_version: StoreVersion | None
    new_public_key: str | None = None
    resumed: bool = False
    resumed_mode: Mode | None = None
    """The staged record's mode of the rotation this run resumes (``emergency`` also for one an
    emergency took over); None for a new rotation."""
    consumers: list[str] = []
    note: str = ""


class StepRecord(BaseModel):
    """One row of the run's step table."""

    step: str
    outcome: Literal["done", "skipped", "already_done", "failed", "rolled_back", "attention"]
    duration_s: float
    detail: str = ""


class RotationResult(BaseModel):
    """The run's outcome; ``to_json_line`` is the contract's ``--json`` object."""

    status: Status
    project: str
    mode: Mode = "scheduled"
    old_public_key: str | None = None
    new_public_key: str | None = None
    store: str | None = None
    store_location: str | None = None
    store_version: StoreVersion | None = None
    verified: bool = False
    old_key_rejected: bool | None = None
    consumers: dict[str, str | None] = {}
    lagging_consumers: list[str] = []
    silent_consumers: dict[str, str] = {}
    """After the revoke: consumers with ``traces`` that sent before it and not since, each with the
    time of its last trace (docs/trace-evidence.md); ``unknown`` where its traces could not be read."""
    duration_s: float = 0.0
    prefect_flow_run_id: str | None = None
    orchestrator: Literal["prefect", "none"] = "prefect"
    rotation_id: str | None = None
    resumed: bool = False
    error: str | None = None
    failed_step: str | None = None
    steps: list[StepRecord] = []
    reconciled: list[str] = Field(default_factory=list)
    started_at: datetime | None = None

    @property
    def exit_code(self) -> ExitCode:
        return STATUS_EXIT[self.status]

    def contract_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["steps"] = [s.model_dump(mode="json") for s in self.steps]
        return data

    def to_json_line(self) -> str:
        return json.dumps(self.contract_dict(), sort_keys=False)
