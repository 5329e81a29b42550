"""ConsumerClient against a real local health stub: observe, restart, wait."""

from __future__ import annotations

import json
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import pytest

from connectors.consumers import Consumer, ConsumerClient
from connectors.errors import ConsumerError
from devstack.net import free_port
from tests.fakes import FakeClock
from tests.fixtures.devstack import HealthStub
from tests.hostile_http import HeaderTrickler, HugeBody, Trickler

T = TypeVar("T")

OLD = "pk-lf-old-0000"
NEW = "pk-lf-new-1111"


def consumer_for(stub: HealthStub, name: str = "api", **overrides: object) -> Consumer:
    fields: dict[str, object] = {
        "name": name,
        "health_url": stub.health_url,
        "restart_url": stub.restart_url,
        "timeout_s": 2.0,
    }
    fields.update(overrides)
    return Consumer.model_validate(fields)


# --- observe --------------------------------------------------------------------------------


def test_observe_reports_the_public_key_from_health(health_stub: HealthStub) -> None:
    health_stub.set("ok", public_key=OLD)
    observation = ConsumerClient().observe(consumer_for(health_stub))
    assert (observation.name, observation.public_key, observation.error) == ("api", OLD, None)
    assert observation.observed_at.tzinfo is not None


def test_observe_a_hanging_consumer_times_out_quickly(health_stub: HealthStub) -> None:
    health_stub.set("hang")
    started = time.monotonic()
    observation = ConsumerClient().observe(consumer_for(health_stub, timeout_s=0.3))
    assert time.monotonic() - started < 2.0
    assert observation.public_key is None
    assert observation.error == "health check timed out after 0.3s"


def test_observe_garbage_body_says_invalid_json_without_quoting_it(health_stub: HealthStub) -> None:
    health_stub.set("garbage")
    observation = ConsumerClient().observe(consumer_for(health_stub))
    assert observation.public_key is None
    assert observation.error == "health check answered invalid JSON"


def test_observe_missing_field_names_the_field(health_stub: HealthStub) -> None:
    health_stub.set("missing_field")
    observation = ConsumerClient().observe(consumer_for(health_stub))
    assert observation.public_key is None
    assert observation.error == "health check: field 'langfuse_public_key' missing"


def test_observe_http_500_reports_status_only_never_the_body(health_stub: HealthStub) -> None:
    health_stub.set("status500")
    observation = ConsumerClient().observe(consumer_for(health_stub))
    assert observation.public_key is None
    assert observation.error == "health check answered HTTP 500"
    assert "sk-lf" not in (observation.error or "")


def test_observe_refused_connection_is_an_error_not_an_exception() -> None:
    port = free_port()
    consumer = Consumer(name="gone", health_url=f"http://127.0.0.1:{port}/health", timeout_s=1.0)
    observation = ConsumerClient().observe(consumer)
    assert observation.public_key is None
    assert observation.error == "health check connection failed (refused or unreachable)"


def test_observe_non_string_public_key_is_rejected() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"langfuse_public_key": 42}))
    consumer = Consumer(name="odd", health_url="http://consumer.test/health")
    observation = ConsumerClient(transport=transport).observe(consumer)
    assert observation.public_key is None
    assert observation.error == "health check: field 'langfuse_public_key' is not a string"


def test_observe_follows_a_dotted_field_path() -> None:
    body = {"status": "ok", "langfuse": {"public_key": NEW}}
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=body))
    consumer = Consumer(name="nested", health_url="http://consumer.test/health", public_key_field="langfuse.public_key")
    assert ConsumerClient(transport=transport).observe(consumer).public_key == NEW


def test_observe_dotted_path_missing_midway_names_the_full_path() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"langfuse": "flat"}))
    consumer = Consumer(name="nested", health_url="http://consumer.test/health", public_key_field="langfuse.public_key")
    observation = ConsumerClient(transport=transport).observe(consumer)
    assert observation.error == "health check: field 'langfuse.public_key' missing"


# --- restart --------------------------------------------------------------------------------


def test_restart_posts_to_the_restart_hook(health_stub: HealthStub) -> None:
    ConsumerClient().restart(consumer_for(health_stub))
    assert health_stub.restarts == 1


def test_restart_without_hook_is_a_no_op(health_stub: HealthStub) -> None:
    ConsumerClient().restart(consumer_for(health_stub, restart_url=None))
    assert health_stub.restarts == 0


def test_restart_failing_hook_raises_one_line_consumer_error(health_stub: HealthStub) -> None:
    health_stub.restart_status = 503
    with pytest.raises(ConsumerError) as caught:
        ConsumerClient().restart(consumer_for(health_stub))
    assert str(caught.value) == "consumer 'api': restart hook answered HTTP 503"
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_restart_unreachable_hook_raises_consumer_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    consumer = Consumer(name="gone", health_url=f"{url}/health", restart_url=f"{url}/restart", timeout_s=1)
    with pytest.raises(ConsumerError, match=r"^consumer 'gone': restart hook connection failed"):
        ConsumerClient().restart(consumer)


def test_restart_hanging_hook_raises_timeout_consumer_error(health_stub: HealthStub) -> None:
    transport = httpx.MockTransport(lambda request: (_ for _ in ()).throw(httpx.ReadTimeout("slow")))
    consumer = consumer_for(health_stub, timeout_s=0.5)
    with pytest.raises(ConsumerError, match=r"^consumer 'api': restart hook timed out after 0.5s$"):
        ConsumerClient(transport=transport).restart(consumer)


# --- wait -----------------------------------------------------------------------------------


def test_wait_returns_once_every_consumer_switched(health_stub: HealthStub) -> None:
    health_stub.set("ok", public_key=OLD)
    health_stub.switch_to, health_stub.switch_after_polls = NEW, 3
    clock = FakeClock()
    client = ConsumerClient(sleep=clock.sleep, clock=clock)
    outcome = client.wait_for_public_key([consumer_for(health_stub)], NEW, timeout_s=60, initial_poll_s=1)
    assert outcome.all_switched and outcome.lagging == [] and outcome.errors == {}
    assert outcome.last_seen == {"api": NEW}
    assert health_stub.polls == 4
    assert clock.sleeps == [1, 2, 4]


def test_wait_times_out_naming_the_laggards_with_their_errors(health_stub: HealthStub) -> None:
    switched = HealthStub().set("ok", public_key=NEW)
    try:
        health_stub.set("ok", public_key=OLD)
        clock = FakeClock()
        client = ConsumerClient(sleep=clock.sleep, clock=clock)
        gone = Consumer(name="gone", health_url=f"http://127.0.0.1:{free_port()}/health", timeout_s=1)
        consumers = [consumer_for(switched, "web"), consumer_for(health_stub, "api"), gone]
        outcome = client.wait_for_public_key(consumers, NEW, timeout_s=5, initial_poll_s=1)
    finally:
        switched.stop()
    assert not outcome.all_switched
    assert outcome.lagging == ["api", "gone"]
    assert outcome.last_seen == {"web": NEW, "api": OLD, "gone": None}
    assert outcome.errors == {"gone": "health check connection failed (refused or unreachable)"}
    assert outcome.elapsed_s == 5
    assert switched.polls == 1, "a switched consumer is not polled again"


def test_wait_backoff_doubles_up_to_max_and_stops_at_the_deadline(health_stub: HealthStub) -> None:
    health_stub.set("ok", public_key=OLD)
    clock = FakeClock()
    client = ConsumerClient(sleep=clock.sleep, clock=clock)
    outcome = client.wait_for_public_key(
        [consumer_for(health_stub)], NEW, timeout_s=30, initial_poll_s=0.5, max_poll_s=4
    )
    assert clock.sleeps == [0.5, 1, 2, 4, 4, 4, 4, 4, 4, 2.5]
    assert clock.now == 30 and outcome.elapsed_s == 30
    assert health_stub.polls == len(clock.sleeps) + 1, "a final poll happens at the deadline"


def test_wait_with_a_hanging_consumer_does_not_delay_the_others(health_stub: HealthStub) -> None:
    fast = HealthStub().set("ok", public_key=NEW)
    try:
        health_stub.set("hang")
        consumers = [
            consumer_for(health_stub, "stuck-1", timeout_s=1.0),
            consumer_for(health_stub, "stuck-2", timeout_s=1.0),
            consumer_for(fast, "fast"),
        ]
        outcome = ConsumerClient().wait_for_public_key(consumers, NEW, timeout_s=0)
    finally:
        fast.stop()
    # One after another, the second request would reach the stub only after the first gave up.
    assert health_stub.most_hanging_at_once == 2, "the two hanging consumers were observed in parallel"
    assert outcome.lagging == ["stuck-1", "stuck-2"]
    assert outcome.errors == {
        "stuck-1": "health check timed out after 1s",
        "stuck-2": "health check timed out after 1s",
    }
    assert outcome.last_seen["fast"] == NEW


def test_a_consumers_repr_hides_the_credentials_in_its_urls() -> None:
    consumer = Consumer(
        name="api",
        health_url="http://probe:basic-pass-0013@127.0.0.1:9/health?token=health-token-0014",
        restart_url="http://127.0.0.1:9/restart?token=restart-token-0015",
    )
    shown = repr(consumer)
    assert "basic-pass-0013" not in shown and "health-token-0014" not in shown and "restart-token-0015" not in shown
    assert "127.0.0.1:9/health" in shown


# --- deadlines and body caps (docs/rotation.md, step 3) ----------------------------


def _within(seconds: float, call: Callable[[], T]) -> tuple[T, float]:
    """Run ``call`` in a daemon thread; fail if it has not returned after ``seconds``."""
    box: list[T] = []
    started = time.monotonic()
    worker = threading.Thread(target=lambda: box.append(call()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds}s"
    return box[0], time.monotonic() - started


@pytest.mark.parametrize("server_kind", [Trickler, HeaderTrickler])
def test_a_trickling_health_endpoint_cannot_hold_a_probe_past_its_timeout(server_kind: type[Trickler]) -> None:
    with server_kind(interval_s=0.2) as server, ConsumerClient() as client:
        consumer = Consumer(name="api", health_url=f"{server.url}/health", timeout_s=1.0)
        observation, elapsed = _within(10, lambda: client.observe(consumer))
    assert elapsed < 2.0
    assert observation.public_key is None
    assert observation.error == "health check timed out after 1s"


@pytest.mark.slow  # waits out the deadline
def test_a_trickling_health_endpoint_cannot_keep_the_wait_past_its_deadline() -> None:
    with Trickler(interval_s=0.5) as server, ConsumerClient() as client:
        consumer = Consumer(name="api", health_url=f"{server.url}/health", timeout_s=1.0)
        outcome, elapsed = _within(
            15, lambda: client.wait_for_public_key([consumer], NEW, timeout_s=2.0, initial_poll_s=0.2)
        )
    assert elapsed < 2.0 + 1.0 + 1.0  # the wait's deadline plus at most one probe's timeout
    assert outcome.lagging == ["api"]
    assert outcome.errors["api"] == "health check timed out after 1s"


def test_a_trickling_restart_hook_cannot_hold_the_restart_past_its_timeout() -> None:
    with Trickler(interval_s=0.2) as server, ConsumerClient() as client:
        consumer = Consumer(name="api", health_url=f"{server.url}/health", restart_url=f"{server.url}/r", timeout_s=1.0)

        def restart() -> str:
            try:
                client.restart(consumer)
            except ConsumerError as exc:
                return str(exc)
            return "no error"

        message, elapsed = _within(10, restart)
    assert elapsed < 2.0
    assert message == "consumer 'api': restart hook timed out after 1s"


@pytest.mark.parametrize("content_length", [True, False], ids=["content-length", "streamed"])
def test_a_huge_health_body_is_cut_off_at_64_kib_without_taking_memory(content_length: bool) -> None:
    with HugeBody(300 * 1024 * 1024, content_length=content_length) as server, ConsumerClient() as client:
        consumer = Consumer(name="api", health_url=f"{server.url}/health", timeout_s=5.0)
        tracemalloc.start()
        try:
            observation, _ = _within(20, lambda: client.observe(consumer))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert observation.public_key is None
    assert observation.error == "health check answered more than 64 KiB"
    assert peak < 8 * 1024 * 1024
    assert server.sent < 64 * 1024 * 1024  # the client stopped reading long before the end


def test_a_health_body_just_under_the_cap_is_read() -> None:
    class Padded(HugeBody):
        def handle(self, request: Any, body: bytes) -> None:
            document = json.dumps({"langfuse_public_key": NEW, "pad": "x" * (60 * 1024)}).encode()
            request.send_response(200)
            request.send_header("Content-Type", "application/json")
            request.send_header("Content-Length", str(len(document)))
            request.end_headers()
            request.wfile.write(document)

    with Padded() as server, ConsumerClient() as client:
        observation = client.observe(Consumer(name="api", health_url=f"{server.url}/health"))
    assert (observation.public_key, observation.error) == (NEW, None)
