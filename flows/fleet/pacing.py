"""The limiters a fleet run paces its requests with (docs/fleet.md, pacing).

- One ``Pacer`` per Langfuse host from ``langfuse.max_requests_per_min`` (unset: no pacing, but a
  429's ``Retry-After`` still pauses every request of the fleet), one per store from
  ``stores.<name>.max_writes_per_s`` (AWS default 40: AWS allows 50 writes/s per account and region).
- A pacer spaces requests evenly (no bursts: Langfuse counts in fixed one-minute windows, so
  evenly spaced requests below the limit never cross it).
- One ``flows.rotation.canary_timing.CanaryTiming`` per Langfuse host: the entries read their canaries
  back when the fleet's first canaries showed they can be there.
- Spread over several workers (``shared=True`` with a Prefect server), the budget is shared through
  a Prefect global concurrency limit with slot decay: each process takes slots in small batches
  (``connectors.prefect_api``, mode ``rate_limit``) and spends them locally.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import threading
import time
from collections.abc import Callable, Iterator

from connectors import pacing
from connectors.errors import PrefectApiError
from connectors.prefect_api import ConcurrencyLimit, PrefectApi
from flows.config.model import RotationConfig
from flows.rotation import canary_timing
from flows.rotation.lock import prefect_api

Clock = Callable[[], float]
Sleep = Callable[[float], None]


class Pacer:
    """Evenly spaced permits at ``rate_per_s`` (None: unlimited), paused after a 429."""

    def __init__(
        self,
        rate_per_s: float | None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
        shared: SharedBudget | None = None,
    ) -> None:
        self.rate_per_s = rate_per_s
        self._interval = 1.0 / rate_per_s if rate_per_s else 0.0
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = 0.0
        self._paused_until = 0.0
        self._shared = shared
        self.waited_s = 0.0

    def acquire(self) -> None:
        while True:
            with self._lock:
                now = self._clock()
                start = max(now, self._next, self._paused_until)
                if self._interval:
                    self._next = start + self._interval
            if start > now:
                self._sleep(start - now)
                self.waited_s += start - now
            with self._lock:
                if self._clock() + 1e-6 >= self._paused_until:
                    break  # a pause that began while this caller slept sends it round again
        if self._shared is not None:
            self._shared.take()

    def slow_down(self, seconds: float) -> None:
        with self._lock:
            until = self._clock() + max(seconds, 0.0)
            if until > self._paused_until:
                self._paused_until = until


class SharedBudget:
    """Slots of a Prefect global concurrency limit with slot decay, taken ``batch`` at a time.

    The limit is ``batch`` slots decaying at ``rate_per_s``, so all holders together get
    ``rate_per_s`` permits per second and at most ``batch`` at once.
    """

    def __init__(self, name: str, rate_per_s: float) -> None:
        self.name = name
        self.rate_per_s = rate_per_s
        self.batch = max(1, math.ceil(rate_per_s / 4))
        self._left = 0
        self._lock = threading.Lock()

    def ensure(self) -> None:
        self._api().ensure_limit(
            ConcurrencyLimit(name=self.name, limit=self.batch, slot_decay_per_second=self.rate_per_s)
        )

    def take(self) -> None:
        with self._lock:
            if self._left == 0:
                self._api().take_rate(self.name, self.batch)
                self._left = self.batch
            self._left -= 1

    @staticmethod
    def _api() -> PrefectApi:
        api = prefect_api()
        if api is None:
            raise PrefectApiError("shared pacing needs a Prefect server (PREFECT_API_URL)")
        return api


def budget_name(kind: str, key: str) -> str:
    """The global concurrency limit's name: stable for the same Langfuse host or store."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"langfuse-rotate-pace-{kind}-{digest}"


def store_gate_key(config: RotationConfig, name: str) -> str:
    """The pacing key of store ``name``, as its kind defines it (``StoreSettings.pacing_key``)."""
    return config.stores[name].pacing_key()


@contextlib.contextmanager
def fleet_pacing(config: RotationConfig, *, shared: bool = False) -> Iterator[dict[str, Pacer]]:
    """Install the fleet's pacers for its duration; yields them by gate key."""
    limits: dict[str, tuple[str, float | None]] = {}
    hosts = {config.langfuse.host, *(config.host_for(e) for e in config.projects)}
    per_min = config.langfuse.max_requests_per_min
    for host in hosts:
        limits[pacing.langfuse_key(host)] = ("langfuse", per_min / 60 if per_min else None)
    for name, store in config.stores.items():
        key = store_gate_key(config, name)
        rate = store.max_writes_per_s
        known = limits.get(key, ("store", None))[1]
        limits[key] = ("store", min(r for r in (rate, known) if r) if rate or known else None)
    pacers: dict[str, Pacer] = {}
    for key, (kind, rate) in limits.items():
        budget = SharedBudget(budget_name(kind, key), rate) if shared and rate else None
        if budget is not None:
            budget.ensure()
        pacers[key] = Pacer(rate, shared=budget)
        pacing.install(key, pacers[key])
    try:
        with canary_timing.installed(hosts):  # the entries share what their canaries teach
            yield pacers
    finally:
        for key, pacer in pacers.items():
            pacing.remove(key, pacer)
