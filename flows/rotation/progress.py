"""Progress of a running rotation, as it happens: each step's start and end, each consumer poll
round (who switched, time left). Under Prefect the lines go to the run's logs (``get_run_logger``,
so the run's Logs tab tells the story); on the command line they are also printed among the tool's
own lines. Public facts only, scrubbed once more."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from flows.redact import scrub

_logger = logging.getLogger("langfuse_rotate.progress")
_printer: list[Callable[[str], None] | None] = [None]


def print_progress_with(printer: Callable[[str], None] | None) -> None:
    """The command line's human output (None: log only)."""
    _printer[0] = printer


def progress(message: str) -> None:
    line = scrub(message)
    _run_logger().info(line)
    printer = _printer[0]
    if printer is not None:
        printer(f"  .. {line}")


def _run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    if "prefect" not in sys.modules:
        return _logger  # a run without Prefect never loads it
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return _logger


def consumer_round(expected: str) -> Callable[[dict[str, str | None], list[str], float], None]:
    """A poll-round reporter for ``ConsumerClient.wait_for_public_key``."""

    def report(last_seen: dict[str, str | None], pending: list[str], remaining_s: float) -> None:
        switched = [name for name, key in last_seen.items() if key == expected]
        waiting = ", ".join(f"{name} (on {last_seen.get(name)})" for name in pending) or "nobody"
        progress(
            f"wait_for_restarts: {len(switched)}/{len(last_seen)} switched to {expected}"
            f"{' (' + ', '.join(switched) + ')' if switched else ''}; waiting for {waiting}; "
            f"{max(remaining_s, 0):.0f}s left"
        )

    return report
