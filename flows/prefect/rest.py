"""Where the Prefect API is, read without importing ``prefect`` (which costs ~2 s of CPU;
docs/emergency.md). The client itself is ``connectors.prefect_api``."""

from __future__ import annotations

import os

from connectors.prefect_api import prefect_api_url

__all__ = ["embedded_server_notice", "first_start_of_embedded_server", "prefect_api_url"]


def first_start_of_embedded_server() -> bool:
    """True when Prefect's embedded server has no database yet (its first start creates and
    migrates one: 20 s or more on 2 cores)."""
    from pathlib import Path

    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    url = os.environ.get("PREFECT_SERVER_DATABASE_CONNECTION_URL") or os.environ.get(
        "PREFECT_API_DATABASE_CONNECTION_URL"
    )
    if url and not url.startswith("sqlite"):
        return False
    return not (home / "prefect.db").exists()


def embedded_server_notice() -> str | None:
    """What a command says before it starts Prefect's embedded server (None when a server is
    configured), so seconds of silence, or the first start's migration, are explained."""
    if prefect_api_url():
        return None
    if first_start_of_embedded_server():
        return (
            "starting Prefect's embedded server (no PREFECT_API_URL); its first start creates and migrates "
            "its database: 20 s or more ..."
        )
    return "starting Prefect's embedded server (no PREFECT_API_URL) ..."
