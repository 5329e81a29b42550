"""Everything that talks to Prefect: its REST API, the flow run's record (artifacts, events, hooks), the trust
boundary and who started a run.

The public names below are imported from their module on first use (PEP 562): importing the
package loads none of its modules, so a command pays only for what it uses.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flows.prefect.artifact import FinalState as FinalState
    from flows.prefect.artifact import artifact_description as artifact_description
    from flows.prefect.artifact import artifact_key as artifact_key
    from flows.prefect.artifact import refused_state as refused_state
    from flows.prefect.artifact import state_of as state_of
    from flows.prefect.artifact import summary_markdown as summary_markdown
    from flows.prefect.events import COMPLIANCE_FINDINGS as COMPLIANCE_FINDINGS
    from flows.prefect.events import ORGANIZATION_RESOURCE as ORGANIZATION_RESOURCE
    from flows.prefect.events import emit_report_events as emit_report_events
    from flows.prefect.events import overdue_rotation_automation as overdue_rotation_automation
    from flows.prefect.events import report_events as report_events
    from flows.prefect.flow_run import current_flow_run as current_flow_run
    from flows.prefect.flow_run import emergency_run_name as emergency_run_name
    from flows.prefect.flow_run import final_state as final_state
    from flows.prefect.flow_run import pause_for_approval as pause_for_approval
    from flows.prefect.flow_run import prefect_state as prefect_state
    from flows.prefect.flow_run import publish_summary as publish_summary
    from flows.prefect.flow_run import reconcile_run_name as reconcile_run_name
    from flows.prefect.flow_run import rotate_run_name as rotate_run_name
    from flows.prefect.flow_run import run_name as run_name
    from flows.prefect.flow_run import tag_flow_run as tag_flow_run
    from flows.prefect.hooks import notify_unhandled_failure as notify_unhandled_failure
    from flows.prefect.initiator import flow_run_audit as flow_run_audit
    from flows.prefect.initiator import prefect_initiator as prefect_initiator
    from flows.prefect.recorded import emergency_recorded as emergency_recorded
    from flows.prefect.rest import embedded_server_notice as embedded_server_notice
    from flows.prefect.rest import first_start_of_embedded_server as first_start_of_embedded_server
    from flows.prefect.trust import ALLOW_CONFIG_PATH_ENV_VAR as ALLOW_CONFIG_PATH_ENV_VAR
    from flows.prefect.trust import allowed_config_path as allowed_config_path
    from flows.prefect.trust import config_path_for_hook as config_path_for_hook
    from flows.prefect.trust import overridden_job_variables as overridden_job_variables
    from flows.prefect.trust import trusted_config_path as trusted_config_path

_EXPORTS = {
    "FinalState": "artifact",
    "artifact_description": "artifact",
    "artifact_key": "artifact",
    "refused_state": "artifact",
    "state_of": "artifact",
    "summary_markdown": "artifact",
    "COMPLIANCE_FINDINGS": "events",
    "ORGANIZATION_RESOURCE": "events",
    "emit_report_events": "events",
    "overdue_rotation_automation": "events",
    "report_events": "events",
    "current_flow_run": "flow_run",
    "emergency_run_name": "flow_run",
    "final_state": "flow_run",
    "pause_for_approval": "flow_run",
    "prefect_state": "flow_run",
    "publish_summary": "flow_run",
    "reconcile_run_name": "flow_run",
    "rotate_run_name": "flow_run",
    "run_name": "flow_run",
    "tag_flow_run": "flow_run",
    "notify_unhandled_failure": "hooks",
    "flow_run_audit": "initiator",
    "prefect_initiator": "initiator",
    "emergency_recorded": "recorded",
    "embedded_server_notice": "rest",
    "first_start_of_embedded_server": "rest",
    "ALLOW_CONFIG_PATH_ENV_VAR": "trust",
    "allowed_config_path": "trust",
    "config_path_for_hook": "trust",
    "overridden_job_variables": "trust",
    "trusted_config_path": "trust",
}
"""Each public name and the module that defines it."""

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
