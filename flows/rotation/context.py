"""Live connections for one configured entry, built from the configuration.

``EntryContext`` is a plain class on purpose: it is passed to Prefect tasks as an argument, and
Prefect walks dataclasses and pydantic models found in task arguments; an opaque object is left
alone and is never recorded (task inputs are stored as references only, and caching is off).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING

from connectors.consumers import Consumer, ConsumerClient
from connectors.langfuse import LangfuseAdminClient, LangfuseInstanceAdmin
from connectors.store import SecretLocation, SecretStore
from flows.audit import AuditLog
from flows.config.model import ProjectEntry, RotationConfig
from flows.config.org import org_key
from flows.config.stores import OpenStores
from flows.redact import register_secret
from flows.rotation.handover import HandoverWatch
from flows.rotation.trace_evidence import trace_watches

if TYPE_CHECKING:
    from connectors.notify import Notifier


shared_stores: ContextVar[Callable[[str], SecretStore] | None] = ContextVar("shared_stores", default=None)
"""Set by a fleet run (``flows.fleet.run``) in its worker threads: the store of a name, shared by all
its entries, so each entry does not open (and authenticate) its own connection to the same store."""


class EntryContext:
    """Everything a step needs for one entry. Holds secrets only inside its clients."""

    def __init__(
        self,
        config: RotationConfig,
        entry: ProjectEntry,
        *,
        flow_run_id: str | None = None,
        run_label: str | None = None,
        eager_notifier: bool = True,
        stores: Mapping[str, SecretStore] | None = None,
    ) -> None:
        """``stores``: stores already connected, by configured name (e.g. an in-memory one in a
        test); the others are built from the configuration on first use."""
        self.config = config
        self.entry = entry
        self.flow_run_id = flow_run_id
        self.run_label = run_label or (flow_run_id or "local")
        self.host = config.host_for(entry)
        self.location: SecretLocation = entry.location()
        self._stores = OpenStores(config.stores, connected=stores, shared=shared_stores.get())
        self.store = self._store(entry.store)
        self.store_name = entry.store
        public_key, secret_key = org_key(config, {name: self._store(name) for name in self._needed_stores()})
        self.admin = LangfuseAdminClient(
            config.langfuse.host, public_key, secret_key, timeout_s=config.langfuse.timeout_s
        )
        self.org_public_key = public_key
        admin_api_key = config.langfuse.admin_api_key
        register_secret(admin_api_key)
        self.instance_admin = (
            LangfuseInstanceAdmin(config.langfuse.host, admin_api_key, timeout_s=config.langfuse.timeout_s)
            if admin_api_key is not None
            else None
        )
        self.handover = HandoverWatch(self.store, self.location, entry=entry.name)
        # Waits between consumer polls notice an emergency's handover request (flows.rotation.handover).
        self.consumer_client = ConsumerClient(sleep=self.handover.sleep)
        self.all_consumers = [
            Consumer(
                name=c.name,
                health_url=c.health_url,
                public_key_field=c.public_key_field,
                restart_url=c.restart_url,
                restart_command=tuple(c.restart_command) if c.restart_command is not None else None,
                restart_timeout_s=c.restart_timeout_s,
                headers=c.headers,
                timeout_s=c.timeout_s,
            )
            for c in entry.consumers
        ]
        """Every consumer: whose restart hooks fire."""
        self.consumers = [c for c in self.all_consumers if c.health_url is not None]
        """The consumers with a health endpoint: those health checks prove switched (or back)."""
        self.trace_watches = trace_watches(entry)
        """The consumers with a ``traces`` section (``flows.rotation.trace_evidence``)."""
        for consumer in entry.consumers:
            for value in consumer.headers.values():
                raw = value.get_secret_value()
                for part in (raw, *raw.split()):  # "Bearer <token>": the token alone too
                    register_secret(part)
        self.audit = AuditLog(config.audit.path, run_id=flow_run_id)
        self._notifier: Notifier | None = None
        if eager_notifier:
            self.notifier  # noqa: B018  (an invalid notify URL fails here, before anything changes)

    @property
    def notifier(self) -> Notifier:
        """Built on first use when ``eager_notifier`` is off: apprise loads its plugins to check the
        URLs (~0.3 s), which an emergency spends after the key is revoked, not before. Raises
        ``ValueError`` for an invalid URL."""
        if self._notifier is None:
            from connectors.notify import Notifier

            self._notifier = Notifier(self.config.notify.targets())
        return self._notifier

    def _needed_stores(self) -> list[str]:
        org = self.config.langfuse.org_key
        return [org.store] if org is not None else []

    def store_for(self, name: str) -> SecretStore:
        """The configured store ``name`` (connected on first use), e.g. another entry's store."""
        return self._store(name)

    def _store(self, name: str) -> SecretStore:
        return self._stores(name)

    @property
    def store_label(self) -> str:
        return self.store.location_label(self.location)

    def close(self) -> None:
        self.admin.close()
        self.handover.close()
