"""The secret stores a configuration can name: each ``kind`` with its configuration model and its
factory, registered in ``STORE_KINDS``. Building a run's stores, reporting configuration errors,
the demo and the test fixtures all go through this registry, so another store is a connector
module, its model and factory here, one line in ``STORE_KINDS`` and a test fixture (README,
"Development").
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, NamedTuple, TypeVar, Union

from pydantic import Field, SecretStr, field_validator, model_validator

from connectors.store import SecretStore
from flows.config.places import Account, Key, Place, server_of
from flows.config.types import RESERVED_LAST_SEGMENT, Mount, StrictModel, Url
from flows.errors import ConfigError
from flows.redact import register_secret

if TYPE_CHECKING:
    from connectors.vault_auth import VaultAuth


class KeyRoute(NamedTuple):
    """A connection of a store's that carries keys: plain HTTP to a host that is not loopback is a
    transport risk (``flows.config.transport``)."""

    field: str
    """The section's field that names it, e.g. ``url``."""
    url: str
    carries: str
    """What travels over it, e.g. ``the stored keys``."""


class UncheckedServer(NamedTuple):
    """A setting under which the store's server is not authenticated (``flows.config.transport``)."""

    field: str
    detail: str


class StoreSettings(StrictModel):
    """What every store's section has: its ``kind`` and the pace of a fleet's writes to it.

    Everything that differs by kind is a method here that a kind's model may override (pacing,
    transport, where its paths go): ``STORE_KINDS`` is the one switch on kind."""

    kind: str
    max_writes_per_s: float | None = Field(default=None, gt=0)
    """Fleet runs pace this store's writes (docs/fleet.md); unset: no limit."""

    def urls(self) -> list[str | None]:
        """The URLs in this section: their credentials are registered for log redaction."""
        return []

    def pacing_key(self) -> str:
        """What a fleet's pacing of this store's writes is keyed by: sections that reach the same
        service (and so share its limits) give the same key. By default, the section itself."""
        return f"{self.kind}:{self.model_dump_json(exclude={'max_writes_per_s'})}"

    def key_routes(self) -> list[KeyRoute]:
        """The connections that carry keys to and from this store. By default, none known."""
        return []

    def unchecked_servers(self) -> list[UncheckedServer]:
        """Settings under which the server is not authenticated. By default, none."""
        return []

    def place_base(self, name: str) -> tuple[Key, Account]:
        """Where this store's secrets live as the server sees it (sections that reach the same
        secrets give the same base, whatever their names) and, if known, the account. By default
        nothing is known about the server: the store's name."""
        return (self.kind, "store", name), None

    def places(self, base: Key, account: Account, path: str) -> list[Place]:
        """The secret at ``path`` and, where the store keeps one apart, its staging place."""
        return [Place(((*base, path),), account)]


# --- Vault (or OpenBao) KV v2 -------------------------------------------------------------------


class AppRoleConfig(StrictModel):
    role_id: str
    secret_id: SecretStr | None = None
    secret_id_file: Path | None = None
    mount: Mount = "approle"

    @model_validator(mode="after")
    def _one_secret_id_source(self) -> AppRoleConfig:
        if (self.secret_id is None) == (self.secret_id_file is None):
            raise ValueError("give exactly one of secret_id or secret_id_file")
        return self

    def resolved_secret_id(self) -> SecretStr:
        if self.secret_id is not None:
            return self.secret_id
        assert self.secret_id_file is not None
        try:
            return SecretStr(self.secret_id_file.read_text().strip())
        except OSError as exc:
            raise ConfigError(f"cannot read approle secret_id_file {self.secret_id_file}: {exc.strerror}") from None


class JwtAuthConfig(StrictModel):
    """Vault's JWT auth method: a Kubernetes service-account token or a CI OIDC token in a file."""

    method: Literal["jwt"]
    role: str = Field(min_length=1)
    jwt_file: Path
    mount: Mount = "jwt"

    @field_validator("jwt_file")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()


class VaultStoreConfig(StoreSettings):
    """A Vault (or OpenBao) KV v2 store. Left out, ``url``, ``namespace`` and ``ca_cert`` come from
    ``VAULT_ADDR``, ``VAULT_NAMESPACE`` and ``VAULT_CACERT``; with no auth method given the token
    is ``VAULT_TOKEN``, else the file ``~/.vault-token`` (as the ``vault`` CLI does)."""

    kind: Literal["vault"]
    url: Url
    token: SecretStr | None = None
    token_file: Path | None = None
    approle: AppRoleConfig | None = None
    auth: JwtAuthConfig | None = None
    mount: Mount = "secret"
    namespace: str | None = None
    timeout_s: float = Field(default=10.0, gt=0)
    verify_tls: bool = True
    ca_cert: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _vault_environment(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key, variable in (("url", "VAULT_ADDR"), ("namespace", "VAULT_NAMESPACE"), ("ca_cert", "VAULT_CACERT")):
            if data.get(key) is None and os.environ.get(variable):
                data[key] = os.environ[variable]
        if data.get("url") is None:
            raise ValueError("no Vault address: set url or VAULT_ADDR")
        if all(data.get(key) is None for key in _VAULT_AUTH_KEYS):
            if os.environ.get("VAULT_TOKEN"):
                data["token"] = os.environ["VAULT_TOKEN"]
            elif (home_token := Path.home() / ".vault-token").is_file():
                data["token_file"] = home_token
            else:
                raise ValueError(
                    "no Vault credentials: set token, token_file, approle or auth (or VAULT_TOKEN, ~/.vault-token)"
                )
        return data

    @field_validator("token_file", "ca_cert")
    @classmethod
    def _expand_home(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator("url")
    @classmethod
    def _vault_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    def urls(self) -> list[str | None]:
        return [self.url]

    def pacing_key(self) -> str:
        from connectors import pacing

        return pacing.vault_key(self.url)

    def key_routes(self) -> list[KeyRoute]:
        return [KeyRoute("url", self.url, "the Vault token and the stored keys")]

    def unchecked_servers(self) -> list[UncheckedServer]:
        if self.verify_tls:
            return []
        detail = (
            "false: the Vault server's certificate is not checked, so whoever is on the path can pose "
            "as it and read the token and the keys; set ca_cert for a private CA instead"
        )
        return [UncheckedServer("verify_tls", detail)]

    def place_base(self, name: str) -> tuple[Key, Account]:
        """The server (one loopback host), the namespace and mount together (Vault routes
        ``ns/mount`` either way)."""
        mount = "/".join(p.strip("/") for p in (self.namespace or "", self.mount) if p.strip("/"))
        return ("vault", *server_of(self.url), mount), None

    def places(self, base: Key, account: Account, path: str) -> list[Place]:
        """A rotation stages at ``<path>/rotation-pending``: that place is the entry's too."""
        return [Place(((*base, path),)), Place(((*base, f"{path}/{RESERVED_LAST_SEGMENT}"),))]

    @model_validator(mode="after")
    def _one_auth_method(self) -> VaultStoreConfig:
        given = [key for key in _VAULT_AUTH_KEYS if getattr(self, key) is not None]
        if len(given) > 1:
            raise ValueError(f"give exactly one of token, token_file, approle or auth (got {', '.join(given)})")
        if self.ca_cert is not None and not self.verify_tls:
            raise ValueError("ca_cert is set but verify_tls is false")
        if self.ca_cert is not None and not self.ca_cert.exists():
            raise ValueError(f"ca_cert {self.ca_cert} does not exist")
        return self


_VAULT_AUTH_KEYS = ("token", "token_file", "approle", "auth")


def _build_vault_store(config: VaultStoreConfig) -> SecretStore:
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


# --- AWS Secrets Manager ------------------------------------------------------------------------


class AwsStoreConfig(StoreSettings):
    """An AWS Secrets Manager store. ``region`` left out: ``AWS_REGION``, ``AWS_DEFAULT_REGION`` or
    the profile's region, as the AWS CLI does. ``role_arn`` (with ``external_id`` if the role's
    trust policy asks for one) is assumed with the credentials of the standard chain."""

    kind: Literal["aws"]
    region: str | None = None
    endpoint_url: Url | None = None
    profile: str | None = None
    role_arn: str | None = Field(default=None, pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$")
    external_id: str | None = Field(default=None, min_length=2, max_length=1224)
    role_session_name: str = Field(default="langfuse-rotate", pattern=r"^[\w+=,.@-]{2,64}$")
    timeout_s: float = Field(default=10.0, gt=0)
    max_writes_per_s: float | None = Field(default=40.0, gt=0)
    """AWS allows 50 PutSecretValue + UpdateSecret + UpdateSecretVersionStage per second and region."""

    def urls(self) -> list[str | None]:
        return [self.endpoint_url]

    def pacing_key(self) -> str:
        """AWS limits writes per account and region: the region resolved as the connector resolves
        it (environment, then the profile)."""
        import boto3

        from connectors import pacing
        from connectors.aws_session import resolve_region

        region = self.region
        if region is None:
            try:
                region = resolve_region(None, boto3.session.Session(profile_name=self.profile))
            except Exception:  # the store itself reports a missing region or profile
                region = ""
        return pacing.aws_key(region, self.endpoint_url)

    def key_routes(self) -> list[KeyRoute]:
        return [KeyRoute("endpoint_url", self.endpoint_url, "the stored keys")] if self.endpoint_url is not None else []

    def place_base(self, name: str) -> tuple[Key, Account]:
        """The endpoint and the region; the account when the section says which (a ``role_arn``),
        or the ``profile`` it names."""
        region = self._place_region()
        endpoint = self.endpoint_url or f"https://secretsmanager.{region}.amazonaws.com"
        account: Account = None
        if self.role_arn is not None:
            account = ("account", self.role_arn.split(":")[4])
        elif self.profile is not None:
            account = ("profile", self.profile)
        return ("aws", *server_of(endpoint), region), account

    def places(self, base: Key, account: Account, path: str) -> list[Place]:
        """AWS stages in version stages of the same secret: one place. A path that is an ARN
        (``arn:<partition>:secretsmanager:<region>:<account>:secret:<name>``) names its own region
        and account; a full ARN ends in ``-`` and six random characters AWS added to the name."""
        parts = path.split(":", 6)
        if len(parts) != 7 or parts[0] != "arn" or parts[5] != "secret":
            return [Place(((*base, path),), account)]
        *server, _region = base
        region = parts[3] or _region
        name = parts[6]
        names = [name]
        if match := _ARN_SUFFIX.match(name):
            names.append(match.group("name"))
        return [Place(tuple((*server, region, n) for n in names), ("account", parts[4]) if parts[4] else account)]

    def _place_region(self) -> str:
        """The region the store will use (as ``connectors.aws_session.resolve_region`` decides it)."""
        region = self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            return region
        import boto3
        import botocore.exceptions

        try:
            return boto3.session.Session(profile_name=self.profile).region_name or ""
        except botocore.exceptions.ProfileNotFound:
            return ""

    @model_validator(mode="after")
    def _external_id_needs_a_role(self) -> AwsStoreConfig:
        if self.external_id is not None and self.role_arn is None:
            raise ValueError("external_id is only used with role_arn")
        if self.region is None and not os.environ.get("AWS_REGION"):
            _require_aws_region(self.profile)
        return self


_ARN_SUFFIX = re.compile(r"^(?P<name>.+)-[A-Za-z0-9]{6}$")


def _require_aws_region(profile: str | None) -> None:
    """Refuse at load, with the line, what the AWS chain cannot supply (same rule as the store)."""
    import boto3
    import botocore.exceptions

    try:
        region = boto3.session.Session(profile_name=profile).region_name
    except botocore.exceptions.ProfileNotFound:
        raise ValueError(f"AWS profile '{profile}' not found") from None
    if not region:
        raise ValueError("no AWS region: set region, AWS_REGION or AWS_DEFAULT_REGION, or a region in the AWS profile")


def _build_aws_store(config: AwsStoreConfig) -> SecretStore:
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


# --- the registry -------------------------------------------------------------------------------

S = TypeVar("S", bound=StoreSettings)


@dataclass(frozen=True)
class StoreKind(Generic[S]):
    """One store ``kind``: the model of its configuration section and what connects to it."""

    config: type[S]
    build: Callable[[S], SecretStore]


STORE_KINDS: dict[str, StoreKind[Any]] = {
    "vault": StoreKind(VaultStoreConfig, _build_vault_store),
    "aws": StoreKind(AwsStoreConfig, _build_aws_store),
}
"""Every store a configuration can name, by its ``kind``."""


def store_config_type() -> Any:
    """The configuration's ``stores`` values: the registered models, told apart by ``kind``."""
    return Annotated[Union[tuple(k.config for k in STORE_KINDS.values())], Field(discriminator="kind")]  # noqa: UP007


if TYPE_CHECKING:
    StoreConfig = StoreSettings  # each kind's own fields are read through its model's methods
else:
    StoreConfig = store_config_type()

_on_change: list[Callable[[], None]] = []


def on_store_kinds_changed(listener: Callable[[], None]) -> None:
    """Call ``listener`` after a kind is registered or removed (``flows.config.model`` rebuilds
    the configuration model's ``stores`` field there)."""
    _on_change.append(listener)


def register_store_kind(kind: str, store_kind: StoreKind[Any]) -> None:
    """Add a store ``kind`` (its model's ``kind`` field is ``Literal[kind]``): configurations may
    name it from now on, and every run connects to it through ``build_store``."""
    STORE_KINDS[kind] = store_kind
    for listener in _on_change:
        listener()


def unregister_store_kind(kind: str) -> None:
    """Remove a kind added by ``register_store_kind``."""
    del STORE_KINDS[kind]
    for listener in _on_change:
        listener()


def store_kinds_text() -> str:
    """``vault or aws``: the registered kinds, for error messages."""
    kinds = list(STORE_KINDS)
    return " or ".join([", ".join(kinds[:-1]), kinds[-1]]) if len(kinds) > 1 else kinds[0]


def store_config(section: dict[str, Any]) -> StoreSettings:
    """A store's configuration section (as in the YAML file, ``${VAR}`` already resolved), validated
    by its kind's model. Raises ``ConfigError`` for an unknown kind, ``pydantic.ValidationError``
    for an invalid section."""
    kind = section.get("kind")
    if kind not in STORE_KINDS:
        raise ConfigError(f"unknown store kind {kind!r} (expected {store_kinds_text()})")
    model: StoreSettings = STORE_KINDS[kind].config.model_validate(section)
    return model


def build_store(config: StoreSettings) -> SecretStore:
    """Connect to the configured store (its factory in ``STORE_KINDS``)."""
    return STORE_KINDS[config.kind].build(config)


class OpenStores:
    """The stores of one configuration, each connected once, on first use, and shared by every
    thread that asks (a fleet's entries, an inventory's reads, one entry's steps): the one cache of
    open store connections. ``close`` closes those it connected (e.g. a Vault store's token
    renewal); stores handed in ready (``connected``) or taken from ``shared`` are their owner's."""

    def __init__(
        self,
        settings: Mapping[str, StoreSettings],
        *,
        connected: Mapping[str, SecretStore] | None = None,
        shared: Callable[[str], SecretStore] | None = None,
    ) -> None:
        self._settings = settings
        self._stores: dict[str, SecretStore] = dict(connected or {})
        self._shared = shared
        self._built: list[SecretStore] = []
        self._lock = threading.Lock()

    def __call__(self, name: str) -> SecretStore:
        """The store configured as ``name``; raises ``KeyError`` for a name not configured."""
        with self._lock:
            if name not in self._stores:
                if self._shared is not None:
                    self._stores[name] = self._shared(name)
                else:
                    self._stores[name] = store = build_store(self._settings[name])
                    self._built.append(store)
            return self._stores[name]

    def close(self) -> None:
        with self._lock:
            built, self._built = self._built, []
        for store in built:
            close = getattr(store, "close", None)
            if callable(close):
                close()
