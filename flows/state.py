"""The tool's one state directory on this host: the default audit log and the lock files live in it.

``$XDG_STATE_HOME/langfuse-rotate`` when ``XDG_STATE_HOME`` is an absolute path (the XDG Base
Directory rule: a relative value is ignored), else ``~/.local/state/langfuse-rotate``. Setting
``XDG_STATE_HOME`` moves everything at once (docs/audit-log.md).
"""

from __future__ import annotations

import os
from pathlib import Path

STATE_DIR_NAME = "langfuse-rotate"


def state_dir() -> Path:
    """The absolute state directory (not created here). Raises ``RuntimeError`` (or ``KeyError``)
    when ``XDG_STATE_HOME`` is unset and there is no home directory to fall back on."""
    configured = os.environ.get("XDG_STATE_HOME")
    base = Path(configured) if configured and Path(configured).is_absolute() else Path.home() / ".local" / "state"
    return (base / STATE_DIR_NAME).absolute()
