"""The fleet summary artifact is written and read back through one model (``flows.fleet.summary``):
a batch's rows come back as the results they were written from, under the columns the artifact shows."""

from __future__ import annotations

import json

from flows.fleet.summary import summary_rows, summary_table
from flows.models import RotationResult

ROTATED = RotationResult(
    status="rotated",
    project="svc-a",
    old_public_key="pk-lf-old",
    new_public_key="pk-lf-new",
    store_version=7,
    duration_s=1.234,
    prefect_flow_run_id="0b5f0c1e-0000-4000-8000-000000000000",
)
FAILED = RotationResult(status="failed", project="svc-b", failed_step="create", error="Langfuse said no")


def test_the_table_has_the_documented_columns() -> None:
    table = summary_table([ROTATED])

    assert list(table[0]) == [
        "entry",
        "status",
        "old public key",
        "new public key",
        "store version",
        "duration (s)",
        "failed step",
        "error",
        "flow run",
    ]
    assert table[0]["store version"] == "7" and table[0]["duration (s)"] == 1.23


def test_rows_read_back_from_the_artifact_give_the_results_written() -> None:
    data = json.dumps(summary_table([ROTATED, FAILED]))  # Prefect may return the table as JSON text

    results = [row.result() for row in summary_rows(data)]

    assert results[0].model_dump(include={"status", "project", "old_public_key", "new_public_key"}) == {
        "status": "rotated",
        "project": "svc-a",
        "old_public_key": "pk-lf-old",
        "new_public_key": "pk-lf-new",
    }
    assert (results[0].store_version, results[0].duration_s) == ("7", 1.23)
    assert results[0].prefect_flow_run_id == ROTATED.prefect_flow_run_id
    assert (results[1].status, results[1].failed_step, results[1].error) == ("failed", "create", "Langfuse said no")
    assert results[1].old_public_key is None and results[1].prefect_flow_run_id is None
