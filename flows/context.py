"""Live connections for one configured entry, built from the configuration.

``EntryContext`` is a plain class on purpose: it is passed to Prefect tasks as an argument, and
Prefect walks dataclasses and pydantic models found in task arguments; an opaque object is left
alone and is never recorded (task inputs are stored as references only, and caching is off).
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING

from pydantic import SecretStr

from connectors.consumers import Consumer, ConsumerClient
from connectors.langfuse import LangfuseAdminClient, LangfuseInstanceAdmin
from connectors.store import SecretLocation, SecretStore
from flows.audit import AuditLog
from flows.config import (
    AwsStoreConfig,
    ConfigError,
    ProjectEntry,
    RotationConfig,
    StoreConfig,
    VaultStoreConfig,
)
from flows.handover import HandoverWatch
from flows.redact import register_secret

if TYPE_CHECKING:
    from connectors.notify import Notifier
    from connectors.vault_auth import VaultAuth


def build_store(config: StoreConfig) -> SecretStore:
    if isinstance(config, VaultStoreConfig):
        from connectors.vault import VaultStore

        return VaultStore(
            config.url,
            auth=_vault_auth(config),
            mount=config.mount,
            namespace=config.namespace,
            timeout_s=config.timeout_s,
            verify_tls=config.verify_tls,
            ca_cert=str(config.ca_cert) if config.ca_cert is not None else None,
            on_token=register_secret,
        )
    if isinstance(config, AwsStoreConfig):
        from connectors.aws_secrets import AwsSecretsStore

        try:
            return AwsSecretsStore(
                region=config.region,
                endpoint_url=config.endpoint_url,
                profile=config.profile,
                role_arn=config.role_arn,
                external_id=config.external_id,
                role_session_name=config.role_session_name,
                timeout_s=config.timeout_s,
            )
        except ValueError as exc:  # no region anywhere in the AWS chain
            raise ConfigError(str(exc)) from None
    raise ConfigError(f"unsupported store kind {config!r}")


def _vault_auth(config: VaultStoreConfig) -> VaultAuth:
    from connectors.vault_auth import AppRoleAuth, JwtAuth, TokenAuth, TokenFileAuth

    if config.token is not None:
        register_secret(config.token)
        return TokenAuth(config.token)
    if config.token_file is not None:
        return TokenFileAuth(config.token_file)
    if config.approle is not None:
        secret_id = config.approle.resolved_secret_id()
        register_secret(secret_id)
        return AppRoleAuth(config.approle.role_id, secret_id, config.approle.mount)
    assert config.auth is not None
    return JwtAuth(config.auth.role, config.auth.jwt_file, config.auth.mount)


def org_key(config: RotationConfig, stores: dict[str, SecretStore]) -> tuple[str, SecretStr]:
    """The organization key: inline (env-interpolated) or read from a store."""
    lf = config.langfuse
    if lf.org_key is not None:
        pair = stores[lf.org_key.store].read_current(lf.org_key.location())
        register_secret(pair.secret_key)
        return pair.public_key, pair.secret_key
    assert lf.org_public_key is not None and lf.org_secret_key is not None
    register_secret(lf.org_secret_key)
    return lf.org_public_key, lf.org_secret_key


shared_stores: ContextVar[Callable[[str], SecretStore] | None] = ContextVar("shared_stores", default=None)
"""Set by a fleet run (``flows.fleet``) in its worker threads: the store of a name, shared by all
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
    ) -> None:
        self.config = config
        self.entry = entry
        self.flow_run_id = flow_run_id
        self.run_label = run_label or (flow_run_id or "local")
        self.host = config.host_for(entry)
        self.location: SecretLocation = entry.location()
        self._stores: dict[str, SecretStore] = {}
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
        self.handover = HandoverWatch(self.store, self.location)
        # Waits between consumer polls notice an emergency's handover request (flows.handover).
        self.consumer_client = ConsumerClient(sleep=self.handover.sleep)
        self.consumers = [
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
            from connectors.notify import Notifier, NotifyTarget

            self._notifier = Notifier([NotifyTarget.parse(url) for url in self.config.notify.urls])
        return self._notifier

    def _needed_stores(self) -> list[str]:
        org = self.config.langfuse.org_key
        return [org.store] if org is not None else []

    def store_for(self, name: str) -> SecretStore:
        """The configured store ``name`` (connected on first use), e.g. another entry's store."""
        return self._store(name)

    def _store(self, name: str) -> SecretStore:
        if name not in self._stores:
            shared = shared_stores.get()
            self._stores[name] = shared(name) if shared is not None else build_store(self.config.stores[name])
        return self._stores[name]

    @property
    def store_label(self) -> str:
        return self.store.location_label(self.location)

    def close(self) -> None:
        self.admin.close()
