"""Prefect glue shared by the flows: run names, tags, the artifact, approval, failure hooks."""

from __future__ import annotations

import logging
import threading
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run as runtime_flow_run
from prefect.states import Completed, Failed
from pydantic import Field

from connectors.store import RotationRecord
from flows.models import RotationPlan, RotationResult
from flows.prefect.artifact import FinalState, artifact_description, artifact_key, state_of, summary_markdown
from flows.rotation import run_names
from flows.rotation.checklists import ApprovalDecision, HandoverProbe
from flows.rotation.handover import POLL_S

logger = logging.getLogger("langfuse_rotate")


def run_name(prefix: str) -> str:
    """``<prefix>-<project>-<YYYYMMDD-HHMM>`` (UTC); the project is a name, never a secret.
    Flows over every entry (no ``project``) are ``<prefix>-all-<YYYYMMDD-HHMM>``."""
    return run_names.run_name(prefix, runtime_flow_run.parameters.get("project") or "all")


def rotate_run_name() -> str:
    return run_name("rotate")


def emergency_run_name() -> str:
    return run_name("emergency")


def reconcile_run_name() -> str:
    return run_name("reconcile")


def current_flow_run() -> tuple[str, str]:
    run_id = runtime_flow_run.id
    return str(run_id), str(runtime_flow_run.name or run_id)


def tag_flow_run(flow_run_id: str, *, project: str, mode: str, store: str) -> None:
    """Add project, mode and store tags so runs can be filtered in the UI."""
    from uuid import UUID

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(flow_run_id))
        tags = sorted({*run.tags, *run_names.run_tags(project, mode=mode, store=store)})
        client.update_flow_run(UUID(flow_run_id), tags=tags)


def publish_summary(result: RotationResult) -> None:
    create_markdown_artifact(
        key=artifact_key(result),
        markdown=summary_markdown(result),
        description=artifact_description(result),
    )


def final_state(result: RotationResult) -> State[Any] | RotationResult:
    """The flow run's final state (``state_of``) as Prefect's state object, carrying the result."""
    state = state_of(result)
    if state.name == "Completed":
        return result
    return prefect_state(state, result)


def prefect_state(state: FinalState, data: Any = None) -> State[Any]:
    """``state`` as Prefect's state object, carrying ``data``."""
    if state.type == "COMPLETED":
        return Completed(message=state.message, name=state.name, data=data)
    return Failed(message=state.message, data=data)


class RotationApproval(RunInput):
    """What an approver fills in to let a rotation promote its new key. ``approver`` is required
    (the audit log and the step table name who decided); ``approve`` starts unticked."""

    approve: bool
    approver: str = Field(min_length=1)
    reason: str = ""


def pause_for_approval(timeout_s: float) -> Any:
    """The approver for ``run_scheduled``: pause this flow run (``pause_flow_run``, never
    ``suspend_flow_run``, which would re-run the flow from the top) until a person answers.

    A timeout is a rejection. Prefect leaves the run Paused (and its pause-expiration service marks
    it Failed) when nobody answers; the run is moved back to Running first so the rollback runs as
    normal tasks and the run ends with the rotation's own state and message.
    """
    from prefect.exceptions import FlowPauseTimeout

    seconds = max(int(timeout_s), 1)  # pause_flow_run needs an int

    def approve(plan: RotationPlan, record: RotationRecord, handover: HandoverProbe) -> ApprovalDecision:
        description = (
            f"Approve promoting the new Langfuse key of **{plan.entry}** (project `{plan.project_id}`)?\n\n"
            f"- old public key: `{plan.old_public_key}`\n- new public key: `{record.new_public_key}`\n"
            f"- store: {plan.store_name} `{plan.store_location}`\n- consumers: {', '.join(plan.consumers) or 'none'}\n"
            f"- rotation id: `{plan.rotation_id}`\n\n"
            "Approve continues (promote, wait for restarts, verify, revoke the old key). "
            f"Reject, or no answer within {seconds} s, rolls back: the new key is deleted and the old pair "
            "stays current."
        )
        get_run_logger().info("waiting up to %ss for approval of the rotation of %s", seconds, plan.entry)
        watcher = _EmergencyWatcher(runtime_flow_run.id, handover)
        watcher.start()
        try:
            answer = pause_flow_run(
                wait_for_input=RotationApproval.with_initial_data(description=description, approve=False),
                timeout=seconds,
                poll_interval=1,
            )
        except FlowPauseTimeout:
            _leave_pause(f"approval timed out after {seconds}s: rolling back")
            return ApprovalDecision(approved=False, timed_out=True, reason=f"no answer within {seconds}s")
        finally:
            watcher.stop()
        return ApprovalDecision(approved=answer.approve, approver=answer.approver, reason=answer.reason)

    return approve


class _EmergencyWatcher(threading.Thread):
    """While the run is paused for approval: looks for an emergency's handover request about once
    a second and, when one comes, ends the pause itself (the answer names no approver decision:
    the procedure hands the entry over, neither approving nor rolling back)."""

    def __init__(self, flow_run_id: Any, handover: HandoverProbe) -> None:
        super().__init__(name="approval-handover-watch", daemon=True)
        self._flow_run_id = flow_run_id
        self._handover = handover
        self._done = threading.Event()

    def run(self) -> None:
        from prefect.flow_runs import resume_flow_run

        while not self._done.wait(POLL_S):
            emergency = self._handover()
            if emergency is None:
                continue
            answer = {"approve": False, "approver": "langfuse-rotate", "reason": f"superseded by emergency {emergency}"}
            for _ in range(10):  # the pause may not be recorded yet right after it began
                try:
                    resume_flow_run(self._flow_run_id, run_input=answer)
                    return
                except Exception:
                    if self._done.wait(POLL_S):
                        return
            return

    def stop(self) -> None:
        self._done.set()


def _leave_pause(message: str) -> None:
    """Move this (still Paused, or already expired to Failed) flow run back to Running."""
    from prefect.states import Running

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(runtime_flow_run.id, Running(message=message), force=True)
