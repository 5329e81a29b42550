"""The append-only audit log: one JSON object per line, in Elastic Common Schema (ECS) field names so
a SIEM takes it as it is (README "Audit log").

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
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import getpass
import json
import os
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, TypeVar

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

    def mark_final(self) -> None:
        node: RunContext | None = self
        while node is not None:
            node.final_written = True
            node = node.parent


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_APPEND: concurrent writers never interleave within a line of this size; fsync: a line
        # written is a line kept, even if the host dies right after.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)


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
    from flows.config import load_config
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
        orchestrator=result.orchestrator,
        prefect_flow_run_id=result.prefect_flow_run_id,
        error=result.error,
        duration_s=result.duration_s,
        **details,
    )


F = TypeVar("F", bound=Callable[..., Any])


def audited_run(fn: F) -> F:
    """For ``flows.entry_run.execute(kind, project, config_path, runner, ..., config=None)``: loads
    the configuration once, unless the caller already did (``config``), and hands it down as
    ``config``; every call writes exactly one final line, whatever happens inside (result, bad
    input, a configuration that cannot be read, an unexpected error)."""

    @functools.wraps(fn)
    def wrapper(kind: str, project: str, config_path: str | None, *args: Any, **kwargs: Any) -> Any:
        from flows.config import load_config
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
            return result

    return wrapper  # type: ignore[return-value]
