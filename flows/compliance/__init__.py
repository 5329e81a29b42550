"""The compliance report and the read-only key inventory behind ``status`` and ``report``.

The public names below are imported from their module on first use (PEP 562): importing the
package loads none of its modules, so a command pays only for what it uses.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flows.compliance.inventory import MAX_WORKERS as MAX_WORKERS
    from flows.compliance.inventory import Connections as Connections
    from flows.compliance.inventory import EntryStatus as EntryStatus
    from flows.compliance.inventory import Inventory as Inventory
    from flows.compliance.inventory import collect_inventory as collect_inventory
    from flows.compliance.inventory import parallel as parallel
    from flows.compliance.inventory import problem_lines as problem_lines
    from flows.compliance.inventory import status_lines as status_lines
    from flows.compliance.report import Finding as Finding
    from flows.compliance.report import Report as Report
    from flows.compliance.report import collect_report as collect_report
    from flows.compliance.report import report_lines as report_lines
    from flows.compliance.report import report_markdown as report_markdown
    from flows.compliance.report import report_table as report_table

_EXPORTS = {
    "Connections": "inventory",
    "EntryStatus": "inventory",
    "Inventory": "inventory",
    "MAX_WORKERS": "inventory",
    "collect_inventory": "inventory",
    "parallel": "inventory",
    "problem_lines": "inventory",
    "status_lines": "inventory",
    "Finding": "report",
    "Report": "report",
    "collect_report": "report",
    "report_lines": "report",
    "report_markdown": "report",
    "report_table": "report",
}
"""Each public name and the module that defines it."""

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
