"""The append-only audit log: one JSON object per line, in Elastic Common Schema (ECS) field names so
a SIEM takes it as it is (docs/audit-log.md).

Each line::

    {"@timestamp": "2026-11-29T20:00:00.123Z", "ecs": {"version": "8.11.0"},
     "event": {"kind": "event", "dataset": "langfuse_rotate.audit", "action": "rotate",
               "outcome": "success"},                      # success | failure | unknown
     "message": "rotate chatbot-prod: rotated",
     "user": {"name": "alice"}, "host": {"name": "worker-1"},
     "service": {"name": "langfuse-rotate", "version": "0.1.0"},
     "labels": {"entry": "chatbot-prod", "rotation_id": "...", "run_id": "..."},
     "langfuse_rotate": {"schema_version": 1, "resource": "langfuse.project.chatbot-prod",
                         "outcome": "rotated", "final": true, "command": "rotate",
                         "initiator": {...}, ...details}}

Every run of every command writes exactly one line with ``langfuse_rotate.final: true`` (its
outcome, whatever it is: done, refused, bad input, setup failure) and, before it, one line per
step that changed something. Every line carries a run id (the Prefect flow run id, else a fresh
UUID per run) and the rotation id once there is one. Lines are fsynced. Only public facts go in
(public keys, key ids, store versions, run ids); ``scrub`` runs over every line as a last guard.

``audit.path: "-"`` writes the lines to stdout (containers); the default path is
``$XDG_STATE_HOME/langfuse-rotate/audit.jsonl`` (``~/.local/state/...`` when unset).

The file is the rotator's own: neither it nor its directory is opened through a symbolic link, and
a line is written only when both belong to this user and nobody else can write to them (as the lock
directory, ``flows.rotation.lock``), so another local user can neither point the log at a file of their
choosing nor pre-create it and truncate it later. A line that cannot be written never stops a run:
the run goes on (an emergency contains), the failure is said once on stderr and kept on the run
(``RunContext.audit_error``), and ``audited_run`` turns the run's result into one that needs a
person (exit 4) and notifies.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import getpass
import json
import os
import socket
import stat
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, TypeVar

from flows.models import DONE_STATUSES
from flows.redact import scrub
from flows.state import state_dir

ACTOR_ENV_VAR = "LANGFUSE_ROTATE_ACTOR"
SCHEMA_VERSION = 1
ECS_VERSION = "8.11.0"
RESOURCE_PREFIX = "langfuse.project."
"""One name for an entry everywhere: audit lines, Prefect events and notifications."""
STDOUT = "-"

_SUCCESS = {"done", "rotated", "contained", "reconciled", "planned", "approved", "sent", "delivered", "success"}
_FAILURE = {"failed", "rolled_back", "in_progress", "bad_input", "refused", "rejected", "failure", "error"}


def resource_id(entry: str | None) -> str | None:
    """``langfuse.project.<entry>``: the entry's resource name (``<entry>`` is the configured name)."""
    return f"{RESOURCE_PREFIX}{entry}" if entry else None


def default_audit_path() -> Path:
    """``audit.jsonl`` in the state directory (``flows.state``): ``$XDG_STATE_HOME/langfuse-rotate/``,
    else ``~/.local/state/langfuse-rotate/``."""
    return state_dir() / "audit.jsonl"


def ecs_outcome(outcome: str) -> str:
    """A status or step outcome as ECS ``event.outcome``: success, failure or unknown."""
    if outcome in _SUCCESS:
        return "success"
    if outcome in _FAILURE:
        return "failure"
    return "unknown"


def default_actor() -> str:
    explicit = os.environ.get(ACTOR_ENV_VAR)
    if explicit:
        return explicit
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"


# --- who started this run, and its run id -------------------------------------------------------


@dataclass
class RunContext:
    """The run every audit line of this thread belongs to."""

    command: str
    run_id: str
    initiator: dict[str, Any]
    user: str
    final_written: bool = False
    notified: bool = False
    parent: RunContext | None = None
    audit_error: str | None = None
    """Why an audit line of this run (or a nested one) could not be written: the first reason."""

    def mark_final(self) -> None:
        node: RunContext | None = self
        while node is not None:
            node.final_written = True
            node = node.parent

    def mark_audit_failed(self, error: str) -> bool:
        """Keep the first reason on this run and its parents; True when this run had none yet."""
        first = self.audit_error is None
        node: RunContext | None = self
        while node is not None:
            if node.audit_error is None:
                node.audit_error = error
            node = node.parent
        return first


_current: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar("langfuse_rotate_run", default=None)


def current_run() -> RunContext | None:
    return _current.get()


def cli_initiator() -> dict[str, Any]:
    return {"type": "cli", "user": default_actor(), "host": socket.gethostname()}


@contextlib.contextmanager
def run_context(
    command: str,
    *,
    run_id: str | None = None,
    initiator: dict[str, Any] | None = None,
    user: str | None = None,
) -> Iterator[RunContext]:
    """Open a run (nested runs inherit their parent's run id and initiator unless given)."""
    parent = _current.get()
    chosen_initiator = initiator or (parent.initiator if parent else cli_initiator())
    ctx = RunContext(
        command=command,
        run_id=run_id or (parent.run_id if parent else str(uuid.uuid4())),
        initiator=chosen_initiator,
        user=user or (parent.user if parent else str(chosen_initiator.get("user") or default_actor())),
        parent=parent,
    )
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


# --- the log ------------------------------------------------------------------------------------

_stdout_lock = threading.Lock()
_stdout_stream: list[TextIO | None] = [None]


def send_stdout_lines_to(stream: TextIO | None) -> None:
    """Where ``audit.path: "-"`` writes (default stdout). ``--json`` moves them to stderr, so stdout
    holds only the result object."""
    _stdout_stream[0] = stream


class AuditLog:
    def __init__(self, path: Path | str | None, *, actor: str | None = None, run_id: str | None = None) -> None:
        self.path = Path(path) if path is not None else default_audit_path()
        self.run = _current.get()
        self.actor = actor or (self.run.user if self.run else default_actor())
        self.run_id = run_id or (self.run.run_id if self.run else str(uuid.uuid4()))
        self.rotation_id: str | None = None
        self.host = socket.gethostname()

    def record(self, action: str, resource: str, outcome: str, **details: Any) -> None:
        """One step line. ``resource`` may be ``entry:<name>`` (or end in ``entry:<name>``)."""
        self._write(action, _entry_of(resource), outcome, details, final=False)

    def final(
        self,
        action: str,
        entry: str | None,
        outcome: str,
        *,
        rotation_id: str | None = None,
        **details: Any,
    ) -> None:
        """The run's one final line; writing it marks the run (and its parents) as audited."""
        if rotation_id:
            self.rotation_id = rotation_id
        self._write(action, entry, outcome, details, final=True)
        run = _current.get()
        if run is not None:
            run.mark_final()

    def _write(self, action: str, entry: str | None, outcome: str, details: dict[str, Any], *, final: bool) -> None:
        labels = {"entry": entry, "rotation_id": self.rotation_id, "run_id": self.run_id}
        ours: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "resource": resource_id(entry),
            "outcome": outcome,
            "final": final,
        }
        if self.run is not None:
            ours["command"] = self.run.command
            ours["initiator"] = self.run.initiator
        ours.update(details)
        line = {
            "@timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "ecs": {"version": ECS_VERSION},
            "event": {
                "kind": "event",
                "dataset": "langfuse_rotate.audit",
                "action": action,
                "outcome": ecs_outcome(outcome),
            },
            "message": f"{action} {entry or '-'}: {outcome}",
            "user": {"name": self.actor},
            "host": {"name": self.host},
            "service": {"name": "langfuse-rotate", "version": _version()},
            "labels": {k: v for k, v in labels.items() if v},
            "langfuse_rotate": ours,
        }
        text = scrub(json.dumps(line, default=str, sort_keys=False)) + "\n"
        if str(self.path) == STDOUT:
            with _stdout_lock:
                stream = _stdout_stream[0] or sys.stdout
                stream.write(text)
                stream.flush()
            return
        try:
            append_line(self.path, text.encode())
        except AuditFileError as exc:
            self._failed(str(exc))

    def _failed(self, error: str) -> None:
        """A line that could not be written: kept on the run, said once on stderr, never raised
        (an audit failure must not stop a containment)."""
        run = _current.get() or self.run
        first = run.mark_audit_failed(error) if run is not None else True
        if first:
            print(f"error: the audit line could not be written: {error}", file=sys.stderr, flush=True)


class AuditFileError(Exception):
    """The audit file or its directory is not the rotator's own, or the line could not be written."""


_OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC


def append_line(path: Path, data: bytes) -> None:
    """Append ``data`` to the audit file at ``path``; ``AuditFileError`` (one line) when the file or
    its directory is a symbolic link, not this user's, writable by others, or not a regular file.

    The directory is created (0755, before the umask) when missing and opened without following a
    link; the file is opened through it, never through a link, and checked on its descriptor, so
    nothing can be swapped in between the check and the write."""
    directory = path.parent
    try:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise AuditFileError(f"cannot create the audit directory {directory}: {exc.strerror}") from None
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | _OPEN_FLAGS)
    except OSError as exc:
        if os.path.islink(directory):
            raise AuditFileError(
                f"the audit directory {directory} is a symbolic link; point audit.path at the real directory"
            ) from None
        raise AuditFileError(f"cannot open the audit directory {directory}: {exc.strerror}") from None
    try:
        _check_own(os.fstat(dir_fd), f"the audit directory {directory}")
        try:
            # O_NONBLOCK: a FIFO put there opens at once (and is refused) instead of waiting for a reader.
            fd = os.open(
                path.name, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK | _OPEN_FLAGS, 0o640, dir_fd=dir_fd
            )
        except OSError as exc:
            if os.path.islink(path):
                raise AuditFileError(f"the audit file {path} is a symbolic link; refusing to follow it") from None
            with contextlib.suppress(OSError):
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    raise AuditFileError(f"the audit file {path} is not a regular file") from None
            raise AuditFileError(f"cannot open the audit file {path}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise AuditFileError(f"the audit file {path} is not a regular file")
            _check_own(info, f"the audit file {path}")
            # O_APPEND: concurrent writers never interleave within a line of this size; fsync: a
            # line written is a line kept, even if the host dies right after.
            os.write(fd, data)
            os.fsync(fd)
        except OSError as exc:
            raise AuditFileError(f"cannot write the audit file {path}: {exc.strerror}") from None
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


def _check_own(info: os.stat_result, what: str) -> None:
    if info.st_uid != os.geteuid():
        raise AuditFileError(f"{what} is owned by uid {info.st_uid}, not by this user (uid {os.geteuid()})")
    if info.st_mode & 0o022:
        raise AuditFileError(f"{what} is writable by other users (mode {stat.S_IMODE(info.st_mode):o})")


def _entry_of(resource: str) -> str | None:
    marker = resource.rfind("entry:")
    if marker >= 0:
        return resource[marker + len("entry:") :] or None
    if resource.startswith(RESOURCE_PREFIX):
        return resource[len(RESOURCE_PREFIX) :] or None
    return resource or None


@functools.cache
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("langfuse-key-rotation")
    except PackageNotFoundError:
        return "unknown"


# --- the final line of a run --------------------------------------------------------------------


def audit_path_for(config_path: str | os.PathLike[str] | None) -> Path:
    """The configured audit path, or the default one when the configuration cannot be read."""
    from flows.config.model import load_config
    from flows.errors import ConfigError

    try:
        return load_config(config_path, warn=False).audit.path
    except (ConfigError, OSError, ValueError):
        return default_audit_path()


def final_line_written() -> bool:
    run = _current.get()
    return run is not None and run.final_written


def audit_failure(
    command: str,
    entry: str | None,
    error: BaseException | str,
    *,
    config_path: str | os.PathLike[str] | None = None,
    path: Path | None = None,
    outcome: str | None = None,
) -> None:
    """The final line of a run that stopped before it produced a result (bad input, a crash in the
    tool). Written once: a run whose final line is already written is left alone."""
    if final_line_written() or getattr(error, "audited", False):
        return
    from flows.errors import ConfigError

    if outcome is None:
        bad_input = isinstance(error, ConfigError) or type(error).__name__ == "BadInputError"
        outcome = "bad_input" if bad_input else "failed"
    message = " ".join((str(error) or type(error).__name__).split()) if error else ""
    log = AuditLog(path or audit_path_for(config_path))
    log.final(command, entry, outcome, error=scrub(message))
    _mark_audited(error)


def _mark_audited(error: BaseException | str) -> None:
    if isinstance(error, BaseException):
        with contextlib.suppress(AttributeError, TypeError):
            error.audited = True  # type: ignore[attr-defined]


def audit_result(command: str, result: Any, *, path: Path | None = None, **details: Any) -> None:
    """The final line of a run that produced a ``RotationResult``."""
    log = AuditLog(path if path is not None else default_audit_path())
    log.final(
        command,
        result.project or None,
        result.status,
        rotation_id=result.rotation_id,
        mode=result.mode,
        old_public_key=result.old_public_key,
        new_public_key=result.new_public_key,
        store=result.store,
        store_version=result.store_version,
        verified=result.verified,
        old_key_rejected=result.old_key_rejected,
        lagging=result.lagging_consumers or None,
        silent=result.silent_consumers or None,
        orchestrator=result.orchestrator,
        prefect_flow_run_id=result.prefect_flow_run_id,
        error=result.error,
        duration_s=result.duration_s,
        **details,
    )


F = TypeVar("F", bound=Callable[..., Any])


def audited_run(fn: F) -> F:
    """For ``flows.rotation.entry_run.execute(kind, project, config_path, runner, ..., config=None)``: loads
    the configuration once, unless the caller already did (``config``), and hands it down as
    ``config``; every call writes exactly one final line, whatever happens inside (result, bad
    input, a configuration that cannot be read, an unexpected error)."""

    @functools.wraps(fn)
    def wrapper(kind: str, project: str, config_path: str | None, *args: Any, **kwargs: Any) -> Any:
        from flows.config.model import load_config
        from flows.redact import install_redaction

        install_redaction()
        with run_context(kind, run_id=kwargs.get("flow_run_id")) as run:
            config = kwargs.get("config")
            try:
                if config is None:
                    config = kwargs["config"] = load_config(config_path)
                result = fn(kind, project, config_path, *args, **kwargs)
            except BaseException as exc:
                if not run.final_written:
                    path = config.audit.path if config is not None else default_audit_path()
                    audit_failure(kind, project, exc, path=path)
                raise
            if not run.final_written:
                audit_result(kind, result, path=config.audit.path)
            if run.audit_error is not None:
                result = _audit_failed(result, run.audit_error, config, config_path)
            return result

    return wrapper  # type: ignore[return-value]


_DONE = DONE_STATUSES  # a run that was done


def _audit_failed(result: Any, error: str, config: Any, config_path: str | None) -> Any:
    """The result of a run some audit line of which could not be written: a run that was done needs
    a person (exit 4: done, but its record is missing); a failed or refused one keeps its status
    (and exit code); either way the error says so, and a notification too (inside a fleet run, its
    summary does)."""
    from flows.rotation.notification import held_for_summary, notification_for, send_to

    said = f"the audit line could not be written: {error}"
    if result.status in _DONE:
        update = {"status": "needs_attention", "error": f"{result.status}, but {said}"}
    else:
        update = {"error": f"{result.error}; {said}" if result.error else said}
    changed = result.model_copy(update=update)
    if held_for_summary.get() is None:
        send_to(config_path, notification_for(changed), config=config)
    return changed
