"""How a run's result is shown: the human summary every command prints, and the result of a
rotation or emergency that ran as a Prefect flow run (used by the command line and the demo)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from flows.models import RotationResult
from flows.redact import scrub

PROG = "langfuse-rotate"


def say_if_embedded(say: Callable[[str], None]) -> None:
    """Before Prefect's embedded server starts: say so (its start is seconds of silence otherwise,
    20 s or more the first time, while it migrates its database)."""
    from flows.prefect.rest import embedded_server_notice

    notice = embedded_server_notice()
    if notice:
        say(f"{PROG}: {notice}")


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
        where = f"store {result.store} {result.store_location} version {result.store_version}"
        print(f"  {keys_line(result)}; {where}", file=out)
    if result.lagging_consumers:
        print(f"  still on the old key: {', '.join(result.lagging_consumers)}", file=out)
    if result.silent_consumers:
        silent = ", ".join(f"{name} (last trace {at})" for name, at in result.silent_consumers.items())
        print(f"  silent since the revoke: {silent}", file=out)
    if result.error:
        print(f"  error: {result.error}", file=out)
    if as_json:
        print(result.to_json_line())


def keys_line(result: RotationResult) -> str:
    """The keys of a run: ``old pk -> new pk``, or the current key when no new pair exists (a dry run
    makes none: the rotation creates it)."""
    if result.new_public_key:
        return f"old {result.old_public_key} -> new {result.new_public_key}"
    if result.status == "planned":
        return f"current {result.old_public_key} (the rotation creates the new pair)"
    return f"current {result.old_public_key}, no new pair"
