"""How a rotation that holds an entry's lock notices an emergency's handover request (flows.rotation.handover).

Before each step it asks the store at most once per ``STEP_CHECK_S`` (a fleet's steps follow each
other within milliseconds); before a rollback it always asks. The store is in memory
(tests/fakes.py); these tests need no server.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

import flows.rotation.handover
from connectors.keypair import KeyPair
from connectors.store import HandoverRequest, SecretLocation
from flows.errors import Superseded
from flows.rotation.handover import HandoverWatch
from tests.fakes import MemoryStore
from tests.fixtures.calls import recorded_calls

LOCATION = SecretLocation(path="langfuse/watched")


@pytest.fixture
def store() -> MemoryStore:
    store = MemoryStore()
    store.seed(LOCATION, KeyPair(public_key="pk-lf-watched", secret_key=SecretStr("sk-lf-watched")), "http://lf")
    return store


def ask(
    store: MemoryStore,
    emergency_run: str = "emergency-1",
    *,
    written_ago: timedelta = timedelta(0),
    flow_run_id: str | None = None,
) -> None:
    """A handover request as an emergency writes it; ``written_ago``: how old its timestamp is
    (a request left by an emergency that died, a forged one, or one from a host whose clock is off)."""
    request = HandoverRequest(
        emergency_run=emergency_run,
        nonce=uuid.uuid4().hex,
        requested_at=datetime.now(UTC) - written_ago,
        flow_run_id=flow_run_id,
    )
    store.request_handover(LOCATION, request)


def nobody_is_live(flow_run_id: str) -> tuple[bool, str]:
    return False, f"flow run {flow_run_id} not found"


STALE = timedelta(hours=1)


def test_a_request_made_right_after_the_last_look_waits_for_the_next_interval(
    store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flows.rotation.handover, "STEP_CHECK_S", 3600.0)  # "a moment ago", however slow the box
    watch = HandoverWatch(store, LOCATION, entry="watched", live_run=nobody_is_live)
    watch.arm()
    ask(store)

    watch.check_between_steps()  # asked the store a moment ago (arm): not again yet

    monkeypatch.setattr(flows.rotation.handover, "STEP_CHECK_S", 0.0)
    with pytest.raises(Superseded, match="emergency-1"):
        watch.check_between_steps()


def test_a_check_before_a_rollback_always_asks_the_store(store: MemoryStore) -> None:
    watch = HandoverWatch(store, LOCATION, entry="watched", live_run=nobody_is_live)
    watch.arm()
    ask(store)

    with pytest.raises(Superseded, match="emergency-1"):
        watch.check()


def test_once_superseded_every_check_between_steps_says_so(store: MemoryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    watch = HandoverWatch(store, LOCATION, entry="watched", live_run=nobody_is_live)
    watch.arm()
    ask(store)
    with pytest.raises(Superseded):
        watch.check()

    monkeypatch.setattr(flows.rotation.handover, "STEP_CHECK_S", 3600.0)
    with pytest.raises(Superseded, match="emergency-1"):
        watch.check_between_steps()


def test_arming_from_a_state_just_read_notes_its_request_without_asking_again(
    store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ask(store, "emergency-that-died")
    state = store.describe(LOCATION)
    asked = recorded_calls(monkeypatch, store, "read_handover", lambda loc: loc)
    watch = HandoverWatch(store, LOCATION, entry="watched", live_run=nobody_is_live)

    watch.arm(state)

    assert asked == []
    watch.check()  # the request it started with is not a new one
    ask(store, "emergency-2")
    with pytest.raises(Superseded, match="emergency-2"):
        watch.check()


# --- whose request a rotation obeys (README "Safety guarantees") ---------------------------------


def test_a_fresh_request_is_obeyed_at_once_and_the_watch_says_why(store: MemoryStore) -> None:
    watch = HandoverWatch(store, LOCATION, entry="watched", live_run=nobody_is_live)
    watch.arm()
    ask(store, "emergency-1")

    with pytest.raises(Superseded, match="emergency-1"):
        watch.check()

    assert watch.obeyed_because is not None and "fresh" in watch.obeyed_because
    assert watch.ignored() == []


def test_a_stale_request_nobody_renews_is_ignored_and_named(store: MemoryStore) -> None:
    watch = HandoverWatch(store, LOCATION, entry="watched", live_run=nobody_is_live)
    watch.arm()
    ask(store, "forged-run", written_ago=STALE, flow_run_id="run-that-is-not")

    watch.check()
    watch.check()

    assert watch.superseded_by is None and watch.obeyed_because is None
    [note] = watch.ignored()
    assert "forged-run" in note and "not live" in note and "run-that-is-not not found" in note


def test_a_request_dated_far_in_the_future_is_not_fresh(store: MemoryStore) -> None:
    watch = HandoverWatch(store, LOCATION, entry="watched", live_run=nobody_is_live)
    watch.arm()
    ask(store, "forged-run", written_ago=-timedelta(days=1))

    watch.check()

    assert watch.superseded_by is None and len(watch.ignored()) == 1


def test_a_request_renewed_while_the_rotation_watches_is_obeyed_whatever_its_clock_says(store: MemoryStore) -> None:
    """An emergency on a host whose clock is an hour behind: its timestamps look stale, but it
    writes a new request every second while it waits, which only a live run does."""
    watch = HandoverWatch(store, LOCATION, entry="watched", live_run=nobody_is_live)
    watch.arm()
    ask(store, "emergency-on-a-slow-clock", written_ago=STALE)
    watch.check()
    ask(store, "emergency-on-a-slow-clock", written_ago=STALE)

    with pytest.raises(Superseded, match="emergency-on-a-slow-clock"):
        watch.check()

    assert watch.obeyed_because is not None and "renewed" in watch.obeyed_because
    assert watch.ignored() == [], "the request it obeyed in the end is not reported as ignored"


def test_a_request_naming_a_live_emergency_flow_run_is_obeyed(store: MemoryStore) -> None:
    def live(flow_run_id: str) -> tuple[bool, str]:
        return flow_run_id == "run-1", f"its flow run {flow_run_id} is RUNNING"

    watch = HandoverWatch(store, LOCATION, entry="watched", live_run=live)
    watch.arm()
    ask(store, "emergency-1", written_ago=STALE, flow_run_id="run-1")

    with pytest.raises(Superseded, match="emergency-1"):
        watch.check()

    assert watch.obeyed_because is not None and "run-1 is RUNNING" in watch.obeyed_because


def test_each_request_is_judged_once(store: MemoryStore) -> None:
    asked: list[str] = []

    def live(flow_run_id: str) -> tuple[bool, str]:
        asked.append(flow_run_id)
        return False, "not running"

    watch = HandoverWatch(store, LOCATION, entry="watched", live_run=live)
    watch.arm()
    ask(store, "forged-run", written_ago=STALE, flow_run_id="run-1")
    for _ in range(3):
        watch.check()

    assert asked == ["run-1"]


def test_a_request_already_in_the_store_that_nobody_renews_is_reported_as_ignored(store: MemoryStore) -> None:
    ask(store, "emergency-that-died", written_ago=STALE)
    watch = HandoverWatch(store, LOCATION, entry="watched", live_run=nobody_is_live)
    watch.arm()

    watch.check()

    [note] = watch.ignored()
    assert "emergency-that-died" in note and "already in the store" in note
