"""When a rotation reads its canary back (flows/rotation/canary_timing.py): when it can be there, not before.

Each canary here is "readable" once its age (on the timing's clock) reaches the delay the test sets:
the same rule the Langfuse simulator applies to a sent trace. Single-canary cases run on a fake
clock that the timing's own sleeps move; the shared-fleet case runs real threads.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

import pytest

from connectors.errors import LangfuseCanaryTimeoutError
from flows.rotation import canary_timing
from flows.rotation.canary_timing import CanaryTiming


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def reader(
    clock: Callable[[], float], sent_at: float, delay_s: float, ages: list[float]
) -> Callable[[float], str | None]:
    """One canary: found once ``delay_s`` old; notes the age of every read."""

    def read(budget_s: float) -> str | None:
        age = clock() - sent_at
        ages.append(round(age, 3))
        return "row" if age >= delay_s else None

    return read


def one_canary(timing: CanaryTiming, clock: FakeClock, delay_s: float, timeout_s: float = 30) -> list[float]:
    ages: list[float] = []
    sent_at = clock()
    timing.wait_readable(
        reader(clock, sent_at, delay_s, ages), sent_at=sent_at, timeout_s=timeout_s, trace_id="t", sent_with="pk"
    )
    return ages


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def timing(clock: FakeClock) -> CanaryTiming:
    return CanaryTiming(clock=clock, sleep=clock.sleep)


def test_a_first_canary_is_read_with_doubling_pauses_never_at_once(timing: CanaryTiming, clock: FakeClock) -> None:
    assert one_canary(timing, clock, delay_s=1.2) == [0.25, 0.5, 1.0, 2.0]
    assert (timing.lower, timing.known()) == (1.0, 2.0)


def test_pauses_between_reads_of_a_slow_canary_stop_growing_at_the_maximum_gap(
    timing: CanaryTiming, clock: FakeClock
) -> None:
    assert one_canary(timing, clock, delay_s=7.0) == [0.25, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0]


def test_later_canaries_are_read_once_at_the_age_the_first_ones_were_readable(
    timing: CanaryTiming, clock: FakeClock
) -> None:
    one_canary(timing, clock, delay_s=5.0)  # reads at 0.25 ... 6.0: readable somewhere in (4, 6]

    later = [one_canary(timing, clock, delay_s=5.0) for _ in range(20)]

    assert sum(len(ages) for ages in later) <= 20 + 3, "a few probes narrow the age; each costs one read"
    assert later[-1] == [pytest.approx(timing.known())]
    assert 5.0 <= later[-1][0] <= 5.0 * 1.2, "the probes brought the read close to the delay"


def test_a_canary_that_misses_the_learnt_age_backs_off_and_teaches_the_new_delay(
    timing: CanaryTiming, clock: FakeClock
) -> None:
    for _ in range(5):
        one_canary(timing, clock, delay_s=1.0)
    learnt = timing.known()
    assert learnt is not None

    slower = one_canary(timing, clock, delay_s=3.0)

    assert slower[0] == pytest.approx(learnt) and len(slower) > 1
    assert all(b - a >= canary_timing.MIN_GAP_S for a, b in itertools.pairwise(slower))
    (after,) = one_canary(timing, clock, delay_s=3.0)
    assert 3.0 <= after <= slower[-1], "read once, at the new age or sooner (a probe)"


def test_a_canary_never_readable_times_out_after_one_last_read_at_the_deadline(
    timing: CanaryTiming, clock: FakeClock
) -> None:
    ages: list[float] = []
    sent_at = clock()

    with pytest.raises(LangfuseCanaryTimeoutError, match=r"^Canary trace t sent with pk was not readable after 3.0s"):
        timing.wait_readable(
            reader(clock, sent_at, 99, ages), sent_at=sent_at, timeout_s=3, trace_id="t", sent_with="pk"
        )

    assert ages == [0.25, 0.5, 1.0, 2.0, 3.0]


def test_while_one_canary_scouts_the_others_wait_for_what_it_learns_instead_of_polling() -> None:
    timing = CanaryTiming(first_read_s=0.05, max_gap_s=0.4, min_gap_s=0.02)
    delay_s, reads, errors = 0.3, {i: list[float]() for i in range(6)}, []

    def entry(i: int) -> None:
        try:
            sent_at = time.monotonic()
            timing.wait_readable(
                reader(time.monotonic, sent_at, delay_s, reads[i]),
                sent_at=sent_at,
                timeout_s=10,
                trace_id=str(i),
                sent_with="pk",
            )
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=entry, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    counts = sorted(len(ages) for ages in reads.values())
    assert counts[-1] >= 3, "one canary scouted with several reads"
    assert counts[:-1] == [1] * 5, reads


def test_a_fleet_shares_one_timing_per_host_and_a_lone_entry_gets_its_own() -> None:
    with canary_timing.installed(["http://lf.example/"]) as timings:
        shared = canary_timing.timing_for("http://lf.example")
        assert shared is timings["http://lf.example"] is canary_timing.timing_for("http://lf.example/")

    assert canary_timing.timing_for("http://lf.example") is not shared
