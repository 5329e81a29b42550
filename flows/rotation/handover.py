"""An emergency never waits behind a scheduled rotation of the same entry (README: Safety guarantees).

The emergency writes a ``HandoverRequest`` into the entry's store (every host sees it) and keeps
refreshing it while it waits for the entry's lock. A scheduled rotation that holds the lock looks
at the request about once a second, wherever it waits (consumers, approval, grace period, the
idle re-probe), before every step (at most twice a second) and before a rollback; when it sees
a request it did not see when it started, and that request comes from a live emergency, it stops
where it is (``Superseded``), without rolling back, records "superseded by emergency <run>" and
whose request it obeyed, and lets go of the lock. The emergency then takes the staged rotation
over (``SecretStore.take_over``: the staged record's mode becomes ``emergency``) and carries it
through as an emergency.

Requests live in metadata that a credential weaker than the rotator's may be able to write, so
a rotation obeys one only when it comes from a live emergency (``HandoverWatch._judge``): it is
fresh (its time within ``FRESH_S`` of this host's clock), it was renewed while the rotation
watched (a waiting emergency writes a new one every second, whatever its host's clock says), or it
names a Prefect flow run that is a running emergency run of this entry. Any other request is
ignored, and the step table says so. A request never makes a rotation an emergency: only the
staged record does, which only the rotator writes.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import httpx

from connectors.errors import ConnectorError
from connectors.store import HandoverRequest, SecretLocation, SecretStore, StoreDescription
from flows.errors import Superseded
from flows.rotation.run_names import mode_tag, project_tag

if TYPE_CHECKING:
    from connectors.prefect_api import PrefectApi

POLL_S = 1.0
"""How often a waiting rotation looks for a handover request, and an emergency refreshes its own."""

STEP_CHECK_S = 0.5
"""Between steps, a rotation asks the store again only when its last look is older than this."""

FRESH_S = 30.0
"""A request whose time is within this of this host's clock (either way) counts as fresh: a waiting
emergency renews its request every second, so a live one is never older than a few seconds, plus
the two hosts' clock difference. An older (or later) one counts only if it is renewed while the
rotation watches, or names a running emergency flow run."""

LIVE_STATES = frozenset({"RUNNING", "PENDING", "PAUSED"})
"""Prefect state types of an emergency flow run whose handover request is obeyed."""

Liveness = Callable[[str], tuple[bool, str]]
"""Whether the Prefect flow run of that id is a live emergency run of the entry, and why (one line)."""


class HandoverWatch:
    """What a run that holds an entry's lock uses to notice an emergency's handover request.

    ``arm()`` (a scheduled rotation, once it holds the lock) notes the request already in the store,
    if any (left by an emergency that died, or one that is waiting: that one renews it within a
    second); ``check()`` raises ``Superseded`` once a different request from a live emergency
    appears (``_judge``). Unarmed (emergency and reconcile runs), it never raises. ``sleep()`` is
    ``time.sleep`` that checks every second. ``obeyed_because`` says why it obeyed a request;
    ``ignored()`` lists the requests it did not obey, one line each, for the step table.

    ``live_run``: asks whether a flow run is a live emergency run of ``entry`` (default: the
    Prefect server over REST, when one is configured; ``PrefectRunCheck``).
    """

    def __init__(
        self, store: SecretStore, location: SecretLocation, *, entry: str, live_run: Liveness | None = None
    ) -> None:
        self._store = store
        self._location = location
        self._live_run = live_run
        self._own_check: PrefectRunCheck | None = None
        self._entry = entry
        self._armed = False
        self._seen: str | None = None
        self._last_check = 0.0
        self._lock = threading.Lock()  # the approval pause asks from a thread of its own
        self._at_start: HandoverRequest | None = None
        self._judged: dict[str, HandoverRequest] = {}  # nonce -> a request judged not live
        self._ignored: dict[str, str] = {}  # emergency run -> why its request was not obeyed
        self.superseded_by: str | None = None
        self.obeyed_because: str | None = None

    def arm(self, state: StoreDescription | None = None) -> None:
        """``state``: the entry's state read a moment ago under the lock (its handover request is
        the one to note); None reads the request now. A request written in between counts as new,
        which can only hand over sooner."""
        if state is not None:
            request = state.handover
        else:
            try:
                request = self._store.read_handover(self._location)
            except ConnectorError:
                request = None
        self._seen = request.nonce if request is not None else None
        self._at_start = request
        self._armed = True
        self._last_check = time.monotonic()

    def requested_by(self) -> str | None:
        """The live emergency run asking for the entry now, if any (None when unarmed)."""
        if not self._armed:
            return None
        with self._lock:
            if self.superseded_by is not None:
                return self.superseded_by
            self._last_check = time.monotonic()
            try:
                request = self._store.read_handover(self._location)
            except ConnectorError:
                return None  # the store's trouble shows in the step that needs it
            if request is None or request.nonce == self._seen or request.nonce in self._judged:
                return None
            why = self._judge(request)
            if why is None:
                self._judged[request.nonce] = request
                return None
            self.superseded_by = request.emergency_run
            self.obeyed_because = why
            return self.superseded_by

    def _judge(self, request: HandoverRequest) -> str | None:
        """Why ``request`` (new since this run took the entry) comes from a live emergency, or None
        (it is then ignored, and ``ignored()`` says why)."""
        age = _age(request.requested_at)
        if age is not None and abs(age) <= FRESH_S:
            return f"its request is fresh (written {_seconds(age)} ago by that host's clock)"
        earlier = [r for r in (self._at_start, *self._judged.values()) if r is not None]
        if any(r.emergency_run == request.emergency_run and r.nonce != request.nonce for r in earlier):
            return "its request was renewed while this run watched"
        reasons = [
            f"written {_seconds(age)} ago by that host's clock" if age is not None and age > 0 else "",
            f"dated {_seconds(-age)} ahead of this host's clock" if age is not None and age < 0 else "",
            "not renewed",
        ]
        if request.flow_run_id:
            live, what = self._liveness(request.flow_run_id)
            if live:
                return what
            reasons.append(what)
        else:
            reasons.append("names no Prefect flow run")
        self._ignored[request.emergency_run] = (
            f"ignored the handover request of {request.emergency_run}: not live ({', '.join(r for r in reasons if r)})"
        )
        return None

    def ignored(self) -> list[str]:
        """The requests this run did not obey, one line each (none for the run it obeyed): those it
        judged not live, and one already in the store when it took the entry that was never renewed."""
        with self._lock:
            notes = dict(self._ignored)
            start = self._at_start
            if start is not None and start.emergency_run not in notes:
                age = _age(start.requested_at)
                written = f", written {_seconds(age)} ago by that host's clock" if age is not None and age > 0 else ""
                notes[start.emergency_run] = (
                    f"ignored the handover request of {start.emergency_run}: it was already in the store when this "
                    f"run took the entry{written} and was not renewed"
                )
            notes.pop(self.superseded_by or "", None)
            return list(notes.values())

    def check(self) -> None:
        emergency = self.requested_by()
        if emergency is not None:
            raise Superseded(emergency)

    def check_between_steps(self) -> None:
        """``check`` before a step, unless the store was asked less than ``STEP_CHECK_S`` ago: a
        fleet's steps follow each other within milliseconds, and an emergency refreshes its request
        every second anyway. Carrying on one step more is safe (a rollback checks afresh first)."""
        if self.superseded_by is None and time.monotonic() - self._last_check < STEP_CHECK_S:
            return
        self.check()

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + max(seconds, 0.0)
        while True:
            if self._armed and time.monotonic() - self._last_check >= POLL_S:
                self.check()
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(remaining, POLL_S if self._armed else remaining))

    def close(self) -> None:
        if self._own_check is not None:
            self._own_check.close()

    def _liveness(self, flow_run_id: str) -> tuple[bool, str]:
        if self._live_run is None:
            self._own_check = self._own_check or PrefectRunCheck(self._entry)
            return self._own_check(flow_run_id)
        return self._live_run(flow_run_id)


class PrefectRunCheck:
    """Asks the Prefect server over REST whether a flow run is a live emergency run of ``entry``:
    it exists, is tagged ``mode:emergency`` and ``project:<entry>`` (as every emergency run is,
    before it asks for the entry), and its state is one of ``LIVE_STATES``."""

    def __init__(self, entry: str, api: PrefectApi | None = None) -> None:
        self._entry = entry
        self._api = api
        self._own = api is None

    def __call__(self, flow_run_id: str) -> tuple[bool, str]:
        from connectors.errors import PrefectApiError

        try:
            uuid.UUID(flow_run_id)
        except ValueError:
            return False, f"{flow_run_id!r} is no flow run id"
        api = self._connect()
        if api is None:
            return False, f"no Prefect server to ask about flow run {flow_run_id}"
        try:
            run = api.read_flow_run(flow_run_id)
        except (httpx.HTTPError, PrefectApiError, ValueError) as exc:
            return False, f"Prefect could not say whether flow run {flow_run_id} runs ({type(exc).__name__})"
        if run is None:
            return False, f"flow run {flow_run_id} not found"
        tags = set(run.get("tags") or [])
        if not {mode_tag("emergency"), project_tag(self._entry)} <= tags:
            return False, f"flow run {flow_run_id} is not an emergency run of {self._entry}"
        state = str(run.get("state_type") or "")
        if state not in LIVE_STATES:
            return False, f"its flow run {flow_run_id} is {state or 'in no state'}"
        return True, f"its flow run {flow_run_id} is a {state} emergency run of {self._entry}"

    def close(self) -> None:
        if self._own and self._api is not None:
            self._api.close()

    def _connect(self) -> PrefectApi | None:
        if self._api is None:
            from connectors.prefect_api import PrefectApi

            self._api = PrefectApi.from_configured_url()
        return self._api


def _age(requested_at: datetime) -> float | None:
    """Seconds since ``requested_at`` by this host's clock (negative: in the future); None if it
    carries no time zone."""
    if requested_at.tzinfo is None:
        return None
    return (datetime.now(UTC) - requested_at).total_seconds()


def _seconds(value: float) -> str:
    return str(timedelta(seconds=round(value))) if value >= 60 else f"{value:.0f}s"


def requester_name(flow_run_id: str | None, run_label: str) -> str:
    """How an emergency run names itself in its handover request and a takeover (at most 100
    characters, secret-free): its run label and flow run id, else host and process id."""
    name = f"{run_label} ({flow_run_id})" if flow_run_id else f"{socket.gethostname()}:{os.getpid()}"
    return name[:100]


class HandoverRequester:
    """The emergency's side: ask for the entry, refresh the request while waiting, withdraw it."""

    def __init__(
        self, store: SecretStore, location: SecretLocation, emergency_run: str, flow_run_id: str | None = None
    ) -> None:
        self._store = store
        self._location = location
        self.emergency_run = emergency_run
        self._flow_run_id = flow_run_id
        self._last = 0.0

    def request(self) -> None:
        """Write a fresh request (a new nonce). Store trouble is ignored: the lock wait goes on."""
        self._last = time.monotonic()
        request = HandoverRequest(
            emergency_run=self.emergency_run,
            nonce=uuid.uuid4().hex,
            requested_at=datetime.now(UTC),
            flow_run_id=self._flow_run_id,
        )
        with contextlib.suppress(ConnectorError):
            self._store.request_handover(self._location, request)

    def refresh(self) -> None:
        """Called while waiting for the lock: a new nonce about once a second."""
        if time.monotonic() - self._last >= POLL_S:
            self.request()

    def withdraw(self) -> None:
        with contextlib.suppress(ConnectorError):
            self._store.clear_handover(self._location, self.emergency_run)
