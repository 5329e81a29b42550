"""Times another host wrote, read with this host's clock (README "Safety guarantees": clock skew).

A rotation records when it finished (``rotated_at``) with the clock of the worker that ran it. Hosts
of one fleet agree within seconds when they keep time (NTP); a worker whose clock runs ahead writes
a time in the future, and anyone allowed to write the store's metadata can write any time at all.
Such a time is never read as "just rotated": the key's age is unknown.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

MAX_CLOCK_SKEW_S = 300.0
"""How far ahead of this host's clock a time written elsewhere may be and still count (5 minutes:
well above the difference between clocks kept by NTP, well below any rotation policy's period).
Further ahead, the key's age is unknown: ``status`` says so, ``report`` finds it overdue, and a
fleet run does not skip the entry."""


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def in_the_future(when: datetime, now: datetime) -> bool:
    """``when`` lies more than ``MAX_CLOCK_SKEW_S`` ahead of ``now`` (a time without a zone is UTC)."""
    return _aware(when) - _aware(now) > timedelta(seconds=MAX_CLOCK_SKEW_S)


def future_note(when: datetime) -> str:
    """One line saying why the key's age is unknown."""
    return (
        f"the store says the key was rotated at {_aware(when).isoformat(timespec='seconds')}, in the future "
        f"(more than {MAX_CLOCK_SKEW_S:g} s ahead of this host's clock: a worker's clock ahead, or edited metadata)"
    )
