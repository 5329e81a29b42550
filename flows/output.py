"""How a run's result is shown: the human summary every command prints, and the result of a
rotation or emergency that ran as a Prefect flow run (used by the command line and the demo)."""

from __future__ import annotations

import sys
from typing import TextIO

from flows.models import RotationResult
from flows.redact import scrub

PROG = "langfuse-rotate"


def result_from_state(state: object, project: str) -> RotationResult:
    """A Prefect flow run's final state as the run's result (a failed run without one: a failed
    result naming the error). Bad input found inside the run is raised, as without Prefect."""
    from prefect.client.schemas.objects import State

    assert isinstance(state, State)
    data = state.result(raise_on_failure=False)
    if isinstance(data, RotationResult):
        return data
    from flows.errors import BadInputError, ConfigError

    if isinstance(data, ConfigError | BadInputError):
        raise data  # bad input found inside the flow run: exit code 2, as without Prefect
    message = scrub(" ".join(str(data).split())) if data is not None else (state.message or state.name)
    return RotationResult(
        status="failed",
        project=project,
        error=message or "the flow run failed",
        prefect_flow_run_id=str(state.state_details.flow_run_id or "") or None,
    )


def print_result(
    result: RotationResult, *, as_json: bool = False, command: str | None = None, file: TextIO | None = None
) -> None:
    """The human summary (``as_json`` also prints the JSON object, last, on stdout)."""
    out = file or sys.stdout
    name = command or ("emergency" if result.mode == "emergency" else "rotate")
    print(
        f"{PROG} {name} {result.project}: {result.status} in {result.duration_s:.2f}s"
        + (" (without Prefect)" if result.orchestrator == "none" else ""),
        file=out,
    )
    for step in result.steps:
        print(f"  {step.step:<18} {step.outcome:<12} {step.duration_s:7.2f}s  {step.detail}", file=out)
    if result.old_public_key or result.new_public_key:
        print(
            f"  old {result.old_public_key} -> new {result.new_public_key}; "
            f"store {result.store} {result.store_location} version {result.store_version}",
            file=out,
        )
    if result.lagging_consumers:
        print(f"  still on the old key: {', '.join(result.lagging_consumers)}", file=out)
    if result.error:
        print(f"  error: {result.error}", file=out)
    if as_json:
        print(result.to_json_line())
