"""What a store path reaches on the server, in terms every store kind's model speaks
(``StoreSettings.place_base`` and ``places`` in ``flows.config.stores``); ``flows.config.locations``
compares them so that no two holders share one secret."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from connectors.urls import is_loopback_host

Key = tuple[str, ...]
Account = tuple[str, str] | None
"""("account", id) or ("profile", name) for AWS; None: not known (may be any)."""


@dataclass(frozen=True)
class Place:
    """One secret as the server sees it: equal ``keys`` (and a compatible account) are one secret."""

    keys: tuple[Key, ...]
    account: Account = None


def server_of(url: str) -> Key:
    """``(host, port, base path)`` of a URL; every loopback spelling is one host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return (url,)
    host = (parts.hostname or "").rstrip(".").lower()
    if is_loopback_host(host):
        host = "loopback"
    if port is None:
        port = {"https": 443, "http": 80}.get(parts.scheme, 0)
    return (host, str(port), parts.path.rstrip("/"))
