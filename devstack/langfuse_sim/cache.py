"""The Redis API-key cache (`api-key:<fastHashedSecretKey>`), with the snapshot's GETEX semantics.

* `snapshot`: reads refresh the TTL (GETEX), so an entry in continuous use never expires.
* `fixed`: reads do not refresh (GET); an entry expires a fixed TTL after it was written (PR #17651).
* `off`: nothing is cached.

A value of `None` is the negative entry `"api-key-non-existent"`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from devstack.langfuse_sim.model import ApiKey


@dataclass
class _Entry:
    value: ApiKey | None
    expires_at: float


class ApiKeyCache:
    """Not thread-safe on its own: callers hold the simulator lock."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def get(self, secret_hash: str, now: float, mode: str, ttl: float) -> tuple[bool, ApiKey | None]:
        """Return (hit, value). Expired entries count as misses and are dropped."""
        if mode == "off":
            return False, None
        entry = self._entries.get(secret_hash)
        if entry is None:
            return False, None
        if entry.expires_at <= now:
            del self._entries[secret_hash]
            return False, None
        if mode == "snapshot":
            entry.expires_at = now + ttl  # GETEX … EX ttl
        return True, entry.value

    def put(self, secret_hash: str, value: ApiKey | None, now: float, mode: str, ttl: float) -> None:
        if mode == "off" or ttl <= 0:
            return
        snapshot = dataclasses.replace(value) if value is not None else None
        self._entries[secret_hash] = _Entry(value=snapshot, expires_at=now + ttl)

    def evict(self, secret_hashes: list[str]) -> int:
        return sum(1 for h in secret_hashes if self._entries.pop(h, None) is not None)

    def clear(self) -> int:
        """`invalidate-all` (SCAN api-key:* + DEL) or a Redis flush. Returns the number of entries."""
        count = len(self._entries)
        self._entries.clear()
        return count

    def __len__(self) -> int:
        return len(self._entries)
