"""Prefect events for rotations and containments, for users' own automations, and how every event
of this tool reaches the server (``flows.prefect.events`` adds the compliance report's and the
proactive automation; docs/compliance.md shows both).

| event | when |
|---|---|
| ``langfuse.key.rotated`` | a scheduled rotation finished (``rotated``) |
| ``langfuse.key.contained`` | an emergency contained a key (``contained``) |
| ``langfuse.key.rotation_failed`` | a run rolled back or failed (``rolled_back``, ``failed``) |
| ``langfuse.key.needs_attention`` | a run needs a person (``needs_attention``) |

Resource: ``langfuse.project.<entry>`` (label ``langfuse.project`` = the entry name). The payload
holds public facts only: status, mode, public keys, store and version, rotation id, error line.
Never a secret.

Emitting is best effort and never fails a rotation: without ``PREFECT_API_URL`` nothing is sent;
an unreachable or refusing server is logged at debug level and skipped. Events go straight to the
server's ``POST /api/events`` (the same route a secret scanner uses), so they also work from a
command-line run without a Prefect flow. Prefect-free: the rotation sends its event itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flows.redact import scrub

if TYPE_CHECKING:
    from flows.models import RotationResult

logger = logging.getLogger("langfuse_rotate.events")

RESOURCE_PREFIX = "langfuse.project."
PROJECT_LABEL = "langfuse.project"
ROTATED = "langfuse.key.rotated"
CONTAINED = "langfuse.key.contained"
ROTATION_FAILED = "langfuse.key.rotation_failed"
NEEDS_ATTENTION = "langfuse.key.needs_attention"
EVENT_FOR_STATUS = {
    "rotated": ROTATED,
    "contained": CONTAINED,
    "rolled_back": ROTATION_FAILED,
    "failed": ROTATION_FAILED,
    "needs_attention": NEEDS_ATTENTION,
}
TIMEOUT_S = 3.0
CONNECT_TIMEOUT_S = 1.0


def project_resource(entry: str) -> dict[str, str]:
    return {"prefect.resource.id": f"{RESOURCE_PREFIX}{entry}", PROJECT_LABEL: entry}


def build_event(
    event: str,
    resource: dict[str, str],
    payload: dict[str, Any],
    *,
    flow_run_id: str | None = None,
) -> dict[str, Any]:
    """One event as the events API takes it (in a list)."""
    related = (
        [{"prefect.resource.id": f"prefect.flow-run.{flow_run_id}", "prefect.resource.role": "flow-run"}]
        if flow_run_id
        else []
    )
    return {
        "id": str(uuid.uuid4()),
        "occurred": datetime.now(UTC).isoformat(),
        "event": event,
        "resource": resource,
        "related": related,
        "payload": payload,
    }


def rotation_event(result: RotationResult, project_id: str | None = None) -> dict[str, Any] | None:
    """The event for a run's final result, or None for statuses that are not one (reconciled...)."""
    name = EVENT_FOR_STATUS.get(result.status)
    if name is None:
        return None
    payload: dict[str, Any] = {
        "status": result.status,
        "mode": result.mode,
        "project_id": project_id,
        "old_public_key": result.old_public_key,
        "new_public_key": result.new_public_key,
        "store": result.store,
        "store_location": result.store_location,
        "store_version": result.store_version,
        "rotation_id": result.rotation_id,
        "verified": result.verified,
        "old_key_rejected": result.old_key_rejected,
        "lagging_consumers": list(result.lagging_consumers),
        "silent_consumers": dict(result.silent_consumers),
        "orchestrator": result.orchestrator,
        "duration_s": result.duration_s,
        "failed_step": result.failed_step,
        "error": scrub(result.error) if result.error else None,
    }
    return build_event(name, project_resource(result.project), payload, flow_run_id=result.prefect_flow_run_id)


def emit_rotation_event(result: RotationResult, project_id: str | None = None) -> bool:
    """Emit the run's event (best effort; True if the server took it). Never raises."""
    try:
        event = rotation_event(result, project_id)
        return event is not None and send([event])
    except Exception as exc:  # an event must never fail a rotation
        logger.debug("event for %s not sent: %s", result.project, type(exc).__name__)
        return False


# --- transport ----------------------------------------------------------------------------------


def _setting(name: str) -> str | None:
    """From the environment, else from Prefect's settings when Prefect is already loaded (a flow
    run, or tests using ``temporary_settings``); importing Prefect only for this is not worth it."""
    value = os.environ.get(name)
    if value:
        return value
    if "prefect.settings" not in sys.modules:
        return None
    try:
        import prefect.settings

        setting = getattr(prefect.settings, name)
        found = setting.value()
        if found is None:
            return None
        secret = getattr(found, "get_secret_value", None)
        return str(secret() if callable(secret) else found) or None
    except Exception:
        return None


def _headers() -> dict[str, str]:
    """The one credential rule of every REST call to Prefect (``connectors.prefect_api``)."""
    from connectors.prefect_api import authorization_header

    credentials = authorization_header(
        auth_string=_setting("PREFECT_API_AUTH_STRING"), api_key=_setting("PREFECT_API_KEY")
    )
    return {"Content-Type": "application/json", **credentials}


class _Batch:
    """Events waiting to be posted together (``batched``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: list[dict[str, Any]] = []

    def take(self) -> list[dict[str, Any]]:
        with self.lock:
            taken, self.pending = self.pending, []
        return taken


_batches: list[_Batch] = []
BATCH_EVERY_S = 1.0


@contextlib.contextmanager
def batched(every_s: float = BATCH_EVERY_S) -> Iterator[None]:
    """Events sent inside go out together about every ``every_s`` seconds and when the block ends
    (a fleet run: one request a second instead of one per entry). Best effort as ever: a batch the
    server does not take is logged at debug level and dropped."""
    url = _setting("PREFECT_API_URL")  # read here: Prefect's settings context does not reach threads
    if not url:
        yield
        return
    headers = _headers()
    batch = _Batch()
    stop = threading.Event()

    def flush() -> None:
        events = batch.take()
        for start in range(0, len(events), 200):
            _post(events[start : start + 200], url, headers)

    def run() -> None:
        while not stop.wait(every_s):
            flush()

    thread = threading.Thread(target=run, name="event-batches", daemon=True)
    _batches.append(batch)
    thread.start()
    try:
        yield
    finally:
        _batches.remove(batch)
        stop.set()
        thread.join(TIMEOUT_S + CONNECT_TIMEOUT_S + 1)
        flush()


def send(events: list[dict[str, Any]]) -> bool:
    """POST the events to ``$PREFECT_API_URL/events``; False (quietly) if there is no server. Inside
    ``batched`` the events are queued for the next batch (True)."""
    if events and _batches:
        batch = _batches[-1]
        with batch.lock:
            batch.pending.extend(events)
        return True
    url = _setting("PREFECT_API_URL")
    if not url or not events:
        return False
    return _post(events, url, _headers())


def _post(events: list[dict[str, Any]], url: str, headers: dict[str, str]) -> bool:
    import httpx

    from connectors.tls import shared_ssl_context

    try:
        response = httpx.post(
            f"{url.rstrip('/')}/events",
            json=events,
            headers=headers,
            timeout=httpx.Timeout(TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            verify=shared_ssl_context(),  # building a TLS context costs ~0.1 s of CPU per event otherwise
        )
    except httpx.HTTPError as exc:
        logger.debug("Prefect events API not reachable: %s", type(exc).__name__)
        return False
    if response.status_code >= 300:
        logger.debug("Prefect events API answered %s", response.status_code)
        return False
    return True
