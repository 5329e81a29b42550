"""All mutable simulator state behind one lock, plus authentication and key deletion.

Auth resolves Basic credentials by the hash of the *secret* through the API-key cache, exactly as
`ApiAuthService.verifyAuthHeaderAndReturnScope` does; deletion reproduces the evict→row race.
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.langfuse_sim.cache import ApiKeyCache
from devstack.langfuse_sim.config import SimConfig
from devstack.langfuse_sim.faults import Fault
from devstack.langfuse_sim.model import ApiKey, hash_secret
from devstack.langfuse_sim.ratelimit import RateLimiter
from devstack.langfuse_sim.store import Bootstrap, Store, write_json_atomic
from devstack.langfuse_sim.telemetry import TelemetryStore
from devstack.langfuse_sim.wire import Response

CONFIRM_HOST = ". Confirm that you've configured the correct host."
INVALID_CREDENTIALS = "Invalid credentials" + CONFIRM_HOST


@dataclass
class Scope:
    key: ApiKey
    access_level: str  # "project" | "organization" | "scores"


@dataclass
class AuthResult:
    scope: Scope | None = None
    error: str | None = None


class SimState:
    def __init__(
        self,
        store: Store,
        bootstrap: Bootstrap,
        *,
        state_file: Path | None,
        admin_api_key: str | None,
        version: str,
    ) -> None:
        self.lock = threading.RLock()
        self.store = store
        self.bootstrap = bootstrap
        self.state_file = state_file
        self.admin_api_key = admin_api_key
        self.default_version = version
        self.config = SimConfig(version=version)
        self.cache = ApiKeyCache()
        self.rate_limiter = RateLimiter()
        self.telemetry = TelemetryStore()
        self.faults: list[Fault] = []
        self.next_fault_id = 1
        self.requests: list[dict[str, Any]] = []
        self.seq = 0
        #: Bumped by reset(); a request that started before a reset is not logged after it.
        self.epoch = 0
        #: Added to the wall clock for the API-key cache's TTLs, visibility delays and rate-limit
        #: windows: `POST /_sim/clock` moves it forward, reset sets it back to 0.
        self.clock_offset_s = 0.0
        #: Deletes inside their race window now; `POST /_sim/race/release` ends those windows early.
        self.deletes_in_window = 0
        self._race_release = threading.Event()

    def now(self) -> float:
        """The simulator's clock: the wall clock plus whatever `POST /_sim/clock` added."""
        return time.time() + self.clock_offset_s

    def advance_clock(self, seconds: float) -> float:
        with self.lock:
            self.clock_offset_s += seconds
            return self.clock_offset_s

    def release_race_windows(self) -> int:
        """End every delete's race window in progress now (later deletes get a full window)."""
        with self.lock:
            released, self._race_release = self._race_release, threading.Event()
            waiting = self.deletes_in_window
        released.set()
        return waiting

    # -- persistence / reset ---------------------------------------------------------------------
    def persist(self) -> None:
        """Write the key/project rows (hashes only) if `--state` was given. Caller holds the lock."""
        if self.state_file is not None:
            write_json_atomic(self.state_file, self.store.to_json())

    def reset(self) -> None:
        with self.lock:
            self.store = self.bootstrap.store.clone()
            self.config = SimConfig(version=self.default_version)
            self.cache.clear()
            self.rate_limiter.clear()
            self.telemetry.clear()
            self.faults.clear()
            self.requests.clear()
            self.seq = 0
            self.epoch += 1
            self.clock_offset_s = 0.0
            self.persist()
        self.release_race_windows()

    # -- request log -----------------------------------------------------------------------------
    def log_request(
        self, method: str, path: str, status: int | None, public_key: str | None, epoch: int | None = None
    ) -> None:
        with self.lock:
            if epoch is not None and epoch != self.epoch:
                return  # e.g. a delayed request from the previous test finishing after /_sim/reset
            self.seq += 1
            self.requests.append(
                {"seq": self.seq, "method": method, "path": path, "status": status, "public_key": public_key}
            )

    # -- faults ----------------------------------------------------------------------------------
    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.count -= 1
                    if fault.count == 0:
                        self.faults.remove(fault)
                    return fault
        return None

    # -- rate limits -----------------------------------------------------------------------------
    def rate_limit(self, org_id: str, resource: str, route: str | None = None) -> Response | None:
        with self.lock:
            limits = self.config.rate_limits or {}
            spec = limits.get(resource)
            if spec is None:
                return None
            return self.rate_limiter.consume(org_id, resource, int(spec[0]), float(spec[1]), self.now(), route)

    # -- authentication --------------------------------------------------------------------------
    def authenticate(self, header: str | None) -> AuthResult:
        if not header:
            return AuthResult(error="No authorization header")
        if header.startswith("Basic "):
            return self._basic(header[len("Basic ") :])
        if header.startswith("Bearer "):
            return self._bearer(header[len("Bearer ") :].strip())
        return AuthResult(error="Invalid authorization header")

    def _basic(self, encoded: str) -> AuthResult:
        try:
            decoded = base64.b64decode(encoded.strip(), validate=False).decode("utf-8", errors="replace")
        except (binascii.Error, ValueError):
            decoded = ""
        public_key, sep, secret_key = decoded.partition(":")
        if not sep or not public_key or not secret_key:
            return AuthResult(error="Invalid authorization header" + CONFIRM_HOST)
        with self.lock:
            key = self._resolve_secret(public_key, secret_key)
            if key is None:
                return AuthResult(error=INVALID_CREDENTIALS)
            if key.public_key != public_key and self.config.strict_public_key:
                # Issue #16222's proposal; the snapshot server only logs the mismatch.
                return AuthResult(error=INVALID_CREDENTIALS)
            level = "project" if key.scope == "PROJECT" else "organization"
            return AuthResult(scope=Scope(key=key, access_level=level))

    def _resolve_secret(self, public_key: str, secret_key: str) -> ApiKey | None:
        """Cache (GETEX) → DB by fast hash → negative entry only if the public key is unknown too."""
        cfg = self.config
        mode, ttl, now = cfg.cache_mode, cfg.effective_ttl(), self.now()
        secret_hash = hash_secret(secret_key, self.store.salt)
        hit, cached = self.cache.get(secret_hash, now, mode, ttl)
        if hit:
            return cached
        row = self.store.key_by_hash(secret_hash)
        if row is not None:
            self.cache.put(secret_hash, row, now, mode, ttl)
            return row
        if self.store.key_by_public(public_key) is None:
            self.cache.put(secret_hash, None, now, mode, ttl)
        return None

    def _bearer(self, public_key: str) -> AuthResult:
        """Bearer <publicKey>: direct DB lookup, no cache; scores-only access."""
        with self.lock:
            key = self.store.key_by_public(public_key)
        if key is None:
            return AuthResult(error="Invalid public key" + CONFIRM_HOST)
        if key.scope == "ORGANIZATION":
            return AuthResult(error="Unauthorized: Cannot use organization key with bearer auth" + CONFIRM_HOST)
        return AuthResult(scope=Scope(key=key, access_level="scores"))

    # -- key deletion (the race) -----------------------------------------------------------------
    def delete_key(self, key_id: str) -> bool:
        """Hard-delete a key the way `deleteApiKeyFromDb` does in the configured cache mode.

        snapshot: evict, (race window), drop the row — a request inside the window re-caches the key.
        fixed:    drop the row, (race window), evict — post-#17651 order.
        The race window is slept *without* the lock so concurrent requests really interleave.
        """
        with self.lock:
            key = self.store.keys.get(key_id)
            if key is None:
                return False
            mode, race = self.config.cache_mode, self.config.race_window_s
            if mode == "fixed":
                self._drop_row(key_id)
            else:
                self.cache.evict([key.secret_hash])
        if race > 0:
            with self.lock:
                self.deletes_in_window += 1
                released = self._race_release
            try:
                released.wait(race)  # a real wait (requests interleave), unless a test ends it early
            finally:
                with self.lock:
                    self.deletes_in_window -= 1
        with self.lock:
            if mode == "fixed":
                self.cache.evict([key.secret_hash])
            else:
                self._drop_row(key_id)
            self._simulate_stale_entry(key)
        return True

    def _drop_row(self, key_id: str) -> None:
        self.store.keys.pop(key_id, None)
        self.persist()

    def _simulate_stale_entry(self, key: ApiKey) -> None:
        """`stale_after_delete`: behave as if a concurrent request hit the race and re-cached the key."""
        cfg = self.config
        if cfg.stale_after_delete:
            self.cache.put(key.secret_hash, key, self.now(), cfg.cache_mode, cfg.effective_ttl())

    def invalidate_keys(self, keys: list[ApiKey]) -> int:
        """Targeted invalidation: works from rows, so it cannot reach a row that is already gone."""
        with self.lock:
            return self.cache.evict([k.secret_hash for k in keys])
