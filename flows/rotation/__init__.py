"""The rotation itself: the steps, the checklists that order them, the plan, the run context, the step runners
and table, the lock and the emergency handover, crash points, dry runs, notifications and the run's event.

The public names below are imported from their module on first use (PEP 562): importing the
package loads none of its modules, so a command pays only for what it uses.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flows.rotation.canary_timing import MIN_GAP_S as MIN_GAP_S
    from flows.rotation.canary_timing import CanaryTiming as CanaryTiming
    from flows.rotation.canary_timing import installed as installed
    from flows.rotation.canary_timing import timing_for as timing_for
    from flows.rotation.checklists import ApprovalDecision as ApprovalDecision
    from flows.rotation.checklists import Approver as Approver
    from flows.rotation.checklists import HandoverProbe as HandoverProbe
    from flows.rotation.checklists import run_emergency as run_emergency
    from flows.rotation.checklists import run_reconcile as run_reconcile
    from flows.rotation.checklists import run_scheduled as run_scheduled
    from flows.rotation.context import EntryContext as EntryContext
    from flows.rotation.context import shared_stores as shared_stores
    from flows.rotation.contract import contract_of as contract_of
    from flows.rotation.contract import step as step
    from flows.rotation.crashpoints import CRASH_ENV_VAR as CRASH_ENV_VAR
    from flows.rotation.crashpoints import POINTS as POINTS
    from flows.rotation.crashpoints import crash_point as crash_point
    from flows.rotation.dryrun import dry_run as dry_run
    from flows.rotation.entry_run import execute as execute
    from flows.rotation.events import CONTAINED as CONTAINED
    from flows.rotation.events import RESOURCE_PREFIX as RESOURCE_PREFIX
    from flows.rotation.events import ROTATED as ROTATED
    from flows.rotation.events import ROTATION_FAILED as ROTATION_FAILED
    from flows.rotation.events import batched as batched
    from flows.rotation.events import build_event as build_event
    from flows.rotation.events import emit_rotation_event as emit_rotation_event
    from flows.rotation.events import project_resource as project_resource
    from flows.rotation.events import rotation_event as rotation_event
    from flows.rotation.events import send as send
    from flows.rotation.handover import POLL_S as POLL_S
    from flows.rotation.handover import HandoverRequester as HandoverRequester
    from flows.rotation.handover import HandoverWatch as HandoverWatch
    from flows.rotation.handover import PrefectRunCheck as PrefectRunCheck
    from flows.rotation.handover import requester_name as requester_name
    from flows.rotation.lock import LOCK_DIR_ENV_VAR as LOCK_DIR_ENV_VAR
    from flows.rotation.lock import GroupFile as GroupFile
    from flows.rotation.lock import SharedSlots as SharedSlots
    from flows.rotation.lock import entry_lock as entry_lock
    from flows.rotation.lock import held_lease as held_lease
    from flows.rotation.lock import local_lock as local_lock
    from flows.rotation.lock import lock_name as lock_name
    from flows.rotation.lock import prefect_api as prefect_api
    from flows.rotation.lock import prefect_api_from_settings as prefect_api_from_settings
    from flows.rotation.lock import prefect_server_configured as prefect_server_configured
    from flows.rotation.lock import release_dead_groups as release_dead_groups
    from flows.rotation.lock import shared_slots as shared_slots
    from flows.rotation.notification import flow_run_ui_url as flow_run_ui_url
    from flows.rotation.notification import held_for_summary as held_for_summary
    from flows.rotation.notification import notification_for as notification_for
    from flows.rotation.notification import notified_run as notified_run
    from flows.rotation.notification import notify as notify
    from flows.rotation.notification import send_to as send_to
    from flows.rotation.notification import targets_for as targets_for
    from flows.rotation.plan import check_compromised_key as check_compromised_key
    from flows.rotation.plan import entry_state as entry_state
    from flows.rotation.plan import past_revocation as past_revocation
    from flows.rotation.plan import plan_rotation as plan_rotation
    from flows.rotation.plan import staged_mode as staged_mode
    from flows.rotation.progress import consumer_round as consumer_round
    from flows.rotation.progress import print_progress_with as print_progress_with
    from flows.rotation.run_names import mode_tag as mode_tag
    from flows.rotation.run_names import project_tag as project_tag
    from flows.rotation.run_names import run_name as run_name
    from flows.rotation.run_names import run_tags as run_tags
    from flows.rotation.runners import DirectRunner as DirectRunner
    from flows.rotation.runners import PrefectRunner as PrefectRunner
    from flows.rotation.runners import StepRunner as StepRunner
    from flows.rotation.runners import retryable as retryable
    from flows.rotation.step_table import RunTracker as RunTracker
    from flows.rotation.step_table import one_line as one_line
    from flows.rotation.steps import ConsumerOutcome as ConsumerOutcome
    from flows.rotation.steps import connector_failure as connector_failure
    from flows.rotation.steps import create as create
    from flows.rotation.steps import finish as finish
    from flows.rotation.steps import key_note as key_note
    from flows.rotation.steps import parse_note as parse_note
    from flows.rotation.steps import recheck_revoked as recheck_revoked
    from flows.rotation.steps import reconcile as reconcile
    from flows.rotation.steps import revoke as revoke
    from flows.rotation.steps import rollback as rollback
    from flows.rotation.steps import store as store
    from flows.rotation.steps import take_over as take_over
    from flows.rotation.steps import verify as verify
    from flows.rotation.steps import wait_for_restarts as wait_for_restarts
    from flows.rotation.trace_evidence import AfterRevokeOutcome as AfterRevokeOutcome
    from flows.rotation.trace_evidence import IngestionVerdict as IngestionVerdict
    from flows.rotation.trace_evidence import TraceVerdict as TraceVerdict
    from flows.rotation.trace_evidence import TraceWait as TraceWait
    from flows.rotation.trace_evidence import TraceWatch as TraceWatch
    from flows.rotation.trace_evidence import trace_watches as trace_watches
    from flows.rotation.trace_steps import TRACE_CLOCK_SKEW_S as TRACE_CLOCK_SKEW_S
    from flows.rotation.trace_steps import check_ingestion as check_ingestion
    from flows.rotation.trace_steps import trace_evidence_wait as trace_evidence_wait

_EXPORTS = {
    "CanaryTiming": "canary_timing",
    "MIN_GAP_S": "canary_timing",
    "installed": "canary_timing",
    "timing_for": "canary_timing",
    "ApprovalDecision": "checklists",
    "Approver": "checklists",
    "HandoverProbe": "checklists",
    "run_emergency": "checklists",
    "run_reconcile": "checklists",
    "run_scheduled": "checklists",
    "EntryContext": "context",
    "shared_stores": "context",
    "contract_of": "contract",
    "step": "contract",
    "CRASH_ENV_VAR": "crashpoints",
    "POINTS": "crashpoints",
    "crash_point": "crashpoints",
    "dry_run": "dryrun",
    "execute": "entry_run",
    "CONTAINED": "events",
    "RESOURCE_PREFIX": "events",
    "ROTATED": "events",
    "ROTATION_FAILED": "events",
    "batched": "events",
    "build_event": "events",
    "emit_rotation_event": "events",
    "project_resource": "events",
    "rotation_event": "events",
    "send": "events",
    "HandoverRequester": "handover",
    "HandoverWatch": "handover",
    "POLL_S": "handover",
    "PrefectRunCheck": "handover",
    "requester_name": "handover",
    "LOCK_DIR_ENV_VAR": "lock",
    "GroupFile": "lock",
    "SharedSlots": "lock",
    "entry_lock": "lock",
    "held_lease": "lock",
    "local_lock": "lock",
    "lock_name": "lock",
    "prefect_api": "lock",
    "prefect_api_from_settings": "lock",
    "prefect_server_configured": "lock",
    "release_dead_groups": "lock",
    "shared_slots": "lock",
    "flow_run_ui_url": "notification",
    "held_for_summary": "notification",
    "notification_for": "notification",
    "notified_run": "notification",
    "notify": "notification",
    "send_to": "notification",
    "targets_for": "notification",
    "check_compromised_key": "plan",
    "entry_state": "plan",
    "past_revocation": "plan",
    "plan_rotation": "plan",
    "staged_mode": "plan",
    "consumer_round": "progress",
    "print_progress_with": "progress",
    "mode_tag": "run_names",
    "project_tag": "run_names",
    "run_name": "run_names",
    "run_tags": "run_names",
    "DirectRunner": "runners",
    "PrefectRunner": "runners",
    "StepRunner": "runners",
    "retryable": "runners",
    "RunTracker": "step_table",
    "one_line": "step_table",
    "ConsumerOutcome": "steps",
    "connector_failure": "steps",
    "create": "steps",
    "finish": "steps",
    "key_note": "steps",
    "parse_note": "steps",
    "recheck_revoked": "steps",
    "reconcile": "steps",
    "revoke": "steps",
    "rollback": "steps",
    "store": "steps",
    "take_over": "steps",
    "verify": "steps",
    "wait_for_restarts": "steps",
    "AfterRevokeOutcome": "trace_evidence",
    "IngestionVerdict": "trace_evidence",
    "TraceVerdict": "trace_evidence",
    "TraceWait": "trace_evidence",
    "TraceWatch": "trace_evidence",
    "trace_watches": "trace_evidence",
    "TRACE_CLOCK_SKEW_S": "trace_steps",
    "check_ingestion": "trace_steps",
    "trace_evidence_wait": "trace_steps",
}
"""Each public name and the module that defines it."""

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
