"""One rotation per key at a time.

Two layers, both released when their holder dies, so a crashed rotation never blocks the next:
- a host-local ``flock`` (the kernel drops it with the process): covers the embedded/ephemeral
  Prefect mode and runs without Prefect, where every run of a key happens on this host;
- a Prefect global concurrency limit ``langfuse-rotate-<entry>`` (limit 1, created on demand,
  taken with a lease over Prefect's public REST API, ``connectors.prefect_api``) when a Prefect
  server is configured, so runs on different workers exclude each other and a crashed holder's
  slot comes back when its lease expires.
The store's check-and-set fences every write again underneath.

A holder killed on this host (SIGKILL, OOM) would block the next run of the entry here until its
lease expires (60 s at the least). So the holder writes its lease id to ``<entry>.lease`` beside
its lock file while it holds both, and removes it when it lets go. The next run takes the flock
first: if it then finds a lease file, the process that wrote it no longer holds the flock, so it is
gone, and its slot is stale: the run releases that lease before asking for a slot. A holder on
another host is never touched: its lease file is on its own host, and its slot expires with its lease.

A fleet takes the slots of a group of entries under one lease (``flows.fleet.group_lease``: two
calls per group instead of two per entry; docs/fleet-requests.md). Such a lease is released as a
whole when the group's last entry is done, so its holder keeps a group file, ``groups/<lease>.group``,
``flock``ed for as long as the lease is held. A run that finds an entry's slot taken looks there once:
a group file nobody holds was left by a holder that is gone, and its lease is released
(``release_dead_groups``).

The lock directory (``LANGFUSE_ROTATE_LOCK_DIR``, default ``locks`` in the state directory
(``flows.state``: ``$XDG_STATE_HOME/langfuse-rotate/locks``, else ``~/.local/state/langfuse-rotate/locks``),
never the shared temporary directory) is private: created 0700, refused unless it belongs to this
user and nobody else can write to it, and neither it nor a lock or lease file is opened through a
symbolic link. Another local user can then neither pre-create it, hold its lock files, nor plant
symlinks that would make a rotation write elsewhere. A refusal is a ``ConfigError`` (exit 2).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from connectors.errors import PrefectApiError
from connectors.prefect_api import Lease, PrefectApi
from flows.errors import LockDirError, RotationInProgressError
from flows.state import state_dir

LOCK_DIR_ENV_VAR = "LANGFUSE_ROTATE_LOCK_DIR"
_POLL_S = 0.2
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def lock_name(entry: str) -> str:
    return f"langfuse-rotate-{entry}"


def default_lock_dir() -> Path:
    """``locks`` in the state directory, beside the default audit log (``flows.state``)."""
    try:
        return state_dir() / "locks"
    except (RuntimeError, KeyError):
        raise LockDirError(
            f"no home directory for the lock files: set XDG_STATE_HOME or {LOCK_DIR_ENV_VAR} to a private directory"
        ) from None


def _lock_dir() -> Path:
    configured = os.environ.get(LOCK_DIR_ENV_VAR)
    path = Path(configured) if configured else default_lock_dir()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LockDirError(f"cannot create the lock directory {path}: {exc.strerror}") from None
    return _private_dir(path)


def _private_dir(path: Path) -> Path:
    """``path`` created 0700 if missing, and refused unless it is private (``_check_private``)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise LockDirError(f"cannot create the lock directory {path}: {exc.strerror}") from None
    _check_private(path)
    return path


def _check_private(path: Path) -> None:
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise LockDirError(f"the lock directory {path} is a symbolic link; point {LOCK_DIR_ENV_VAR} at the real one")
    if not stat.S_ISDIR(info.st_mode):
        raise LockDirError(f"the lock directory {path} is not a directory")
    if info.st_uid != os.geteuid():
        raise LockDirError(
            f"the lock directory {path} is owned by uid {info.st_uid}, not by this user (uid {os.geteuid()}); "
            f"use a directory of your own ({LOCK_DIR_ENV_VAR})"
        )
    if info.st_mode & 0o022:
        raise LockDirError(
            f"the lock directory {path} is writable by other users (mode {stat.S_IMODE(info.st_mode):o}); "
            f"chmod 700 it or use a private directory ({LOCK_DIR_ENV_VAR})"
        )


def _open_private(path: Path, flags: int) -> int:
    """Open a file in the lock directory, never through a symlink, only if it is ours."""
    try:
        fd = os.open(path, flags | _NOFOLLOW, 0o600)
    except OSError as exc:
        if os.path.islink(path):
            raise LockDirError(f"{path} is a symbolic link; refusing to follow it (remove it)") from None
        raise LockDirError(f"cannot open {path}: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
        os.close(fd)
        raise LockDirError(f"{path} is not a regular file of this user; remove it")
    return fd


@contextlib.contextmanager
def local_lock(entry: str, *, wait_s: float, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive ``flock`` on a per-entry file; waits up to ``wait_s`` seconds, calling
    ``on_wait`` between attempts (an emergency refreshes its handover request there)."""
    path = _lock_dir() / f"{lock_name(entry)}.lock"
    fd = _open_private(path, os.O_RDWR | os.O_CREAT)
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
                if on_wait is not None:
                    on_wait()
                time.sleep(_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def prefect_server_configured() -> bool:
    """True when a Prefect API URL is set (a real server, not the embedded ephemeral one)."""
    if os.environ.get("PREFECT_API_URL"):
        return True
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


def prefect_api_from_settings() -> PrefectApi | None:
    """A new client from ``PREFECT_API_URL`` in the environment, else from Prefect's settings
    (its profile; imports ``prefect``). None without an API URL (the ephemeral server)."""
    api = PrefectApi.from_env()
    if api is not None or not prefect_server_configured():
        return api
    from prefect.settings import get_current_settings

    settings = get_current_settings().api
    key = settings.key.get_secret_value() if settings.key is not None else None
    auth = settings.auth_string.get_secret_value() if settings.auth_string is not None else None
    return PrefectApi(str(settings.url), auth_string=auth, api_key=key)


_shared: dict[str | None, PrefectApi | None] = {}
_shared_lock = threading.Lock()


def _configured_api_url() -> str | None:
    url = os.environ.get("PREFECT_API_URL") or None
    if url is not None or not prefect_server_configured():
        return url
    from prefect.settings import get_current_settings

    return str(get_current_settings().api.url)


def prefect_api() -> PrefectApi | None:
    """The process's one client (``prefect_api_from_settings``) per Prefect API URL (from the
    environment or Prefect's settings), shared by every lock holder."""
    url = _configured_api_url()
    with _shared_lock:
        if url not in _shared:
            _shared[url] = prefect_api_from_settings()
        return _shared[url]


def _lease_file(entry: str) -> Path:
    return _lock_dir() / f"{lock_name(entry)}.lease"


def _read_lease(entry: str) -> str | None:
    """The lease id a holder on this host left in its lease file (None: no readable file; an
    unreadable one is removed, there is nothing it could release)."""
    path = _lease_file(entry)
    if not path.exists() and not path.is_symlink():
        return None
    try:
        with os.fdopen(_open_private(path, os.O_RDONLY)) as file:
            return str(json.loads(file.read())["lease_id"])
    except FileNotFoundError:
        return None
    except (LockDirError, OSError, ValueError, KeyError, TypeError):
        path.unlink(missing_ok=True)
        return None


def _write_lease(entry: str, lease_id: str) -> None:
    """Record the lease this holder was granted (private file, never through a symlink)."""
    fd = _open_private(_lease_file(entry), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "w") as file:
        file.write(json.dumps({"lease_id": lease_id, "pid": os.getpid()}))


def _clear_lease(entry: str) -> None:
    _lease_file(entry).unlink(missing_ok=True)


def _slot_taken(entry: str, take_over_after_s: float | None) -> str:
    """What happens when the slot stayed taken: a refusal (``RotationInProgressError``), or for an
    emergency the take-over message for ``LockHeld.taken_over``."""
    name = lock_name(entry)
    if take_over_after_s is None:
        raise RotationInProgressError(
            f"rotation already in progress for '{entry}' (Prefect concurrency limit {name} is taken)"
        )
    return (
        f"Prefect concurrency limit {name} stayed taken for {take_over_after_s:g}s by a run that did not "
        "hand over (on another host, dead or stuck): went ahead without it"
    )


class SharedSlots(Protocol):
    """Slots taken for several entries at once (a fleet's group leases, ``flows.fleet.group_lease``)."""

    def holds(self, entry: str) -> bool:
        """True when the entry's Prefect slot is held for it (taken now if need be); False: the entry
        takes its own."""
        ...


shared_slots: ContextVar[SharedSlots | None] = ContextVar("shared_slots", default=None)
"""Set by a fleet run in its worker threads (``flows.fleet.run``)."""


def _group_dir() -> Path:
    return _private_dir(_lock_dir() / "groups")


class GroupFile:
    """``groups/<lease>.group``, naming a group lease and its entries, ``flock``ed by this process
    until ``remove`` (or its death): created under a temporary name and renamed once locked, so
    ``release_dead_groups`` never sees one that is not held yet."""

    def __init__(self, lease_id: str, entries: Sequence[str]) -> None:
        directory = _group_dir()
        temporary = directory / f".{lease_id}.tmp"
        self.path = directory / f"{lease_id}.group"
        self._fd = _open_private(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(self._fd, json.dumps({"lease_id": lease_id, "entries": list(entries), "pid": os.getpid()}).encode())
        os.rename(temporary, self.path)

    def remove(self, *, released: bool) -> None:
        """Let go of the file: removed when the lease was released, else left for the next
        ``release_dead_groups`` to release."""
        if released:
            self.path.unlink(missing_ok=True)
        os.close(self._fd)


def release_dead_groups(api: PrefectApi) -> bool:
    """Release the group leases whose holder on this host is gone (their group file is not locked
    any more); True when there was one."""
    directory = _group_dir()
    found = False
    for path in sorted(directory.glob("*.group")):
        try:
            fd = _open_private(path, os.O_RDWR)
        except LockDirError:
            continue  # removed meanwhile by its holder, or not ours
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its holder is alive
            try:
                lease_id = str(json.loads(os.read(fd, 1 << 16))["lease_id"])
            except (OSError, ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)
                continue
            try:
                api.release(lease_id)
            except (httpx.HTTPError, PrefectApiError):
                continue  # the next run that finds the slot taken tries again
            path.unlink(missing_ok=True)
            found = True
        finally:
            os.close(fd)
    return found


@dataclass
class LockHeld:
    """How the entry's lock is held. ``taken_over``: the Prefect slot stayed taken by a run on
    another host that did not hand over (dead, its lease not yet expired); an emergency then goes
    ahead without the slot (see ``entry_lock``)."""

    taken_over: str | None = None


@contextlib.contextmanager
def held_lease(api: PrefectApi, lease: Lease, lease_s: float, *, label: str) -> Iterator[None]:
    """Keep ``lease`` alive (renewed every third of ``lease_s``) while the block runs, then
    release it. A holder that dies stops renewing: its slot comes back when the lease expires."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease_s / 3):
            with contextlib.suppress(httpx.HTTPError, PrefectApiError):
                api.renew(lease.lease_id, lease_s)

    renewer = threading.Thread(target=renew, name=f"lease-{label}", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join(5)
        with contextlib.suppress(httpx.HTTPError, PrefectApiError):
            api.release(lease.lease_id)


def _release_stale_lease(api: PrefectApi, entry: str) -> None:
    """The caller holds the entry's flock: a lease file found now was left by a holder on this host
    that is gone, and its slot is released."""
    stale = _read_lease(entry)
    if stale is not None:
        with contextlib.suppress(httpx.HTTPError, PrefectApiError):
            api.release(stale)
        _clear_lease(entry)


@contextlib.contextmanager
def _prefect_lock(
    api: PrefectApi,
    entry: str,
    *,
    wait_s: float,
    lease_s: int,
    on_wait: Callable[[], None] | None = None,
    take_over_after_s: float | None = None,
) -> Iterator[LockHeld]:
    """The entry's Prefect slot (limit 1, leased), with waiting, take-over and the lease file:
    the caller holds the entry's flock (so a lease file found here was left by a holder on this
    host that is gone: its slot is released first)."""
    name = lock_name(entry)
    _release_stale_lease(api, entry)
    held = LockHeld()
    budget = wait_s if take_over_after_s is None else take_over_after_s  # an emergency asks only until it takes over
    deadline = time.monotonic() + budget
    lease = api.acquire(name, lease_s=lease_s, timeout_s=0.0)
    if lease is None and release_dead_groups(api):  # a fleet on this host that died holding the slot
        lease = api.acquire(name, lease_s=lease_s, timeout_s=0.0)
    while lease is None:
        # Short attempts when someone waits actively (``on_wait``: an emergency refreshing its
        # handover request), one long one otherwise.
        attempt_s = 1.0 if on_wait is not None else max(budget, 1.0)
        lease = api.acquire(name, lease_s=lease_s, timeout_s=attempt_s)
        if lease is not None:
            break
        if time.monotonic() < deadline:
            if on_wait is not None:
                on_wait()
            continue
        held.taken_over = _slot_taken(entry, take_over_after_s)
        yield held
        return
    _write_lease(entry, lease.lease_id)
    try:
        with held_lease(api, lease, lease_s, label=entry):
            yield held
    finally:
        _clear_lease(entry)


@contextlib.contextmanager
def entry_lock(
    entry: str,
    *,
    wait_s: float,
    lease_s: int,
    use_prefect: bool,
    on_wait: Callable[[], None] | None = None,
    take_over_after_s: float | None = None,
) -> Iterator[LockHeld]:
    """The entry's lock: the local flock, then the Prefect slot when a server is configured.

    ``take_over_after_s`` (an emergency): a Prefect slot still taken after that long belongs to a
    run that did not hand over although asked to: dead on another host (its lease has not expired
    yet) or stuck in a step. The emergency goes ahead without it; a live holder stops at its next
    check, and the store's check-and-set fences every write. The local flock is never taken over:
    the kernel frees it when its holder dies."""
    with local_lock(entry, wait_s=wait_s, on_wait=on_wait):
        api = prefect_api() if use_prefect else None
        if api is None:
            yield LockHeld()
            return
        group = shared_slots.get()
        if group is not None and group.holds(entry):
            _release_stale_lease(api, entry)
            yield LockHeld()
            return
        with _prefect_lock(
            api, entry, wait_s=wait_s, lease_s=lease_s, on_wait=on_wait, take_over_after_s=take_over_after_s
        ) as held:
            yield held
