"""When to read a canary back: learnt from the canaries already read (README "Fleet rotation").

Langfuse makes a trace readable a while after it is sent (its ingestion delay: about a second for
OTel, more for ``/ingestion``, longer at midnight). Polling from the moment of sending spends most
of an entry's Langfuse requests on reads that find nothing. A ``CanaryTiming`` holds what the
entries of one fleet run have learnt, as ages (seconds since a canary was sent):

- ``lower``: the oldest age at which a canary was still unreadable; ``upper``: the youngest age at
  which one was readable. Once ``upper`` is known (and above ``lower``), every entry reads its
  canary once, at that age.
- While nothing holds (at the start, or after a read at ``upper`` found nothing because the delay
  grew), one entry scouts: it reads with doubling pauses (never a tight poll) and the others wait
  for what it learns instead of polling too.
- While ``upper`` is far above ``lower``, one entry at a time reads at the midpoint (a probe): a
  hit narrows ``upper`` and the later entries wait less; a miss costs that entry one read.

Thread-safe; one per Langfuse host and fleet run (``installed``), a fresh one for a lone entry.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from connectors.errors import LangfuseCanaryTimeoutError

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], None]

#: Age of the first read while nothing is known (a trace is never readable at once).
FIRST_READ_S = 0.25
#: The longest pause between two reads of one canary while scouting.
MAX_GAP_S = 2.0
#: The shortest pause between two reads of one canary.
MIN_GAP_S = 0.1
#: Probes stop once ``upper`` is within this share of itself above ``lower``.
RESOLUTION = 0.15


class CanaryTiming:
    """What a fleet run knows about its canaries' ingestion delay (module docstring)."""

    def __init__(
        self,
        *,
        first_read_s: float = FIRST_READ_S,
        max_gap_s: float = MAX_GAP_S,
        min_gap_s: float = MIN_GAP_S,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        self.first_read_s = first_read_s
        self.max_gap_s = max_gap_s
        self.min_gap_s = min_gap_s
        self.clock = clock
        self.sleep = sleep
        self.lower = 0.0
        self.upper: float | None = None
        self._changed = threading.Condition()
        self._scout: object | None = None
        self._probing = False

    def known(self) -> float | None:
        """The age at which a canary is readable, if the reads so far agree on one."""
        with self._changed:
            return self._known()

    def _known(self) -> float | None:
        return self.upper if self.upper is not None and self.upper > self.lower else None

    def wait_readable(
        self, read: Callable[[float], T | None], *, sent_at: float, timeout_s: float, trace_id: str, sent_with: str
    ) -> tuple[T, float]:
        """Read a canary sent at ``sent_at`` (on ``clock``) when it can be there; return what
        ``read`` found and the age it was found at. ``read(budget_s)`` reads once (its retries
        within ``budget_s``) and returns None while the canary is not readable.

        Raises ``LangfuseCanaryTimeoutError`` once ``timeout_s`` has passed (one last read at the
        deadline); whatever ``read`` raises goes through.
        """
        me = object()
        missed: float | None = None  # the age of this canary's last read that found nothing
        try:
            while True:
                age = self.clock() - sent_at
                with self._changed:
                    target, probe = self._next_read(me, age, missed)
                    if target is None and age < timeout_s:
                        self._changed.wait(timeout_s - age)
                        continue
                target = min(age if target is None else target, timeout_s)
                if target > age:
                    self.sleep(target - age)
                read_at = self.clock() - sent_at
                try:
                    found = read(max(timeout_s - read_at, 0.0))
                finally:
                    if probe:
                        with self._changed:
                            self._probing = False
                            self._changed.notify_all()
                self._learn(read_at, found is not None)
                if found is not None:
                    return found, read_at
                if read_at >= timeout_s:
                    raise LangfuseCanaryTimeoutError(
                        f"Canary trace {trace_id} sent with {sent_with} was not readable after {read_at:.1f}s; "
                        "ingestion may be delayed or stuck (check the worker), or raise the timeout",
                        trace_id=trace_id,
                        waited_s=read_at,
                    )
                missed = read_at
        finally:
            with self._changed:
                if self._scout is me:
                    self._scout = None
                    self._changed.notify_all()

    def _next_read(self, me: object, age: float, missed: float | None) -> tuple[float | None, bool]:
        """The age to read this canary at and whether that read is a probe; None: wait for news."""
        earliest = age if missed is None else max(age, missed + self.min_gap_s)
        known = self._known()
        if known is not None:
            if missed is None and not self._probing and known - self.lower > RESOLUTION * known:
                middle = (self.lower + known) / 2
                if middle > earliest:
                    self._probing = True
                    return middle, True
            return max(known, earliest), False
        if self._scout is not None and self._scout is not me:
            return None, False
        self._scout = me
        base = max(self.lower, missed or 0.0)
        target = self.first_read_s if base <= 0 else base + min(max(base, self.min_gap_s), self.max_gap_s)
        return max(target, earliest), False

    def _learn(self, age: float, readable: bool) -> None:
        with self._changed:
            if readable:
                if age <= self.lower:  # readable sooner than once seen: the delay varies
                    self.lower = age * (1 - RESOLUTION)
                self.upper = age if self._known() is None else min(age, self.upper or age)
            else:
                self.lower = max(self.lower, age)
            self._changed.notify_all()


_installed: dict[str, CanaryTiming] = {}
_installed_lock = threading.Lock()


def timing_for(host: str) -> CanaryTiming:
    """The timing the running fleet shares for ``host``, else a fresh one (a lone entry)."""
    with _installed_lock:
        return _installed.get(host.rstrip("/")) or CanaryTiming()


@contextlib.contextmanager
def installed(hosts: Iterable[str]) -> Iterator[dict[str, CanaryTiming]]:
    """One shared timing per Langfuse host for the duration of a fleet run."""
    timings = {host.rstrip("/"): CanaryTiming() for host in hosts}
    with _installed_lock:
        _installed.update(timings)
    try:
        yield timings
    finally:
        with _installed_lock:
            for host, timing in timings.items():
                if _installed.get(host) is timing:
                    del _installed[host]
