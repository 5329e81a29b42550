"""An emergency never waits behind a scheduled rotation of the same entry (README: Safety guarantees).

The emergency writes a ``HandoverRequest`` into the entry's store (every host sees it) and keeps
refreshing it while it waits for the entry's lock. A scheduled rotation that holds the lock looks
at the request about once a second, wherever it waits (consumers, approval, grace period, the
idle re-probe), before every step (at most twice a second) and before a rollback; when it sees
a request it did not see when it started, it stops where it is (``Superseded``), without rolling
back, records "superseded by emergency <run>" and lets go of the lock. The emergency then carries
the staged rotation through as an emergency.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from datetime import UTC, datetime

from connectors.errors import ConnectorError
from connectors.store import HandoverRequest, SecretLocation, SecretStore, StoreDescription
from flows.errors import Superseded

POLL_S = 1.0
"""How often a waiting rotation looks for a handover request, and an emergency refreshes its own."""

STEP_CHECK_S = 0.5
"""Between steps, a rotation asks the store again only when its last look is older than this."""


class HandoverWatch:
    """What a run that holds an entry's lock uses to notice an emergency's handover request.

    ``arm()`` (a scheduled rotation, once it holds the lock) notes the request already in the store,
    if any (left by an emergency that died, or one that is waiting: that one refreshes it within a
    second); ``check()`` raises ``Superseded`` once a different request appears. Unarmed (emergency
    and reconcile runs), it never raises. ``sleep()`` is ``time.sleep`` that checks every second.
    """

    def __init__(self, store: SecretStore, location: SecretLocation) -> None:
        self._store = store
        self._location = location
        self._armed = False
        self._seen: str | None = None
        self._last_check = 0.0
        self.superseded_by: str | None = None

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
        self._armed = True
        self._last_check = time.monotonic()

    def requested_by(self) -> str | None:
        """The emergency run asking for the entry now, if any (None when unarmed)."""
        if not self._armed:
            return None
        if self.superseded_by is not None:
            return self.superseded_by
        self._last_check = time.monotonic()
        try:
            request = self._store.read_handover(self._location)
        except ConnectorError:
            return None  # the store's trouble shows in the step that needs it
        if request is not None and request.nonce != self._seen:
            self.superseded_by = request.emergency_run
        return self.superseded_by

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


class HandoverRequester:
    """The emergency's side: ask for the entry, refresh the request while waiting, withdraw it."""

    def __init__(self, store: SecretStore, location: SecretLocation, emergency_run: str) -> None:
        self._store = store
        self._location = location
        self.emergency_run = emergency_run
        self._last = 0.0
        self.rotation_id: str | None = None

    def request(self) -> None:
        """Write a fresh request (a new nonce). Store trouble is ignored: the lock wait goes on."""
        self._last = time.monotonic()
        request = HandoverRequest(
            emergency_run=self.emergency_run,
            nonce=uuid.uuid4().hex,
            requested_at=datetime.now(UTC),
            rotation_id=self.rotation_id,
        )
        with contextlib.suppress(ConnectorError):
            self._store.request_handover(self._location, request)

    def refresh(self) -> None:
        """Called while waiting for the lock: a new nonce about once a second."""
        if time.monotonic() - self._last >= POLL_S:
            self.request()

    def take_over(self, rotation_id: str | None) -> None:
        """Holding the lock: record which staged rotation this emergency now carries through."""
        self.rotation_id = rotation_id
        self.request()

    def withdraw(self) -> None:
        with contextlib.suppress(ConnectorError):
            self._store.clear_handover(self._location, self.emergency_run)
