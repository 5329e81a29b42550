"""A fleet's entry locks, taken a group at a time (docs/fleet-requests.md, "Group leases").

Each entry of a fleet holds its Prefect slot (``langfuse-rotate-<entry>``, ``flows.rotation.lock``)
while it rotates, so an emergency, a manual ``rotate`` or a second fleet on another host never runs
beside it. Taken one entry at a time that is two calls to the Prefect server per entry (take,
release), a fifth of the server's work in a fleet. Here the slots of ``size`` consecutive entries
are taken under one lease, in one request, when the first of them reaches its lock, and released in
one request when the last of them is done (whatever its outcome: skipped, failed, rotated).

What that changes for the others: an entry's slot is held from the moment its group starts until
its whole group is done, a few seconds more than its own rotation (a group's entries start
together, since the fleet hands entries out in order). A manual ``rotate`` of it in that time waits
``lock.wait_s`` as for any rotation in progress; an emergency asks for a handover and goes ahead
after ``TAKE_OVER_AFTER_S`` at the latest, as it does for any holder that does not let go.

A group that cannot be taken whole (one of its entries is held elsewhere) is not taken at all: each
of its entries takes its own slot, as without groups. The lease is renewed while held and named in
a group file that shows whether its holder is alive (``flows.rotation.lock.GroupFile``), so a fleet
killed midway leaves nothing a rerun has to wait out.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from connectors.errors import PrefectApiError
from connectors.prefect_api import Lease, PrefectApi
from flows.errors import LockDirError
from flows.rotation.lock import GroupFile, lock_name, release_dead_groups

MAX_GROUP = 8
"""Entries per group at most: two calls per group, so 0.25 calls per entry."""


def group_size(concurrency: int) -> int:
    """Half the fleet's concurrency, at most ``MAX_GROUP``: two groups or more run side by side, so
    the entries of one start within a few entries' time of each other. 0 (no groups) below a
    concurrency of 4: a group of one saves no call."""
    size = min(MAX_GROUP, concurrency // 2)
    return size if size >= 2 else 0


@dataclass(eq=False)
class _Group:
    entries: tuple[str, ...]
    lock: threading.Lock = field(default_factory=threading.Lock)
    state: str = "new"  # new -> held | split (each entry takes its own) -> released
    lease: Lease | None = None
    file: GroupFile | None = None
    left: int = 0


class GroupLeases:
    """``holds(entry)`` for ``flows.rotation.lock.shared_slots``; ``done(entry)`` once per entry when
    the fleet is finished with it; ``close()`` at the end of the fleet."""

    def __init__(self, api: PrefectApi, entries: Sequence[str], *, size: int, lease_s: float) -> None:
        self._api = api
        self._lease_s = lease_s
        chunks = [tuple(entries[start : start + size]) for start in range(0, len(entries), size)]
        self._all = [_Group(chunk, left=len(chunk)) for chunk in chunks if len(chunk) >= 2]
        self._groups = {entry: group for group in self._all for entry in group.entries}
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._creator: threading.Thread | None = None
        if self._groups:
            api.expect_many_limits()
            with contextlib.suppress(httpx.HTTPError, PrefectApiError, LockDirError):
                release_dead_groups(api)  # a killed fleet's groups, so this one's are not split
            self._renewer = threading.Thread(target=self._renew, name="fleet-group-leases", daemon=True)
            self._renewer.start()
            self._creator = threading.Thread(target=self._create_ahead, name="fleet-group-limits", daemon=True)
            self._creator.start()

    def holds(self, entry: str) -> bool:
        group = self._groups.get(entry)
        if group is None:
            return False
        with group.lock:
            if group.state == "new":
                self._take(group)
            return group.state == "held"

    def _take(self, group: _Group) -> None:
        names = [lock_name(e) for e in group.entries]
        try:
            # Limits not created yet (a server's first fleet): no waiting for them here, the entries
            # create their own as without groups; ``_create_ahead`` makes the later groups'.
            lease = None if self._api.missing_limits(names) else self._api.acquire_all(names, lease_s=self._lease_s)
        except (httpx.HTTPError, PrefectApiError):
            lease = None
        if lease is None:
            group.state = "split"
            return
        try:
            group.file = GroupFile(lease.lease_id, group.entries)
        except (LockDirError, OSError):
            with contextlib.suppress(httpx.HTTPError, PrefectApiError):
                self._api.release(lease.lease_id)
            group.state = "split"
            return
        group.lease, group.state = lease, "held"

    def done(self, entry: str) -> None:
        group = self._groups.get(entry)
        if group is None:
            return
        with group.lock:
            group.left -= 1
            if group.left == 0:
                self._release(group)

    def _release(self, group: _Group) -> None:
        if group.state != "held" or group.lease is None:
            group.state = "released"
            return
        released = True
        try:
            self._api.release(group.lease.lease_id)
        except (httpx.HTTPError, PrefectApiError):
            released = False  # the group file is left unlocked: the next run that needs a slot releases it
        if group.file is not None:
            group.file.remove(released=released)
        group.state = "released"

    def _create_ahead(self) -> None:
        """On a server's first fleet, create the entries' limits ahead of their groups, in order, so
        that the groups the fleet reaches later can be taken whole. A group already reached is left
        to its entries (each creates its own limit when it takes its own slot)."""
        for group in self._all:
            if self._stop.is_set():
                return
            if group.state != "new":
                continue
            with contextlib.suppress(httpx.HTTPError, PrefectApiError):
                self._api.create_lock_limits(self._api.missing_limits([lock_name(e) for e in group.entries]))

    def _renew(self) -> None:
        """Every third of the lease, renew the leases held (a holder that dies stops renewing: its
        slots come back when the lease expires, or sooner through its group file)."""
        while not self._stop.wait(self._lease_s / 3):
            held = [g.lease for g in self._all if g.state == "held" and g.lease is not None]
            for lease in held:
                with contextlib.suppress(httpx.HTTPError, PrefectApiError):
                    self._api.renew(lease.lease_id, self._lease_s)

    def close(self) -> None:
        """Release what is still held (entries the fleet never got to, after an error)."""
        self._stop.set()
        for thread in (self._renewer, self._creator):
            if thread is not None:
                thread.join(5)
        for group in self._all:
            with group.lock:
                if group.state == "held":
                    self._release(group)
