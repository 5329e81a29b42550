"""URLs that may carry credentials: what in them is secret, and how to show them without it.

A consumer health URL like ``https://user:pass@svc/health?token=abc`` or an apprise URL like
``slack://TokenA/TokenB/TokenC`` is a secret as a whole. ``RedactedUrl`` is a ``str`` that works
everywhere a URL string does but whose ``repr`` (and so every pydantic model's ``repr``) hides the
credentials; ``credential_parts`` lists the pieces a log filter must mask.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import parse_qsl, urlsplit, urlunsplit

__all__ = ["RedactedUrl", "SecretUrl", "credential_parts", "has_credentials", "is_loopback_host", "mask_credentials"]

_MASK = "***"


def has_credentials(url: str) -> bool:
    """True when ``url`` has a user-info part or a query string (either may hold a token)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return True  # unparseable: treat as secret
    return bool(parts.username or parts.password or "@" in parts.netloc or parts.query)


def credential_parts(url: str) -> set[str]:
    """The URL itself, its user-info, user, password and query values, when it has any credentials."""
    if not has_credentials(url):
        return set()
    found = {url}
    try:
        parts = urlsplit(url)
    except ValueError:
        return found
    if "@" in parts.netloc:
        found.add(parts.netloc.rsplit("@", 1)[0])
    found.update(p for p in (parts.username, parts.password) if p)
    found.update(value for _, value in parse_qsl(parts.query, keep_blank_values=True) if value)
    return found


def mask_credentials(url: str) -> str:
    """``url`` with user-info and every query value replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{_MASK}@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(f"{key}={_MASK}" for key, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def is_loopback_host(host: str) -> bool:
    """``localhost``, an address in 127.0.0.0/8 or ``::1`` (also IPv4-mapped); no name is resolved."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


class RedactedUrl(str):
    """A URL string whose ``repr`` hides its credentials (user-info and query values)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(mask_credentials(str(self)))


class SecretUrl(str):
    """A URL string that is a secret as a whole (apprise URLs carry tokens anywhere):
    its ``repr`` shows only the scheme."""

    __slots__ = ()

    def __repr__(self) -> str:
        scheme = str(self).split("://", 1)[0] if "://" in self else ""
        return repr(f"{scheme}://{_MASK}" if scheme else _MASK)
