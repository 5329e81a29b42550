"""``langfuse-rotate rotate --all``: the fleet run from the command line (docs/fleet.md)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from flows.cli.output import keys_line

if TYPE_CHECKING:  # the parser imports this module: nothing heavy at import time
    from flows.fleet.run import FleetResult


def concurrency_arg(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if not 1 <= number <= 512:
        raise argparse.ArgumentTypeError("must be between 1 and 512")
    return number


def rotate_all_command(
    args: argparse.Namespace, prog: str, *, say: Callable[[str], None] = print, emit_json: Callable[[str], None] = print
) -> int:
    from flows.config.model import load_config, resolve_config_path
    from flows.fleet.run import ProgressSink, run_fleet, terminal_progress_sink

    given = resolve_config_path(args.config)
    config = load_config(given)  # errors name the path as given
    path = str(given.resolve())
    sinks: list[ProgressSink] = [terminal_progress_sink()] if sys.stderr.isatty() else []
    if args.dry_run:
        result = run_fleet(config, config_path=path, concurrency=args.concurrency, dry_run=True, progress_sinks=sinks)
    else:
        from flows.cli.output import say_if_embedded

        say_if_embedded(say)
        result = _under_prefect(path, args.concurrency, show_progress=bool(sinks))
    _write_request_counts()
    print_fleet(result, prog, say)
    if args.json:
        emit_json(result.to_json_line())
    return int(result.exit_code)


def bad_input_json(message: str, duration_s: float) -> str:
    """``--json`` of ``rotate --all`` when nothing could start (exit 2): the fleet object, no entries."""
    from flows.fleet.run import FleetResult

    return FleetResult(
        status="failed", total=0, counts={}, entries=[], duration_s=duration_s, error=message
    ).to_json_line()


def _write_request_counts() -> None:
    """For ``benchmarks/fleet.py``: the requests this process made, by connector (no secrets)."""
    import json
    import os

    target = os.environ.get("LANGFUSE_ROTATE_REQUEST_COUNTS")
    if target:
        from connectors import pacing

        with open(target, "w") as file:
            json.dump(dict(pacing.requests), file)


def _under_prefect(path: str, concurrency: int | None, *, show_progress: bool) -> FleetResult:
    from prefect.client.schemas.objects import State

    from flows.errors import BadInputError, ConfigError
    from flows.fleet.run import FleetResult
    from flows.redact import scrub
    from flows.rotate import rotate_all

    started = time.monotonic()
    state = rotate_all(config_path=path, concurrency=concurrency, show_progress=show_progress, return_state=True)
    assert isinstance(state, State)
    data = state.result(raise_on_failure=False)
    if isinstance(data, FleetResult):
        return data
    if isinstance(data, ConfigError | BadInputError):
        raise data
    message = scrub(" ".join(str(data).split())) if data is not None else (state.message or state.name)
    return FleetResult(
        status="failed",
        total=0,
        counts={},
        entries=[],
        duration_s=round(time.monotonic() - started, 3),
        prefect_flow_run_id=str(state.state_details.flow_run_id or "") or None,
        error=message or "the fleet run failed",
    )


def print_fleet(result: FleetResult, prog: str, say: Callable[[str], None] = print) -> None:
    if result.template is not None:
        say("project_template expands to:")
        for row in result.template:
            target = f"entry {row['entry']}" if row["entry"] else f"no entry: {row['problem']}"
            say(f"  {row['project']:<32} {row['project_id']:<28} {target}")
    for entry in result.entries:
        last = entry.steps[-1].detail if entry.steps else ""
        detail = entry.error or (last if entry.status == "skipped" else "")
        if entry.status == "planned":
            detail = keys_line(entry)
        keys = f"{entry.old_public_key} -> {entry.new_public_key}" if entry.new_public_key else ""
        say(f"  {entry.project:<32} {entry.status:<16} {entry.duration_s:7.2f}s  {keys or detail}")
        if entry.status == "planned" and last:
            say(f"  {'':<32} plan: {last}")
    counts = ", ".join(f"{n} {status}" for status, n in result.counts.items()) or "no entries"
    status = "nothing to rotate" if result.nothing_to_rotate else result.status
    say(f"{prog} rotate --all: {status}: {counts} in {result.duration_s:.2f}s")
    if result.error:
        say(f"  error: {result.error}")
