"""The trace-evidence checks (``flows.rotation.trace_evidence``) against the simulator, with raw OTLP exports:
when a consumer counts as switched, what a silent one looks like after the revoke, how the polls
back off, and what a refusing or failing Langfuse gives (never "switched", never an exception)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from langfuse.api import LangfuseAPI
from pydantic import SecretStr

from connectors.keypair import KeyPair
from connectors.langfuse import KeySource, KeySpec, LangfuseProjectClient, TraceMatch
from connectors.langfuse.models import RetryPolicy
from flows.rotation import trace_evidence
from flows.rotation.trace_evidence import TraceWait, TraceWatch
from tests.fixtures.langfuse_sim import SimHandle
from tests.otlp_spans import V4_HEADER, export, send

MATCH = TraceMatch(environment="svc")


class FakeTime:
    """The wait's clock and pauses: every pause is recorded and moves the clock on."""

    def __init__(self) -> None:
        self.now = 0.0
        self.pauses: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.pauses.append(round(seconds, 3))
        self.now += seconds

    def clock(self) -> float:
        return self.now


@pytest.fixture
def instant(sim: SimHandle) -> None:
    """Exports readable at once (the ingestion delay is modelled, and tested, elsewhere)."""
    sim.configure(otel_delay_s=0.0, ingestion_delay_s=0.0)


def new_key(sim: SimHandle) -> KeyPair:
    org = LangfuseAPI(base_url=sim.url, username=sim.org_public_key, password=sim.org_secret_key, timeout=10)
    pair = KeyPair(public_key=f"pk-lf-{uuid.uuid4()}", secret_key=SecretStr(f"sk-lf-{uuid.uuid4()}"))
    org.projects.create_api_key(
        sim.projects[0].id, public_key=pair.public_key, secret_key=pair.secret_key.get_secret_value()
    )
    return pair


@pytest.fixture
def keys(sim: SimHandle, instant: None) -> tuple[KeyPair, KeyPair]:
    """(old, new) pairs of one project."""
    return new_key(sim), new_key(sim)


@pytest.fixture
def client(sim: SimHandle, keys: tuple[KeyPair, KeyPair]) -> Iterator[LangfuseProjectClient]:
    with LangfuseProjectClient(
        sim.url, keys[1], timeout_s=5, retry=RetryPolicy(max_attempts=1), sleep=lambda _: None
    ) as reader:
        yield reader


def send_with(sim: SimHandle, pair: KeyPair, *, environment: str = "svc", ago_s: float = 0.0) -> None:
    start = datetime.now(UTC) - timedelta(seconds=ago_s)
    body = export(attributes={"langfuse.environment": environment}, start_ns=int(start.timestamp() * 1e9))
    send(sim, body, (pair.public_key, pair.secret_key.get_secret_value()), V4_HEADER)


def watch(quiet_s: float = 5.0, after_revoke_s: float = 20.0, key: KeySpec | None = None) -> TraceWatch:
    return TraceWatch(name="svc", match=MATCH, key=key or KeySpec(), quiet_s=quiet_s, after_revoke_s=after_revoke_s)


def since() -> datetime:
    return datetime.now(UTC) - timedelta(seconds=2)


# --- before revoke ------------------------------------------------------------------------------


def test_a_consumer_is_switched_by_a_trace_with_the_new_key_and_none_with_the_old_one(
    sim: SimHandle, keys: tuple[KeyPair, KeyPair], client: LangfuseProjectClient
) -> None:
    old, new = keys
    send_with(sim, old, ago_s=30)  # before the quiet window
    send_with(sim, new)
    fake = FakeTime()

    verdicts = TraceWait(client, sleep=fake.sleep, clock=fake.clock).wait_switched(
        [watch()], new.public_key, old.public_key, since=since(), timeout_s=60
    )

    assert verdicts["svc"].switched
    assert verdicts["svc"].queries == 2
    assert fake.pauses == []


def test_a_trace_with_the_old_key_in_the_quiet_window_keeps_it_unswitched_and_says_when(
    sim: SimHandle, keys: tuple[KeyPair, KeyPair], client: LangfuseProjectClient
) -> None:
    old, new = keys
    send_with(sim, new)
    send_with(sim, old, ago_s=1)
    fake = FakeTime()

    verdict = TraceWait(client, sleep=fake.sleep, clock=fake.clock).wait_switched(
        [watch(quiet_s=30)], new.public_key, old.public_key, since=since(), timeout_s=5
    )["svc"]

    assert not verdict.switched
    assert verdict.old_last_at is not None
    assert verdict.why_not(old="the old key X").startswith("still sent with the old key X, last at ")


def test_the_metadata_stamp_is_the_key_with_key_source_metadata(
    sim: SimHandle, keys: tuple[KeyPair, KeyPair], client: LangfuseProjectClient
) -> None:
    old, new = keys
    body = export(attributes={"langfuse.environment": "svc", "langfuse.trace.metadata.lf_pk": new.public_key})
    send(sim, body, (old.public_key, old.secret_key.get_secret_value()), V4_HEADER)  # sent with another key
    stamp = KeySpec(source=KeySource.METADATA, metadata_key="lf_pk")

    verdicts = TraceWait(client, sleep=FakeTime().sleep).wait_switched(
        [watch(key=stamp)], new.public_key, None, since=since(), timeout_s=0
    )

    assert verdicts["svc"].switched


def test_polls_back_off_from_one_second_to_ten_and_stop_at_the_deadline(
    keys: tuple[KeyPair, KeyPair], client: LangfuseProjectClient
) -> None:
    old, new = keys
    fake = FakeTime()

    verdict = TraceWait(client, sleep=fake.sleep, clock=fake.clock).wait_switched(
        [watch()], new.public_key, old.public_key, since=since(), timeout_s=45
    )["svc"]

    assert fake.pauses == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert verdict.queries == len(fake.pauses) + 2  # one a round, and the old key once at the end
    assert verdict.why_not() == "no trace sent with the new key yet"


def test_a_langfuse_refusing_the_filter_is_an_error_naming_the_minimum_version_never_switched(
    sim: SimHandle, keys: tuple[KeyPair, KeyPair], client: LangfuseProjectClient
) -> None:
    old, new = keys
    send_with(sim, new)
    sim.inject_fault("/api/public/v2/observations", status=400, count=5, body={"message": "Invalid filter"})
    fake = FakeTime()

    verdict = TraceWait(client, sleep=fake.sleep, clock=fake.clock).wait_switched(
        [watch()], new.public_key, old.public_key, since=since(), timeout_s=60
    )["svc"]

    assert not verdict.switched
    assert verdict.error is not None and verdict.error.endswith("trace evidence needs Langfuse 4.0.0 or later")
    assert fake.pauses == []  # nothing more to learn from this server


def test_a_failing_read_is_the_consumers_error_until_a_later_round_reads(
    sim: SimHandle, keys: tuple[KeyPair, KeyPair], client: LangfuseProjectClient
) -> None:
    old, new = keys
    send_with(sim, new)
    client.trace_read_path()  # the version is read before the fault
    sim.inject_fault("/api/public/v2/observations", status=503, count=1)
    fake = FakeTime()

    verdict = TraceWait(client, sleep=fake.sleep, clock=fake.clock).wait_switched(
        [watch()], new.public_key, old.public_key, since=since(), timeout_s=60
    )["svc"]

    assert verdict.switched and verdict.error is None
    assert fake.pauses == [1.0]


# --- after revoke -------------------------------------------------------------------------------


def test_after_the_revoke_a_consumer_sending_again_is_sending(
    sim: SimHandle, keys: tuple[KeyPair, KeyPair], client: LangfuseProjectClient
) -> None:
    old, new = keys
    send_with(sim, old, ago_s=5)
    revoked_at = datetime.now(UTC) - timedelta(seconds=1)
    send_with(sim, new)

    outcome = TraceWait(client, sleep=FakeTime().sleep).check_after_revoke(
        [watch()], new.public_key, revoked_at=revoked_at
    )

    assert [c.verdict for c in outcome.consumers] == ["sending"]
    assert outcome.problem() is None and outcome.facts() == {}


def test_after_the_revoke_a_consumer_that_sent_before_and_not_since_is_silent(
    sim: SimHandle, keys: tuple[KeyPair, KeyPair], client: LangfuseProjectClient
) -> None:
    old, new = keys
    send_with(sim, old, ago_s=5)
    fake = FakeTime()

    outcome = TraceWait(client, sleep=fake.sleep, clock=fake.clock).check_after_revoke(
        [watch(after_revoke_s=20)], new.public_key, revoked_at=datetime.now(UTC)
    )

    (verdict,) = outcome.consumers
    assert verdict.verdict == "silent" and verdict.last_before_at is not None
    assert sum(fake.pauses) == pytest.approx(20, abs=0.5)
    assert list(outcome.facts()["silent_consumers"]) == ["svc"]
    assert outcome.problem() is not None and "svc silent since the revoke (last trace " in outcome.problem()


def test_after_the_revoke_a_trace_with_the_old_key_is_not_sending_where_traces_carry_their_key(
    sim: SimHandle, keys: tuple[KeyPair, KeyPair], client: LangfuseProjectClient
) -> None:
    """A revoked key some cache still accepts: its traces arrive, but the consumer is not on the new key."""
    old, new = keys
    send_with(sim, old, ago_s=5)
    revoked_at = datetime.now(UTC) - timedelta(seconds=1)
    send_with(sim, old)
    fake = FakeTime()

    outcome = TraceWait(client, sleep=fake.sleep, clock=fake.clock).check_after_revoke(
        [watch(after_revoke_s=3)], new.public_key, revoked_at=revoked_at
    )

    assert [c.verdict for c in outcome.consumers] == ["silent"]


def test_after_the_revoke_a_consumer_that_sent_nothing_before_is_not_judged(
    keys: tuple[KeyPair, KeyPair], client: LangfuseProjectClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trace_evidence, "MAX_POLL_S", 1.0)
    fake = FakeTime()

    outcome = TraceWait(client, sleep=fake.sleep, clock=fake.clock).check_after_revoke(
        [watch(after_revoke_s=3, key=None)], keys[1].public_key, revoked_at=datetime.now(UTC)
    )

    assert [c.verdict for c in outcome.consumers] == ["not_judged"]
    assert outcome.problem() is None
    assert outcome.describe() == "svc not judged (no trace before the revoke)"
