"""What starts an emergency from outside: the compromise checks, the Prefect automation and the compromise
forwarder.

The public names below are imported from their module on first use (PEP 562): importing the
package loads none of its modules, so a command pays only for what it uses.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flows.trigger.automation import DEFAULT_DEPLOYMENT as DEFAULT_DEPLOYMENT
    from flows.trigger.automation import EMERGENCY_TRIGGER as EMERGENCY_TRIGGER
    from flows.trigger.automation import EVENT as EVENT
    from flows.trigger.automation import PROJECT_LABEL as PROJECT_LABEL
    from flows.trigger.automation import RESOURCE_PREFIX as RESOURCE_PREFIX
    from flows.trigger.automation import RUN_PARAMETERS as RUN_PARAMETERS
    from flows.trigger.automation import compromised_event as compromised_event
    from flows.trigger.checks import EMERGENCY_FLOW as EMERGENCY_FLOW
    from flows.trigger.checks import TAG_CONTAINMENT as TAG_CONTAINMENT
    from flows.trigger.checks import TAG_EVENT as TAG_EVENT
    from flows.trigger.checks import WINDOW as WINDOW
    from flows.trigger.checks import EarlierRun as EarlierRun
    from flows.trigger.checks import RunLedger as RunLedger
    from flows.trigger.checks import check_entry as check_entry
    from flows.trigger.checks import check_key as check_key
    from flows.trigger.checks import emergency_slot as emergency_slot
    from flows.trigger.checks import mark_event_started as mark_event_started
    from flows.trigger.checks import refused_message as refused_message
    from flows.trigger.checks import report_refusal as report_refusal
    from flows.trigger.checks import slot_name as slot_name
    from flows.trigger.forwarder import DEFAULT_MAX_PER_CLIENT as DEFAULT_MAX_PER_CLIENT
    from flows.trigger.forwarder import PrefectTarget as PrefectTarget
    from flows.trigger.forwarder import RateLimit as RateLimit
    from flows.trigger.forwarder import entry_names as entry_names
    from flows.trigger.forwarder import main as main
    from flows.trigger.forwarder import parse_report as parse_report
    from flows.trigger.responder import Handled as Handled
    from flows.trigger.responder import Responder as Responder
    from flows.trigger.responder import serve as serve

_EXPORTS = {
    "DEFAULT_DEPLOYMENT": "automation",
    "EMERGENCY_TRIGGER": "automation",
    "EVENT": "automation",
    "PROJECT_LABEL": "automation",
    "RESOURCE_PREFIX": "automation",
    "RUN_PARAMETERS": "automation",
    "compromised_event": "automation",
    "EMERGENCY_FLOW": "checks",
    "EarlierRun": "checks",
    "RunLedger": "checks",
    "TAG_CONTAINMENT": "checks",
    "TAG_EVENT": "checks",
    "WINDOW": "checks",
    "check_entry": "checks",
    "check_key": "checks",
    "emergency_slot": "checks",
    "mark_event_started": "checks",
    "refused_message": "checks",
    "report_refusal": "checks",
    "slot_name": "checks",
    "DEFAULT_MAX_PER_CLIENT": "forwarder",
    "PrefectTarget": "forwarder",
    "RateLimit": "forwarder",
    "entry_names": "forwarder",
    "main": "forwarder",
    "parse_report": "forwarder",
    "Handled": "responder",
    "Responder": "responder",
    "serve": "responder",
}
"""Each public name and the module that defines it."""

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
