"""Fleet rotation (``rotate --all``): every entry concurrently, paced, in batches, with or without Prefect.

The public names below are imported from their module on first use (PEP 562): importing the
package loads none of its modules, so a command pays only for what it uses.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flows.fleet.batches import run_in_batches as run_in_batches
    from flows.fleet.group_lease import GroupLeases as GroupLeases
    from flows.fleet.group_lease import group_size as group_size
    from flows.fleet.pacing import Pacer as Pacer
    from flows.fleet.pacing import SharedBudget as SharedBudget
    from flows.fleet.pacing import fleet_pacing as fleet_pacing
    from flows.fleet.prefect_run import run_fleet_flow as run_fleet_flow
    from flows.fleet.run import ApprovalRunner as ApprovalRunner
    from flows.fleet.run import FleetProgress as FleetProgress
    from flows.fleet.run import FleetResult as FleetResult
    from flows.fleet.run import ProgressSink as ProgressSink
    from flows.fleet.run import counts_of as counts_of
    from flows.fleet.run import fleet_exit_code as fleet_exit_code
    from flows.fleet.run import fleet_status as fleet_status
    from flows.fleet.run import refused_results as refused_results
    from flows.fleet.run import run_fleet as run_fleet
    from flows.fleet.run import send_summary as send_summary
    from flows.fleet.run import terminal_progress_sink as terminal_progress_sink
    from flows.fleet.summary import SUMMARY_KEY as SUMMARY_KEY
    from flows.fleet.summary import summary_rows as summary_rows
    from flows.fleet.summary import summary_table as summary_table

_EXPORTS = {
    "run_in_batches": "batches",
    "GroupLeases": "group_lease",
    "group_size": "group_lease",
    "Pacer": "pacing",
    "SharedBudget": "pacing",
    "fleet_pacing": "pacing",
    "run_fleet_flow": "prefect_run",
    "ApprovalRunner": "run",
    "FleetProgress": "run",
    "FleetResult": "run",
    "ProgressSink": "run",
    "counts_of": "run",
    "fleet_exit_code": "run",
    "fleet_status": "run",
    "refused_results": "run",
    "run_fleet": "run",
    "send_summary": "run",
    "terminal_progress_sink": "run",
    "SUMMARY_KEY": "summary",
    "summary_rows": "summary",
    "summary_table": "summary",
}
"""Each public name and the module that defines it."""

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
