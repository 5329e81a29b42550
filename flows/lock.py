"""One rotation per key at a time.

Two layers, both released when their holder dies, so a crashed rotation never blocks the next:
- a host-local ``flock`` (the kernel drops it with the process): covers the embedded/ephemeral
  Prefect mode and runs without Prefect, where every run of a key happens on this host;
- a Prefect global concurrency limit ``langfuse-rotate-<entry>`` (limit 1, strict, created on
  demand, with a lease) when a Prefect server is configured, so runs on different workers exclude
  each other and a crashed holder's slot comes back when its lease expires.
The store's check-and-set fences every write again underneath.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_DIR_ENV_VAR = "LANGFUSE_ROTATE_LOCK_DIR"
_POLL_S = 0.2


class RotationInProgressError(Exception):
    """Another rotation of the same key holds the lock."""


def lock_name(entry: str) -> str:
    return f"langfuse-rotate-{entry}"


def _lock_dir() -> Path:
    configured = os.environ.get(LOCK_DIR_ENV_VAR)
    path = Path(configured) if configured else Path(tempfile.gettempdir()) / "langfuse-rotate-locks"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def local_lock(entry: str, *, wait_s: float) -> Iterator[None]:
    """An exclusive ``flock`` on a per-entry file; waits up to ``wait_s`` seconds."""
    path = _lock_dir() / f"{lock_name(entry)}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RotationInProgressError(
                        f"rotation already in progress for '{entry}' (held by another process on this host)"
                    ) from None
                time.sleep(_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def prefect_server_configured() -> bool:
    """True when a Prefect API URL is set (a real server, not the embedded ephemeral one)."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def _ensure_limit(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


@contextlib.contextmanager
def prefect_lock(entry: str, *, wait_s: float, lease_s: int) -> Iterator[None]:
    from prefect.concurrency.sync import concurrency

    name = lock_name(entry)
    _ensure_limit(name)
    try:
        # A zero timeout would mean "do not even try once"; one short attempt is the intent.
        slot = concurrency(name, occupy=1, strict=True, timeout_seconds=max(wait_s, 1.0), lease_duration=lease_s)
        slot.__enter__()
    except TimeoutError:
        raise RotationInProgressError(
            f"rotation already in progress for '{entry}' (Prefect concurrency limit {name} is taken)"
        ) from None
    try:
        yield
    finally:
        slot.__exit__(None, None, None)


@contextlib.contextmanager
def entry_lock(entry: str, *, wait_s: float, lease_s: int, use_prefect: bool) -> Iterator[None]:
    with local_lock(entry, wait_s=wait_s):
        if use_prefect and prefect_server_configured():
            with prefect_lock(entry, wait_s=wait_s, lease_s=lease_s):
                yield
        else:
            yield
