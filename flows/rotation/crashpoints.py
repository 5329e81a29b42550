"""Named points where a test can make the process die, to prove crash safety.

``LANGFUSE_ROTATE_CRASH_AT=<point>`` makes the process SIGKILL itself when it reaches that point
(no cleanup, no Prefect hooks, exactly like an OOM kill or a lost node). Unset, every call is a
no-op. The points sit between the state changes of a rotation; see ``POINTS``.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV_VAR = "LANGFUSE_ROTATE_CRASH_AT"

POINTS = (
    "after_take_over",  # an emergency marked the staged scheduled rotation as its own; nothing else changed yet
    "after_stage",  # new pair written ahead to the store; not yet in Langfuse
    "after_create",  # new key in Langfuse; not yet current in the store
    "after_promote",  # new pair current; consumers not yet confirmed
    "after_restarts",  # restart hooks fired; wait not finished
    "after_verify",  # new pair verified; old key still alive
    "after_delete",  # old key deleted; rejection not yet proven
    "after_revoke",  # old key proven rejected; staging not yet cleared
    "after_finish",  # rotation recorded; notification not yet sent
    "after_store_rollback",  # rollback restored the old pair; new key not yet deleted
    "after_rollback_restarts",  # rollback moved consumers back to the old pair; new key not yet deleted
    "after_orphan_delete",  # reconcile deleted one orphan key; others may remain
)


def crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV_VAR) == name:
        os.kill(os.getpid(), signal.SIGKILL)
