"""``status`` for consumers with ``traces`` (issue 21, item 6): the public key the consumer's latest
trace carried and when; ``consumers`` in ``--json`` keeps its shape (name to public key seen)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from langfuse import Langfuse
from opentelemetry.sdk.trace import TracerProvider

from tests.fixtures.inventory import InventoryEnv
from tests.fixtures.rotation import ENTRY
from tests.otlp_spans import wait_for

pytestmark = [pytest.mark.parametrize("any_store", ["vault"], indirect=True)]


def send_with_sdk(env: InventoryEnv, environment: str) -> None:
    """One trace from a service using the stored pair with the real SDK (nothing stamped)."""
    project = env.project
    client = Langfuse(
        public_key=project.public_key,
        secret_key=project.secret_key,
        base_url=env.sim.url,
        tracer_provider=TracerProvider(),
        environment=environment,
    )
    try:
        with client.start_as_current_observation(name="serve"):
            pass
        client.flush()
    finally:
        client.shutdown()


def traced(name: str, environment: str, key_source: str = "sdk") -> dict[str, object]:
    return {"name": name, "traces": {"match": {"environment": environment}, "key_source": key_source}}


def test_status_shows_the_key_the_latest_trace_carried_and_when(inventory_env: InventoryEnv) -> None:
    environment = f"svc-{uuid.uuid4().hex[:8]}"
    sent = datetime.now(UTC)
    send_with_sdk(inventory_env, environment)
    inventory_env.consumers.append(traced("api", environment))

    def seen() -> dict[str, object] | None:
        entry: dict[str, object] = inventory_env.run("status", "--project", ENTRY)[1]["entries"][0]
        return entry if entry["consumers"] == {"api": inventory_env.project.public_key} else None

    entry = wait_for(seen, "the trace in status")
    at = datetime.fromisoformat(str(entry["consumer_traces_at"]["api"]))  # type: ignore[index]
    assert sent - timedelta(seconds=5) < at < datetime.now(UTC)
    code, out, _ = inventory_env.human("status", "--project", ENTRY)
    assert code == 0
    assert f"consumer api: {inventory_env.project.public_key} (latest trace " in out


def test_a_consumer_with_no_recent_trace_shows_no_key_and_says_why(inventory_env: InventoryEnv) -> None:
    inventory_env.consumers.append(traced("quiet", f"none-{uuid.uuid4().hex[:8]}"))

    code, data, _ = inventory_env.run("status", "--project", ENTRY)

    assert code == 0
    [entry] = data["entries"]
    assert entry["consumers"] == {"quiet": None}
    assert entry["consumer_errors"] == {"quiet": "traces: none in the last 7 days"}


def test_a_langfuse_too_old_for_trace_filters_is_the_consumers_error_not_a_failure(
    inventory_env: InventoryEnv,
) -> None:
    inventory_env.sim.configure(version="3.50.0")
    inventory_env.consumers.append(traced("api", "production"))

    code, data, _ = inventory_env.run("status", "--project", ENTRY)

    assert code == 0
    [entry] = data["entries"]
    assert entry["consumers"] == {"api": None}
    assert "trace evidence needs Langfuse 3.116.1 or later" in entry["consumer_errors"]["api"]
