"""Where the connectors ask for permission before a request: the hook fleet runs pace through.

A fleet run (``flows.fleet.run``) installs one ``Gate`` per Langfuse host and one per store for its
duration; every Langfuse request and every store write of that process waits on it first, and a
429 with ``Retry-After`` pauses the gate (so the whole fleet slows down, not only the entry that
got it). Without an installed gate (single rotations, emergencies) nothing waits.

Connectors only know this protocol; the limiters themselves live in ``flows.fleet.pacing``.
The module also counts requests per gate key, for the benchmark's per-entry figures.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Protocol


class Gate(Protocol):
    def acquire(self) -> None:
        """Block until one more request may be sent."""
        ...

    def slow_down(self, seconds: float) -> None:
        """The server asked every caller to wait ``seconds`` (429 ``Retry-After``)."""
        ...


_lock = threading.Lock()
_gates: dict[str, Gate] = {}
requests: Counter[str] = Counter()
"""Requests seen per key (``langfuse <host>``, ``store ...``), paced ones (``<key> paced``) and 429s."""


def langfuse_key(host: str) -> str:
    return f"langfuse {host.rstrip('/')}"


def vault_key(url: str) -> str:
    return f"store vault {url.rstrip('/')}"


def aws_key(region: str, endpoint_url: str | None) -> str:
    return f"store aws {region} {endpoint_url or ''}".rstrip()


def install(key: str, gate: Gate) -> None:
    with _lock:
        _gates[key] = gate


def remove(key: str, gate: Gate) -> None:
    with _lock:
        if _gates.get(key) is gate:
            del _gates[key]


def before_request(key: str, *, paced: bool = True) -> None:
    """Count the request and, if ``paced`` (every Langfuse request; a store's writes only), wait
    on the key's gate."""
    with _lock:
        requests[key] += 1
        if paced:
            requests[f"{key} paced"] += 1
        gate = _gates.get(key) if paced else None
    if gate is not None:
        gate.acquire()


def rate_limited(key: str, retry_after_s: float | None) -> None:
    """A 429 (or throttling) answer: every caller of this key waits ``retry_after_s`` (1 s if unsaid)."""
    with _lock:
        requests[f"{key} 429"] += 1
        gate = _gates.get(key)
    if gate is not None:
        gate.slow_down(retry_after_s if retry_after_s is not None else 1.0)
