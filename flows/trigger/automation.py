"""The event-driven emergency: the ``emergency-rotation`` deployment's trigger runs it when a
``langfuse.key.compromised`` event naming a configured entry arrives.

The trigger lives in ``deployments/prefect.yaml`` (``triggers:`` of the emergency deployment;
``prefect deploy`` creates the automation); ``EMERGENCY_TRIGGER`` here is the same specification
(a test keeps the two equal), for ``flow.serve(triggers=[deployment_trigger()])`` and for
``ensure_emergency_automation`` on servers deployed another way.

Whoever detects a leak (a secret scanner, an alert rule, a person with ``curl``) POSTs one event
to the Prefect server's events API, ``POST {PREFECT_API_URL}/events`` with a JSON list;
``compromised_event`` builds it::

    [{"id": "<uuid4>", "occurred": "<ISO 8601 UTC>", "event": "langfuse.key.compromised",
      "resource": {"prefect.resource.id": "langfuse.project.<entry>", "langfuse.project": "<entry>"},
      "payload": {"public_key": "pk-lf-...", "source": "secret-scanner"}}]

``<entry>`` is a configured entry name (``--project`` of the command line); ``payload.public_key``
is required: the run checks the event before it changes anything (``flows.trigger.checks``). Never put a
secret in an event: events are stored and shown in the UI.
"""

from __future__ import annotations

import argparse
import re
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

EVENT = "langfuse.key.compromised"
RESOURCE_PREFIX = "langfuse.project."
PROJECT_LABEL = "langfuse.project"
AUTOMATION_NAME = "langfuse-emergency-rotation-on-compromise"
DEFAULT_DEPLOYMENT = "langfuse-key-emergency/emergency-rotation"
_PUBLIC_KEY = re.compile(r"^pk-lf-[A-Za-z0-9_-]+$")

# The deployment's parameters, rendered by the server from the triggering event. A payload
# without public_key renders as "", which an event-started run refuses.
RUN_PARAMETERS: dict[str, Any] = {
    "project": "{{ event.resource['" + PROJECT_LABEL + "'] }}",
    "public_key": "{{ event.payload.get('public_key', '') }}",
    "event_id": "{{ event.id | string }}",
    "event_source": "{{ event.payload.get('source', '') }}",
}

EMERGENCY_TRIGGER: dict[str, Any] = {
    "type": "event",
    "name": AUTOMATION_NAME,
    "description": f"Runs the emergency rotation of the entry named by a {EVENT} event (checked by the run).",
    "enabled": True,
    "match": {"prefect.resource.id": f"{RESOURCE_PREFIX}*"},
    "expect": [EVENT],
    "for_each": ["prefect.resource.id"],
    "posture": "Reactive",
    "threshold": 1,
    "within": 0,
    "parameters": RUN_PARAMETERS,
}
"""Every event runs the deployment once; the run decides (one containment per key per hour, at most
``emergency.max_per_hour`` per entry, one run per entry at a time)."""


def compromised_event(
    project: str,
    public_key: str | None = None,
    *,
    source: str = "secret-scanner",
    event_id: str | None = None,
) -> dict[str, Any]:
    """One ``langfuse.key.compromised`` event, as JSON for ``POST /api/events`` (in a list)."""
    if public_key is not None and not _PUBLIC_KEY.match(public_key):
        raise ValueError("public_key must be a Langfuse public key (pk-lf-...), never a secret")
    payload: dict[str, Any] = {"source": source}
    if public_key is not None:
        payload["public_key"] = public_key
    return {
        "id": event_id or str(uuid.uuid4()),
        "occurred": datetime.now(UTC).isoformat(),
        "event": EVENT,
        "resource": {"prefect.resource.id": f"{RESOURCE_PREFIX}{project}", PROJECT_LABEL: project},
        "payload": payload,
    }


def deployment_trigger() -> Any:
    """``EMERGENCY_TRIGGER`` as Prefect's deployment trigger (for ``flow.serve(triggers=...)``)."""
    from prefect.events.schemas.deployment_triggers import DeploymentTriggerTypes
    from pydantic import TypeAdapter

    return TypeAdapter(DeploymentTriggerTypes).validate_python(dict(EMERGENCY_TRIGGER))


def emergency_automation(deployment_id: UUID) -> Any:
    """The automation ``prefect deploy`` creates from the trigger, for ``deployment_id``."""
    trigger = deployment_trigger()
    trigger.set_deployment_id(deployment_id)
    return trigger.as_automation()


def ensure_emergency_automation(deployment: str | UUID = DEFAULT_DEPLOYMENT) -> UUID:
    """Create the automation for ``deployment`` ("flow-name/deployment-name" or an id) on the
    configured Prefect server, replacing any earlier automation of the same name. Not needed after
    ``prefect deploy`` of ``deployments/prefect.yaml``, which creates it from the trigger."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment_id = (
            deployment if isinstance(deployment, UUID) else client.read_deployment_by_name(str(deployment)).id
        )
        for existing in client.read_automations_by_name(AUTOMATION_NAME):
            client.delete_automation(existing.id)
        automation_id: UUID = client.create_automation(emergency_automation(deployment_id))
    return automation_id


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.trigger.automation",
        description=f"Create the Prefect automation that runs the emergency deployment on {EVENT} events "
        "(prefect deploy of deployments/prefect.yaml already does).",
    )
    parser.add_argument("--deployment", default=DEFAULT_DEPLOYMENT, help=f"default: {DEFAULT_DEPLOYMENT}")
    args = parser.parse_args(argv)
    automation_id = ensure_emergency_automation(args.deployment)
    print(f"automation {AUTOMATION_NAME} ({automation_id}) runs {args.deployment} on {EVENT} events")
    return 0


if __name__ == "__main__":
    sys.exit(main())
