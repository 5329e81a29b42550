"""Where keys would travel in plain text (docs/trust-boundary.md).

API keys go to Langfuse as HTTP Basic credentials; the Vault token and every stored pair go to
the store. Over ``http://`` to a host other than loopback (``localhost``, 127.0.0.0/8, ``::1``)
anyone on the path reads them; with a Vault store's ``verify_tls: false`` anyone on the path can
pose as the server. Both are allowed (a lab, a sidecar on a private network), but never silently:
each is a warning when the configuration is loaded (once per process), a line of ``status`` and a
``plaintext-transport`` finding of ``report``. The local stack the demo and tests use is loopback
and says nothing.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from connectors.urls import is_loopback_host, mask_credentials

if TYPE_CHECKING:
    from flows.config.model import RotationConfig

logger = logging.getLogger("langfuse_rotate.config")


@dataclass(frozen=True)
class TransportRisk:
    """One configured connection that carries keys without TLS protecting them."""

    field: str
    """The configuration field, e.g. ``langfuse.host``, ``stores.main.verify_tls``."""
    severity: Literal["high", "medium"]
    detail: str
    entry: str | None = None
    """The entry concerned when the field is an entry's own (``projects[i].host``)."""

    def line(self) -> str:
        return f"{self.field}: {self.detail}"


def transport_risks(config: RotationConfig) -> list[TransportRisk]:
    """Every plain-text or unverified connection the configuration sets up, in file order."""
    risks: list[TransportRisk] = []
    _plain_http(risks, "langfuse.host", config.langfuse.host, "Langfuse API keys")
    for name, store in config.stores.items():  # what each kind's model says (flows.config.stores)
        for route in store.key_routes():
            _plain_http(risks, f"stores.{name}.{route.field}", route.url, route.carries)
        for unchecked in store.unchecked_servers():
            risks.append(TransportRisk(f"stores.{name}.{unchecked.field}", "medium", unchecked.detail))
    for i, entry in enumerate(config.projects):
        if entry.host is not None:
            _plain_http(risks, f"projects[{i}].host", entry.host, "the entry's Langfuse API keys", entry=entry.name)
    return risks


def _plain_http(risks: list[TransportRisk], field: str, url: str, what: str, *, entry: str | None = None) -> None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return
    if parts.scheme != "http" or is_loopback_host(parts.hostname or ""):
        return
    risks.append(
        TransportRisk(
            field,
            "high",
            f"{mask_credentials(url)} is plain HTTP to a host that is not loopback: {what} travel unencrypted; "
            "use https://",
            entry,
        )
    )


_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_transport_risks(config: RotationConfig) -> None:
    """Log each risk once per process as a warning (the CLI prints it on stderr; in a flow run it
    goes to the run's logs). Loading the same file again says nothing new."""
    for risk in transport_risks(config):
        line = risk.line()
        with _warned_lock:
            if line in _warned:
                continue
            _warned.add(line)
        logger.warning("warning: %s", line)
