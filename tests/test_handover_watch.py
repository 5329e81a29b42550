"""How a rotation that holds an entry's lock notices an emergency's handover request (flows.handover).

Before each step it asks the store at most once per ``STEP_CHECK_S`` (a fleet's steps follow each
other within milliseconds); before a rollback it always asks. The store is in memory
(tests/fakes.py); these tests need no server.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

import flows.handover
from connectors.keypair import KeyPair
from connectors.store import HandoverRequest, SecretLocation
from flows.errors import Superseded
from flows.handover import HandoverWatch
from tests.fakes import MemoryStore
from tests.fixtures.calls import recorded_calls

LOCATION = SecretLocation(path="langfuse/watched")


@pytest.fixture
def store() -> MemoryStore:
    store = MemoryStore()
    store.seed(LOCATION, KeyPair(public_key="pk-lf-watched", secret_key=SecretStr("sk-lf-watched")), "http://lf")
    return store


def ask(store: MemoryStore, emergency_run: str = "emergency-1") -> None:
    request = HandoverRequest(emergency_run=emergency_run, nonce=uuid.uuid4().hex, requested_at=datetime.now(UTC))
    store.request_handover(LOCATION, request)


def test_a_request_made_right_after_the_last_look_waits_for_the_next_interval(
    store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flows.handover, "STEP_CHECK_S", 3600.0)  # "a moment ago", however slow the box
    watch = HandoverWatch(store, LOCATION)
    watch.arm()
    ask(store)

    watch.check_between_steps()  # asked the store a moment ago (arm): not again yet

    monkeypatch.setattr(flows.handover, "STEP_CHECK_S", 0.0)
    with pytest.raises(Superseded, match="emergency-1"):
        watch.check_between_steps()


def test_a_check_before_a_rollback_always_asks_the_store(store: MemoryStore) -> None:
    watch = HandoverWatch(store, LOCATION)
    watch.arm()
    ask(store)

    with pytest.raises(Superseded, match="emergency-1"):
        watch.check()


def test_once_superseded_every_check_between_steps_says_so(store: MemoryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    watch = HandoverWatch(store, LOCATION)
    watch.arm()
    ask(store)
    with pytest.raises(Superseded):
        watch.check()

    monkeypatch.setattr(flows.handover, "STEP_CHECK_S", 3600.0)
    with pytest.raises(Superseded, match="emergency-1"):
        watch.check_between_steps()


def test_arming_from_a_state_just_read_notes_its_request_without_asking_again(
    store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ask(store, "emergency-that-died")
    state = store.describe(LOCATION)
    asked = recorded_calls(monkeypatch, store, "read_handover", lambda loc: loc)
    watch = HandoverWatch(store, LOCATION)

    watch.arm(state)

    assert asked == []
    watch.check()  # the request it started with is not a new one
    ask(store, "emergency-2")
    with pytest.raises(Superseded, match="emergency-2"):
        watch.check()
