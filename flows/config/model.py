"""The rotation configuration: one pydantic model, loaded from YAML with ``${ENV_VAR}`` interpolation.

Every error names the file, the line and the dotted field, in one line, so a user can fix it
without reading a traceback. Secrets are ``SecretStr`` from the moment they are read.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from connectors.consumers import check_argv, check_headers, check_not_shell_string
from connectors.store import FieldNames, SecretLocation
from connectors.urls import RedactedUrl, SecretUrl
from flows.audit import default_audit_path
from flows.config.locations import Claims, StorePlaces, collision_text
from flows.config.stores import (
    STORE_KINDS,
    StoreConfig,
    on_store_kinds_changed,
    store_config_type,
    store_kinds_text,
)
from flows.config.transport import warn_transport_risks
from flows.config.types import StorePath, StrictModel, Url
from flows.errors import ConfigError, LocationCollision
from flows.shown import ENTRY_NAME_PATTERN

if TYPE_CHECKING:
    from connectors.notify import NotifyTarget  # imported where notifications are sent

CONFIG_ENV_VAR = "LANGFUSE_ROTATE_CONFIG"
_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_PLACEHOLDER_PREFIX = "__langfuse_rotate_env_"
_PLACEHOLDER_PATTERN = re.compile(re.escape(_PLACEHOLDER_PREFIX) + r"(\d+)__")


class StoreRef(StrictModel):
    """A secret held in one of the configured stores (e.g. the organization key)."""

    store: str
    path: StorePath
    fields: FieldNames = FieldNames()

    def location(self) -> SecretLocation:
        return SecretLocation(path=self.path, fields=self.fields)


class LangfuseConfig(StrictModel):
    host: Url
    org_public_key: str | None = None
    org_secret_key: SecretStr | None = None
    org_key: StoreRef | None = None
    admin_api_key: SecretStr | None = None
    timeout_s: float = Field(default=10.0, gt=0)
    max_requests_per_min: int | None = Field(default=None, gt=0)
    """Fleet runs pace every Langfuse request below this (Langfuse Cloud: per organization); unset: no limit."""

    @field_validator("host")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return RedactedUrl(value.rstrip("/"))

    @model_validator(mode="after")
    def _one_org_key_source(self) -> LangfuseConfig:
        inline = self.org_public_key is not None or self.org_secret_key is not None
        if inline and self.org_key is not None:
            raise ValueError("give either org_public_key/org_secret_key or org_key, not both")
        if not inline and self.org_key is None:
            raise ValueError("the organization key is missing: set org_public_key/org_secret_key or org_key")
        if inline and (self.org_public_key is None or self.org_secret_key is None):
            raise ValueError("org_public_key and org_secret_key go together")
        if self.org_public_key is not None and not self.org_public_key.startswith("pk-lf-"):
            raise ValueError("org_public_key must start with 'pk-lf-'")
        return self


class TraceMatchConfig(StrictModel):
    """``traces.match``: which traces are the consumer's; every given field must match."""

    name: str | None = Field(default=None, min_length=1)
    environment: str | None = Field(default=None, min_length=1)
    tags: list[str] = []
    release: str | None = Field(default=None, min_length=1)
    version: str | None = Field(default=None, min_length=1)
    metadata: dict[str, str] = {}

    @model_validator(mode="after")
    def _something_to_match(self) -> TraceMatchConfig:
        if not any((self.name, self.environment, self.tags, self.release, self.version, self.metadata)):
            raise ValueError("match names nothing: give name, environment, tags, release, version or metadata")
        return self


class TracesConfig(StrictModel):
    """``consumers[].traces``: the consumer's own traces as evidence (docs/trace-evidence.md)."""

    match: TraceMatchConfig
    key_source: Literal["sdk", "metadata", "none"] = "sdk"
    key_metadata: str = Field(default="langfuse_public_key", min_length=1)
    quiet_s: float = Field(default=30.0, gt=0)
    """No matching trace sent with the old key for this long (must exceed Langfuse's ingestion delay)."""
    after_revoke_s: float = Field(default=120.0, gt=0)
    """After the revoke, the consumer's traces must keep arriving within this."""


class ConsumerConfig(StrictModel):
    name: str
    health_url: Url | None = None
    traces: TracesConfig | None = None
    public_key_field: str = "langfuse_public_key"
    restart_url: Url | None = None
    restart_command: list[str] | None = None
    """argv, run without a shell (docs/configuration.md "Consumers: restart hooks and headers")."""
    restart_timeout_s: float | None = Field(default=None, gt=0)
    headers: dict[str, SecretStr] = {}
    """Sent with restart and health requests; values usually ``${ENV_VAR}``; secrets."""
    timeout_s: float = Field(default=5.0, gt=0)

    _not_shell = field_validator("restart_command", mode="before")(check_not_shell_string)
    _argv = field_validator("restart_command")(check_argv)
    _headers = field_validator("headers")(check_headers)

    @model_validator(mode="after")
    def _one_restart_hook(self) -> ConsumerConfig:
        if self.restart_url is not None and self.restart_command is not None:
            raise ValueError("give restart_url or restart_command, not both")
        if self.health_url is None and self.traces is None:
            raise ValueError("give health_url, traces or both: nothing would show which key the consumer uses")
        return self


class ProjectEntry(StrictModel):
    """One configured key: a Langfuse project, where its pair is stored, and who uses it."""

    name: str = Field(pattern=ENTRY_NAME_PATTERN)
    project_id: str = Field(min_length=1)
    store: str
    path: StorePath
    fields: FieldNames = FieldNames()
    host: Url | None = None
    consumers: list[ConsumerConfig] = []
    wait_timeout_s: float = Field(default=600.0, gt=0)
    grace_period_s: float = Field(default=30.0, ge=0)
    canary_timeout_s: float = Field(default=60.0, gt=0)
    approval: Literal["none", "required"] = "none"
    approval_timeout_s: float = Field(default=3600.0, gt=0)
    revoke_recheck_s: float = Field(default=310.0, ge=0)
    """How long to keep a revoked-but-still-accepted key idle before probing again: Langfuse's
    API-key cache TTL plus a margin (docs/rotation.md "The revocation race")."""

    def location(self) -> SecretLocation:
        return SecretLocation(path=self.path, fields=self.fields)

    @property
    def after_revoke_s(self) -> float:
        """The longest ``traces.after_revoke_s`` of the entry's consumers (0: none has traces):
        the deadline of the after-revoke ingestion check (``flows.rotation.contract``)."""
        return max((c.traces.after_revoke_s for c in self.consumers if c.traces is not None), default=0.0)


class NotifyConfig(StrictModel):
    urls: list[str | dict[str, Any]] = []
    """apprise URLs (or ``{url, tags}``): secrets as a whole, so their ``repr`` shows only the scheme."""

    @field_validator("urls", mode="after")
    @classmethod
    def _secret_urls(cls, urls: list[str | dict[str, Any]]) -> list[str | dict[str, Any]]:
        hidden: list[str | dict[str, Any]] = []
        for url in urls:
            if isinstance(url, str):
                hidden.append(SecretUrl(url))
            else:
                hidden.append({k: SecretUrl(v) if k == "url" and isinstance(v, str) else v for k, v in url.items()})
        return hidden

    def targets(self) -> list[NotifyTarget]:
        """The URLs as apprise targets. Raises ``ValueError`` (naming no URL) for an invalid one."""
        from connectors.notify import NotifyTarget

        return [NotifyTarget.parse(url) for url in self.urls]


class AuditConfig(StrictModel):
    path: Path = Field(default_factory=default_audit_path)
    """Where the audit lines go: a file (appended, fsynced) or "-" for stdout (docs/audit-log.md)."""


class EmergencyConfig(StrictModel):
    max_per_hour: int = Field(default=3, ge=0)
    """At most this many event-started containments per entry per hour; past that a person must run
    ``langfuse-rotate emergency`` (docs/emergency.md "Emergency trigger")."""


class LockConfig(StrictModel):
    wait_s: float = Field(default=0.0, ge=0)
    """How long a second rotation of the same key waits for the first before giving up (exit 3)."""
    lease_s: int = Field(default=300, ge=60)


Role = Literal["OWNER", "ADMIN", "MEMBER", "VIEWER", "NONE"]


class AccessLists(StrictModel):
    """Who may hold a role above ``default_role`` (emails; a higher listing allows the lower roles)."""

    owners: list[str] = []
    admins: list[str] = []
    members: list[str] = []
    max_owners: int | None = Field(default=None, ge=1)


class AccessPolicy(AccessLists):
    """``policy.access``: checked against organization and project memberships (README, report)."""

    default_role: Role = "VIEWER"
    projects: dict[str, AccessLists] = {}
    """Per Langfuse project (id or name): further people allowed there only, and its own owner cap."""


class PolicyConfig(StrictModel):
    """``policy``: the thresholds of ``langfuse-rotate report`` (README, compliance report)."""

    max_key_age_days: int = Field(default=90, gt=0)
    warn_days: int = Field(default=14, ge=0)
    max_pending_hours: float = Field(default=24.0, gt=0)
    access: AccessPolicy | None = None
    """Unset: memberships are not checked."""

    @model_validator(mode="after")
    def _warning_before_overdue(self) -> PolicyConfig:
        if self.warn_days >= self.max_key_age_days:
            raise ValueError("warn_days must be smaller than max_key_age_days")
        return self


class ProjectTemplate(StrictModel):
    """Entries generated from the organization's project list (docs/fleet.md "Entry templates"):
    ``{project_name}`` and ``{project_id}`` are replaced in ``name``, ``path`` and consumer URLs."""

    include: list[str] = ["*"]
    exclude: list[str] = []
    name: str = "{project_name}"
    store: str
    path: str = Field(min_length=1)
    fields: FieldNames = FieldNames()
    consumers: list[ConsumerConfig] = []
    wait_timeout_s: float = Field(default=600.0, gt=0)
    grace_period_s: float = Field(default=30.0, ge=0)
    canary_timeout_s: float = Field(default=60.0, gt=0)
    revoke_recheck_s: float = Field(default=310.0, ge=0)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([dhms]?)\s*$")


class FleetConfig(StrictModel):
    """``rotate --all`` and the ``quarterly`` deployment (docs/fleet.md)."""

    concurrency: int = Field(default=24, ge=1, le=512)
    """Entries at once: each spends most of its time waiting (consumers, the canary's ingestion), so
    more overlap shortens a fleet until the CPU is busy (docs/fleet.md, benchmarks/README.md)."""
    batch_size: int | None = Field(default=None, ge=1)
    """Set: the fleet run hands batches of this many entries to ``batch_deployment`` on the work pool."""
    batch_deployment: str = "langfuse-key-rotation-all/fleet-batch"
    skip_if_rotated_within: str | float = "30d"
    """Entries rotated this recently are ``skipped`` (a number is days; ``"12h"``, ``"0"`` turns it off)."""

    @field_validator("skip_if_rotated_within")
    @classmethod
    def _duration(cls, value: str | float) -> str | float:
        if isinstance(value, str) and not _DURATION.match(value):
            raise ValueError("must be a number of days or a duration like '30d', '12h', '90m'")
        if isinstance(value, float | int) and value < 0:
            raise ValueError("must not be negative")
        return value

    @property
    def skip_window_s(self) -> float:
        value = self.skip_if_rotated_within
        if not isinstance(value, str):
            return float(value) * 86400
        match = _DURATION.match(value)
        assert match is not None
        unit = {"d": 86400, "h": 3600, "m": 60, "s": 1, "": 86400}[match.group(2)]
        return float(match.group(1)) * unit


class RotationConfig(StrictModel):
    langfuse: LangfuseConfig
    stores: dict[str, StoreConfig]
    projects: list[ProjectEntry] = []
    project_template: ProjectTemplate | None = None
    fleet: FleetConfig = FleetConfig()
    notify: NotifyConfig = NotifyConfig()
    audit: AuditConfig = AuditConfig()
    lock: LockConfig = LockConfig()
    policy: PolicyConfig = PolicyConfig()
    emergency: EmergencyConfig = EmergencyConfig()

    @model_validator(mode="after")
    def _references_resolve(self) -> RotationConfig:
        seen: set[str] = set()
        for entry in self.projects:
            if entry.name in seen:
                raise ValueError(f"project name '{entry.name}' appears twice")
            seen.add(entry.name)
            if entry.store not in self.stores:
                raise ValueError(f"project '{entry.name}' uses unknown store '{entry.store}'")
        if self.project_template is not None and self.project_template.store not in self.stores:
            raise ValueError(f"project_template uses unknown store '{self.project_template.store}'")
        org_key = self.langfuse.org_key
        if org_key is not None and org_key.store not in self.stores:
            raise ValueError(f"langfuse.org_key uses unknown store '{org_key.store}'")
        self._register_url_credentials()
        return self

    def _register_url_credentials(self) -> None:
        """Every credential embedded in a configured URL is a secret for log redaction from now on.
        A query value that is a configured store path (``/health?path=langfuse/chatbot``) is not a
        credential: masking it would hide that path wherever it is shown."""
        from connectors.notify import secret_fragments
        from connectors.urls import credential_parts
        from flows.redact import register_secret, register_url

        urls: list[str | None] = [self.langfuse.host]
        for store in self.stores.values():
            urls += store.urls()
        for entry in self.projects:
            urls.append(entry.host)
            for consumer in entry.consumers:
                urls += [consumer.health_url, consumer.restart_url]
        paths = {entry.path for entry in self.projects}
        if self.langfuse.org_key is not None:
            paths.add(self.langfuse.org_key.path)
        for url in urls:
            for part in credential_parts(url or "") - paths:
                register_secret(part)
        for target in self.notify.urls:
            raw = target.get("url") if isinstance(target, dict) else target
            if isinstance(raw, str):
                register_url(raw)
                for fragment in secret_fragments(raw):
                    register_secret(fragment)

    def location_claims(self) -> Claims:
        """The secrets the organization key and the configured entries hold, with the entries'
        staging places (README "Safety guarantees"). Raises ``LocationCollision`` for the first
        entry whose place is already held."""
        claims = Claims(StorePlaces(self.stores))
        if self.langfuse.org_key is not None:
            claims.take(self.langfuse.org_key.store, self.langfuse.org_key.path, None)
        for i, entry in enumerate(self.projects):
            holder = claims.holder(entry.store, entry.path)
            if holder is not None:
                raise LocationCollision(i, entry.name, collision_text(holder))
            claims.take(entry.store, entry.path, entry.name)
        return claims

    def entry(self, name: str) -> ProjectEntry:
        for entry in self.projects:
            if entry.name == name:
                return entry
        known = ", ".join(e.name for e in self.projects) or "none"
        raise ConfigError(f"unknown project '{name}' (configured: {known})")

    def host_for(self, entry: ProjectEntry) -> str:
        return (entry.host or self.langfuse.host).rstrip("/")


# --- loading ------------------------------------------------------------------------------------


def resolve_config_path(path: str | os.PathLike[str] | None) -> Path:
    chosen = path or os.environ.get(CONFIG_ENV_VAR)
    if not chosen:
        raise ConfigError(f"no configuration file: pass --config or set {CONFIG_ENV_VAR}")
    return Path(chosen)


def load_config(path: str | os.PathLike[str] | None, *, warn: bool = True) -> RotationConfig:
    """Read, interpolate and validate the YAML file. Raises ``ConfigError`` with a one-line message.
    ``warn``: log a warning for each connection that carries keys in plain text (once per process;
    ``status`` and ``report`` show them in their own output instead)."""
    file = resolve_config_path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read configuration: {exc.strerror}") from None
    config = parse_config(text, source=str(file))
    if warn:
        warn_transport_risks(config)
    return config


def audit_path_for(config_path: str | os.PathLike[str] | None) -> Path:
    """The configured audit path, or the default one when the configuration cannot be read."""
    try:
        return load_config(config_path, warn=False).audit.path
    except (ConfigError, OSError, ValueError):
        return default_audit_path()


def parse_config(text: str, *, source: str = "<config>") -> RotationConfig:
    # ``${VAR}`` is not valid inside YAML flow mappings (``{token: ${VAULT_TOKEN}}``), so references
    # become inert placeholders first and are substituted per scalar, where the field is known.
    references: list[re.Match[str]] = []

    def placeholder(match: re.Match[str]) -> str:
        references.append(match)
        return f"{_PLACEHOLDER_PREFIX}{len(references) - 1}__"

    text = _ENV_PATTERN.sub(placeholder, text)
    try:
        written = _check_depth(text, source)
        root = yaml.compose(text, Loader=_LOADER)
    except RecursionError:
        raise ConfigError(f"{source}: the YAML is nested too deeply") from None
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(exc, source)) from None
    if root is None:
        raise ConfigError(f"{source}: the file is empty")
    lines: dict[tuple[str | int, ...], int] = {}
    interpolate = _Interpolator(references, source)
    data = _to_python(root, (), lines, interpolate, _Budget(written), ())
    # In the order a person fixes them: a misspelled key (whose value may be what a "missing"
    # variable was meant for), then every unset variable, then references, then values.
    try:
        config = RotationConfig.model_validate(data)
        invalid = None
    except ValidationError as exc:
        if any(e["type"] == "extra_forbidden" for e in exc.errors()):
            raise ConfigError(_first_error(exc, lines, source)) from None
        invalid = _first_error(exc, lines, source)
    interpolate.raise_missing()
    _check_references(data, lines, source)
    if invalid is not None:
        raise ConfigError(invalid)
    try:
        config.location_claims()
    except LocationCollision as exc:
        where = f"{source}:{_nearest_line(('projects', exc.index, 'path'), lines) or 1}"
        raise ConfigError(f"{where}: projects[{exc.index}].path: {exc}") from None
    return config


_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader where PyYAML was built with it (the wheels are): a 1,000-entry file parses
in a tenth of the time, which a fleet run spends before its first entry starts."""


def _check_depth(text: str, source: str) -> int:
    """Refuse deep nesting from the event stream, before PyYAML's recursive composer meets it.
    Returns how many values the text writes out (aliases not counted)."""
    depth = 0
    written = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.ScalarEvent | yaml.CollectionStartEvent):
            written += 1
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > _MAX_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark is not None else 1
                raise ConfigError(f"{source}:{line}: nested more than {_MAX_DEPTH} levels deep")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return written


def _check_references(data: Any, lines: dict[tuple[str | int, ...], int], source: str) -> None:
    """Cross-references, checked on the raw data so the error can name the line."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: the top level must be a mapping")
    stores = data.get("stores")
    known = sorted(stores) if isinstance(stores, dict) else []
    projects = data.get("projects")
    seen: set[str] = set()
    for i, entry in enumerate(projects if isinstance(projects, list) else []):
        if not isinstance(entry, dict):
            continue
        name, store = entry.get("name"), entry.get("store")
        if isinstance(name, str) and name in seen:
            where = f"{source}:{lines.get(('projects', i, 'name'), 1)}"
            raise ConfigError(f"{where}: projects[{i}].name: '{name}' appears twice")
        if isinstance(name, str):
            seen.add(name)
        if isinstance(store, str) and known and store not in known:
            where = f"{source}:{lines.get(('projects', i, 'store'), 1)}"
            raise ConfigError(f"{where}: projects[{i}].store: unknown store '{store}' (configured: {', '.join(known)})")
    langfuse = data.get("langfuse")
    org_key = langfuse.get("org_key") if isinstance(langfuse, dict) else None
    if isinstance(org_key, dict) and isinstance(org_key.get("store"), str) and known and org_key["store"] not in known:
        where = f"{source}:{lines.get(('langfuse', 'org_key', 'store'), 1)}"
        raise ConfigError(f"{where}: langfuse.org_key.store: unknown store '{org_key['store']}'")


class _Interpolator:
    def __init__(self, references: list[re.Match[str]], source: str) -> None:
        self.references = references
        self.source = source
        self.missing: list[str] = []

    def raise_missing(self) -> None:
        """Every unset variable at once, so one run of the command names them all, each as
        ``file:line: field: environment variable NAME is not set``."""
        if self.missing:
            raise ConfigError("; ".join(self.missing))

    def __call__(self, value: str, path: tuple[str | int, ...], line: int) -> str:
        def substitute(match: re.Match[str]) -> str:
            reference = self.references[int(match.group(1))]
            name, default = reference.group(1), reference.group(2)
            found = os.environ.get(name)
            if found:
                return found
            if default is not None:
                return default
            self.missing.append(f"{self.source}:{line}: {_dotted(path)}: environment variable {name} is not set")
            return ""

        return _PLACEHOLDER_PATTERN.sub(substitute, value)


_MAX_NODES = 10_000
_MAX_DEPTH = 50


class _Budget:
    """How many values the document may expand to: YAML aliases share nodes, so a few lines can
    stand for billions of values (an "alias bomb"). Aliases may add ``_MAX_NODES`` values to what
    the text writes out (a fleet of 2,000 entries writes ~30,000)."""

    def __init__(self, written: int = 0) -> None:
        self.left = written + _MAX_NODES
        self.scalars = yaml.SafeLoader("")  # one constructor per document, not one per value


def _to_python(
    node: yaml.Node,
    path: tuple[str | int, ...],
    lines: dict[tuple[str | int, ...], int],
    interpolate: _Interpolator,
    budget: _Budget,
    parents: tuple[int, ...],
) -> Any:
    lines[path] = node.start_mark.line + 1
    budget.left -= 1
    if budget.left < 0:
        where = f"{interpolate.source}:{lines[path]}"
        raise ConfigError(f"{where}: {_dotted(path)}: YAML aliases expand to more than {_MAX_NODES} values")
    if isinstance(node, yaml.CollectionNode):
        if id(node) in parents:
            raise ConfigError(f"{interpolate.source}:{lines[path]}: {_dotted(path)}: recursive YAML alias")
        parents = (*parents, id(node))
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in result:
                where = f"{interpolate.source}:{key_node.start_mark.line + 1}"
                raise ConfigError(f"{where}: {_dotted((*path, key))}: duplicate key")
            result[key] = _to_python(value_node, (*path, key), lines, interpolate, budget, parents)
            # Errors about a key point at the key's own line, also when its value starts below it.
            lines[(*path, key)] = key_node.start_mark.line + 1
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, (*path, i), lines, interpolate, budget, parents) for i, item in enumerate(node.value)]
    value = budget.scalars.construct_object(node)
    if isinstance(value, str):
        return interpolate(value, path, lines[path])
    return value


def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "<root>"


def _first_error(exc: ValidationError, lines: dict[tuple[str | int, ...], int], source: str) -> str:
    errors = exc.errors()
    # An unknown key is usually a typo of a required one: report the typo, not the "missing" field.
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(error["loc"])
    if len(loc) > 2 and loc[0] == "stores" and loc[2] in STORE_KINDS:
        loc = loc[:2] + loc[3:]  # drop the discriminated union's tag
    if error["type"] == "union_tag_invalid":
        loc = (*loc, "kind")
    line = _nearest_line(loc, lines)
    field = _dotted(loc)
    if error["type"] == "extra_forbidden":
        message = "unknown key" + _did_you_mean(loc)
    elif error["type"] == "union_tag_invalid":
        tag = (error.get("ctx") or {}).get("tag", "?")
        message = f"unknown store kind '{tag}' (expected {store_kinds_text()})"
    elif error["type"] == "missing":
        message = "required field is missing"
    else:
        message = str(error["msg"]).removeprefix("Value error, ")
    where = f"{source}:{line}" if line else source
    return f"{where}: {field}: {message}"


def _yaml_error(exc: yaml.YAMLError, source: str) -> str:
    """A YAML syntax error at the line of the construct that is broken (where it starts), with the
    line where the parser noticed it when that is another one."""
    problem = getattr(exc, "problem", None) or "invalid YAML"
    mark = getattr(exc, "problem_mark", None)
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    if context_mark is not None and context:
        noticed = f" (noticed at line {mark.line + 1})" if mark is not None and mark.line != context_mark.line else ""
        return f"{source}:{context_mark.line + 1}: {context}: {problem}{noticed}"
    return f"{source}:{mark.line + 1}: {problem}" if mark is not None else f"{source}: {problem}"


def _did_you_mean(loc: tuple[str | int, ...]) -> str:
    """`` (did you mean `wait_timeout_s`?)`` for an unknown key close to a known one."""
    import difflib

    if not loc or not isinstance(loc[-1], str):
        return ""
    known = _known_keys(loc[:-1])
    close = difflib.get_close_matches(loc[-1], sorted(known), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def _known_keys(loc: tuple[str | int, ...]) -> set[str]:
    """The field names valid at ``loc`` (a path into the configuration)."""
    models: list[type[BaseModel]] = [RotationConfig]
    for part in loc:
        if isinstance(part, int):
            continue  # a list item: the same models
        if any(part in model.model_fields for model in models):
            models = [m for model in models if part in model.model_fields for m in _fields_models(model, part)]
        # else: a mapping key (a store's name): the same models one level down
    return {name for model in models for name in model.model_fields}


def _fields_models(model: type[BaseModel], field: str) -> list[type[BaseModel]]:
    return _models_in(model.model_fields[field].annotation)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def _nearest_line(loc: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int]) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _use_registered_store_kinds() -> None:
    """``stores`` accepts exactly the registered kinds (``flows.config.stores.register_store_kind``)."""
    RotationConfig.model_fields["stores"].annotation = dict[str, store_config_type()]  # type: ignore[misc,assignment]
    RotationConfig.model_rebuild(force=True)


on_store_kinds_changed(_use_registered_store_kinds)
