"""The fleet summary artifact (``langfuse-fleet-summary``, one row per entry): written by a fleet
run (``flows.fleet.prefect_run``) and read back from its batches (``flows.fleet.batches``) through
the one model here, so its columns are spelled once (docs/fleet.md shows them)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from flows.models import RotationResult, Status

SUMMARY_KEY = "langfuse-fleet-summary"
"""The fleet summary artifact's key: written by a fleet run, read back from its batches."""


class SummaryRow(BaseModel):
    """One entry's row: public facts only, blanks for what the entry has not."""

    model_config = ConfigDict(populate_by_name=True)

    entry: str
    status: Status
    old_public_key: str = Field("", alias="old public key")
    new_public_key: str = Field("", alias="new public key")
    store_version: str = Field("", alias="store version")
    duration_s: float = Field(0.0, alias="duration (s)")
    failed_step: str = Field("", alias="failed step")
    error: str = ""
    flow_run: str = Field("", alias="flow run")

    @classmethod
    def of(cls, result: RotationResult) -> SummaryRow:
        return cls(
            entry=result.project,
            status=result.status,
            old_public_key=result.old_public_key or "",
            new_public_key=result.new_public_key or "",
            store_version="" if result.store_version is None else str(result.store_version),
            duration_s=round(result.duration_s, 2),
            failed_step=result.failed_step or "",
            error=result.error or "",
            flow_run=result.prefect_flow_run_id or "",
        )

    def result(self) -> RotationResult:
        """The entry's result as far as the row records it."""
        return RotationResult(
            status=self.status,
            project=self.entry,
            old_public_key=self.old_public_key or None,
            new_public_key=self.new_public_key or None,
            store_version=self.store_version or None,
            duration_s=self.duration_s,
            failed_step=self.failed_step or None,
            error=self.error or None,
            prefect_flow_run_id=self.flow_run or None,
        )


def summary_table(results: Iterable[RotationResult]) -> list[dict[str, Any]]:
    """The artifact's table: a row per result, its columns named as the artifact shows them."""
    return [SummaryRow.of(result).model_dump(by_alias=True) for result in results]


def summary_rows(data: Any) -> list[SummaryRow]:
    """The rows of an artifact's ``data`` as Prefect returns it (the table, or its JSON text)."""
    parsed: Any = json.loads(data) if isinstance(data, str) else data
    return [SummaryRow.model_validate(row) for row in parsed or []]
