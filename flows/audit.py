"""The append-only audit log: one JSON object per line (actor, action, resource, outcome, time).

Only public facts go in (public keys, key ids, store versions, run ids); ``scrub`` runs over
every line before it is written, as a last guard.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flows.redact import scrub

ACTOR_ENV_VAR = "LANGFUSE_ROTATE_ACTOR"


def default_actor() -> str:
    explicit = os.environ.get(ACTOR_ENV_VAR)
    if explicit:
        return explicit
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class AuditLog:
    def __init__(self, path: Path, *, actor: str | None = None, run_id: str | None = None) -> None:
        self.path = path
        self.actor = actor or default_actor()
        self.run_id = run_id

    def record(self, action: str, resource: str, outcome: str, **details: Any) -> None:
        entry = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "actor": self.actor,
            "action": action,
            "resource": resource,
            "outcome": outcome,
            "run_id": self.run_id,
            **details,
        }
        line = scrub(json.dumps(entry, default=str, sort_keys=False)) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_APPEND: concurrent writers never interleave within a line of this size.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
