"""``langfuse-rotate status``: a read-only inventory of every configured key.

For each entry: where its pair is stored, the current public key, its age, the last rotation and
any rotation in flight, what each consumer reports, how many keys Langfuse holds for the project,
and whether the stored pair authenticates (and to which project). Every read runs in parallel;
nothing is written anywhere and no Prefect is needed.

A read that fails is named in ``Inventory.errors`` (and the entry's ``error``); the caller decides
what it means (``status`` and ``report`` exit 1).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field

from connectors.consumers import Consumer, ConsumerClient
from connectors.errors import ConnectorError, LangfuseAuthError
from connectors.langfuse import ApiKeySummary, LangfuseAdminClient, LangfuseProjectClient
from connectors.store import SecretStore, StoreDescription
from flows.clock import future_note, in_the_future
from flows.config.model import ProjectEntry, RotationConfig
from flows.config.org import org_key
from flows.config.stores import OpenStores
from flows.config.transport import transport_risks
from flows.errors import ConfigError
from flows.redact import install_redaction, scrub
from flows.rotation.trace_evidence import trace_watches

T = TypeVar("T")
MAX_WORKERS = 16
"""Concurrent reads: enough to hide network latency, few enough for a Vault or a Langfuse
instance (one entry costs about six requests)."""


class PendingRotation(BaseModel):
    """A rotation staged in the store and not finished (public facts of its record)."""

    rotation_id: str
    mode: str
    since: datetime
    hours: float
    old_public_key: str | None
    new_public_key: str
    promoted: bool


class EntryStatus(BaseModel):
    """One row of ``status``; the contract's fields first (README, ``status --json``)."""

    project: str
    public_key: str | None = None
    store: str
    path: str
    age_days: int | None = None
    last_rotated_at: datetime | None = None
    last_outcome: str | None = None
    pending: PendingRotation | None = None
    consumers: dict[str, str | None] = {}
    langfuse_keys: int | None = None
    authenticates: bool | None = None
    project_id: str
    store_location: str | None = None
    created_at: datetime | None = None
    age_source: Literal["rotation", "langfuse"] | None = None
    age_unknown: str | None = None
    """Why ``age_days`` is null although the store recorded a rotation: its time lies in the future
    (``flows.clock``)."""
    authenticated_project_id: str | None = None
    consumer_errors: dict[str, str] = {}
    consumer_traces_at: dict[str, datetime] = {}
    """Consumers with ``traces``: when their latest matching trace was sent (docs/trace-evidence.md);
    ``consumers`` names the public key it carried (null where the traces do not show it)."""
    error: str | None = None
    store_read: bool = Field(default=False, exclude=True)
    """The store answered: a missing key then means none is stored, not that none could be read."""


class Inventory(BaseModel):
    """Everything ``status`` read, plus the raw key lists the compliance rules need."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    entries: list[EntryStatus]
    checked_at: datetime
    errors: list[str] = []
    warnings: list[str] = []
    """Connections that carry keys in plain text (``flows.config.transport``), one line each."""
    project_keys: dict[str, list[ApiKeySummary]] = Field(default={}, exclude=True)
    """Langfuse project id -> its keys (configured projects only)."""

    def contract_dict(self) -> dict[str, Any]:
        return {
            "entries": [e.model_dump(mode="json") for e in self.entries],
            "checked_at": _iso(self.checked_at),
            "warnings": list(self.warnings),
        }


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


class _SharedTransport(httpx.BaseTransport):
    """One connection pool for every entry's project client: a client of its own per entry would
    build an SSL context each (~50 ms of CPU). Closing a client leaves the pool open."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._inner.handle_request(request)

    def close(self) -> None:
        """Left open for the other clients; ``shutdown`` closes it."""

    def shutdown(self) -> None:
        self._inner.close()


class Connections:
    """The clients one inventory shares across its threads: a store per configured store, the
    organization-key admin client and one consumer client. Close it when done."""

    def __init__(self, config: RotationConfig) -> None:
        self.config = config
        self._stores = OpenStores(config.stores)
        self._lock = threading.RLock()
        self.consumers = ConsumerClient()
        self.project_transport = _SharedTransport()
        self._admin: LangfuseAdminClient | None = None

    def store(self, name: str) -> SecretStore:
        return self._stores(name)

    @property
    def admin(self) -> LangfuseAdminClient:
        """The organization-key client; raises ``ConnectorError`` if the key cannot be read."""
        with self._lock:
            if self._admin is None:
                org = self.config.langfuse.org_key
                stores = {org.store: self.store(org.store)} if org is not None else {}
                public_key, secret_key = org_key(self.config, stores)
                lf = self.config.langfuse
                self._admin = LangfuseAdminClient(lf.host, public_key, secret_key, timeout_s=lf.timeout_s)
            return self._admin

    def close(self) -> None:
        self.consumers.close()
        self.project_transport.shutdown()
        if self._admin is not None:
            self._admin.close()
        self._stores.close()


def collect_inventory(
    config: RotationConfig,
    *,
    only: str | None = None,
    connections: Connections | None = None,
    now: datetime | None = None,
) -> Inventory:
    """Read every entry (or only the one named ``only``) in parallel. Never raises for a read
    failure: it is recorded in ``errors``."""
    install_redaction()
    now = now or datetime.now(UTC)
    entries = [config.entry(only)] if only else list(config.projects)
    own = connections is None
    conns = connections or Connections(config)
    errors: list[str] = []
    try:
        try:
            conns.admin  # noqa: B018  (the organization key is needed for every project)
        except (ConnectorError, ConfigError) as exc:
            errors.append(f"the organization key could not be read: {_line(exc)}")
        with ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="inventory") as pool:
            key_lists: dict[str, Future[list[ApiKeySummary]]] = {}
            if not errors:
                for project_id in dict.fromkeys(e.project_id for e in entries):
                    key_lists[project_id] = pool.submit(conns.admin.list_api_keys, project_id)
            reads = [(entry, pool.submit(_read_entry, conns, entry, now)) for entry in entries]
            project_keys: dict[str, list[ApiKeySummary]] = {}
            for project_id, future in key_lists.items():
                try:
                    project_keys[project_id] = future.result()
                except ConnectorError as exc:
                    errors.append(f"Langfuse keys of project {project_id}: {_line(exc)}")
            statuses = []
            for entry, read in reads:
                status = read.result()
                _add_langfuse_facts(status, project_keys.get(entry.project_id), now)
                if status.error:
                    errors.append(f"entry '{entry.name}': {status.error}")
                statuses.append(status)
    finally:
        if own:
            conns.close()
    warnings = [risk.line() for risk in transport_risks(config)]
    return Inventory(entries=statuses, checked_at=now, errors=errors, warnings=warnings, project_keys=project_keys)


def _read_entry(conns: Connections, entry: ProjectEntry, now: datetime) -> EntryStatus:
    status = EntryStatus(project=entry.name, store=entry.store, path=entry.path, project_id=entry.project_id)
    problems: list[str] = []
    consumers = _observe_consumers(conns.consumers, entry)
    try:
        store = conns.store(entry.store)
        loc = entry.location()
        status.store_location = store.location_label(loc)
        desc = store.describe(loc)
        status.store_read = True
        _add_store_facts(status, desc, now)
        if desc.exists:
            _check_authentication(status, store, entry, conns, now)
    except (ConnectorError, ConfigError) as exc:
        problems.append(f"store '{entry.store}': {_line(exc)}")
    except _AuthCheckFailed as exc:
        problems.append(str(exc))
    except Exception as exc:  # one entry's surprise must not hide the others' rows
        problems.append(f"unexpected {type(exc).__name__}: {_line(exc)}")
    seen = consumers()
    status.consumers = {**status.consumers, **{name: key for name, (key, _) in seen.items()}}
    status.consumer_errors = {**status.consumer_errors, **{name: error for name, (_, error) in seen.items() if error}}
    status.error = "; ".join(problems) or None
    return status


TRACE_LOOKBACK = timedelta(days=7)
"""How far back ``status`` looks for a consumer's latest trace."""


def _read_trace_keys(status: EntryStatus, client: LangfuseProjectClient, entry: ProjectEntry, now: datetime) -> None:
    """For each consumer with ``traces``: the public key its latest trace carried, and when (one
    ``fields=core`` query each, limit 1). A health endpoint's answer, read after, takes precedence."""
    for watch in trace_watches(entry):
        try:
            found = client.latest_traces(watch.match, now - TRACE_LOOKBACK, key=watch.key, limit=1)
        except ConnectorError as exc:
            status.consumer_errors[watch.name] = f"traces: {_line(exc)}"
            status.consumers[watch.name] = None
            continue
        latest = max(found, key=lambda sighting: sighting.timestamp) if found else None
        status.consumers[watch.name] = latest.public_key if latest is not None else None
        if latest is not None:
            status.consumer_traces_at[watch.name] = latest.timestamp
        else:
            status.consumer_errors[watch.name] = f"traces: none in the last {TRACE_LOOKBACK.days} days"


class _AuthCheckFailed(Exception):
    """Langfuse could not say whether the stored pair authenticates (unreachable, 5xx)."""


def _add_store_facts(status: EntryStatus, desc: StoreDescription, now: datetime) -> None:
    status.public_key = desc.current_public_key
    status.last_rotated_at = desc.last_rotated_at
    if desc.last_rotated_at is not None:
        status.last_outcome = "contained" if desc.last_mode == "emergency" else "rotated"
    if desc.pending is not None:
        since = desc.pending.started_at
        status.pending = PendingRotation(
            rotation_id=desc.pending.rotation_id,
            mode=desc.pending.mode,
            since=since,
            hours=round(max((now - _aware(since)).total_seconds(), 0.0) / 3600, 2),
            old_public_key=desc.pending.old_public_key,
            new_public_key=desc.pending.new_public_key,
            promoted=desc.pending_promoted,
        )
        status.last_outcome = "in_progress"


def _check_authentication(
    status: EntryStatus, store: SecretStore, entry: ProjectEntry, conns: Connections, now: datetime
) -> None:
    pair = store.read_current(entry.location())
    config = conns.config
    host, timeout_s = config.host_for(entry), config.langfuse.timeout_s
    with LangfuseProjectClient(host, pair.key_pair(), timeout_s=timeout_s, transport=conns.project_transport) as client:
        try:
            status.authenticated_project_id = client.auth_check().id
            status.authenticates = True
            _read_trace_keys(status, client, entry, now)
        except LangfuseAuthError:
            status.authenticates = False
        except ConnectorError as exc:
            raise _AuthCheckFailed(f"whether {pair.public_key} authenticates: {_line(exc)}") from None


Seen = dict[str, tuple[str | None, str | None]]
"""Consumer name -> (public key reported, why none could be read)."""


def _observe_consumers(client: ConsumerClient, entry: ProjectEntry) -> Callable[[], Seen]:
    """Start reading every consumer's health endpoint on threads of its own; call the result to
    collect (consumers are independent of the store reads, so both run at once)."""
    results: Seen = {}
    threads = []
    for c in entry.consumers:
        if c.health_url is None:
            continue  # traces only: read from its traces (flows.rotation.trace_evidence)
        consumer = Consumer(
            name=c.name, health_url=c.health_url, public_key_field=c.public_key_field, timeout_s=c.timeout_s
        )

        def observe(consumer: Consumer = consumer) -> None:
            seen = client.observe(consumer)
            results[consumer.name] = (seen.public_key, seen.error)

        thread = threading.Thread(target=observe, daemon=True)
        thread.start()
        threads.append(thread)

    def collect() -> Seen:
        for thread in threads:
            thread.join()
        return {c.name: results.get(c.name, (None, "no answer")) for c in entry.consumers if c.health_url is not None}

    return collect


def _add_langfuse_facts(status: EntryStatus, keys: list[ApiKeySummary] | None, now: datetime) -> None:
    if status.last_rotated_at is not None and in_the_future(status.last_rotated_at, now):
        status.age_unknown = future_note(status.last_rotated_at)  # never "just rotated"
    if keys is None:
        return
    status.langfuse_keys = len(keys)
    current = next((k for k in keys if k.public_key == status.public_key), None)
    if current is not None:
        status.created_at = current.created_at
    if status.age_unknown is not None:
        return
    if status.last_rotated_at is not None:
        born, status.age_source = status.last_rotated_at, "rotation"
    elif status.created_at is not None:
        born, status.age_source = status.created_at, "langfuse"
    else:
        return
    status.age_days = max(int((now - _aware(born)).total_seconds() // 86400), 0)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _line(exc: BaseException) -> str:
    return scrub(" ".join((str(exc) or type(exc).__name__).split()))


def parallel(fn: Callable[[T], Any], items: Iterable[T]) -> list[Any]:
    """``fn`` over ``items`` on the inventory's pool size, results in order (exceptions raised)."""
    with ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="inventory") as pool:
        return list(pool.map(fn, items))


# --- the command line's table -------------------------------------------------------------------


def status_lines(inventory: Inventory) -> list[str]:
    """The human-readable ``status`` output, one block per entry. What could not be read shows as
    unknown; why is said once, by ``problem_lines``."""
    lines: list[str] = []
    for e in inventory.entries:
        age = f"{e.age_days} d ({e.age_source})" if e.age_days is not None else "unknown"
        if e.age_unknown:
            age += f" ({e.age_unknown})"
        auth = {True: "yes", False: "NO", None: "unknown"}[e.authenticates]
        if e.authenticates and e.authenticated_project_id not in (None, e.project_id):
            auth = f"yes, but to project {e.authenticated_project_id} (expected {e.project_id})"
        stored = e.public_key or ("no key stored" if e.store_read else "key unknown (the store could not be read)")
        lines.append(f"{e.project}: {stored}  age {age}  authenticates {auth}")
        count = "unknown" if e.langfuse_keys is None else e.langfuse_keys
        lines.append(f"  store {e.store} {e.store_location or e.path}; Langfuse keys in project: {count}")
        if not e.store_read:
            rotated, outcome = "unknown", "unknown"
        else:
            rotated = e.last_rotated_at.isoformat(timespec="seconds") if e.last_rotated_at else "never by this tool"
            outcome = e.last_outcome or "-"
        lines.append(f"  last rotated {rotated}; last outcome {outcome}")
        if e.pending is not None:
            p = e.pending
            lines.append(
                f"  IN FLIGHT: rotation {p.rotation_id} ({p.mode}) since {p.since.isoformat(timespec='seconds')} "
                f"({p.hours:g} h), new key {p.new_public_key}{' promoted' if p.promoted else ''}"
            )
        for name, key in e.consumers.items():
            note = e.consumer_errors.get(name)
            traced = e.consumer_traces_at.get(name)
            seen = f" (latest trace {traced.isoformat(timespec='seconds')})" if traced is not None else ""
            lines.append(f"  consumer {name}: {key or '-'}{seen}" + (f" ({note})" if note else ""))
    lines += [f"warning: {warning}" for warning in inventory.warnings]
    return lines


def problem_lines(inventory: Inventory) -> list[str]:
    """What could not be read, each once: one line per failed read, an entry's problem shared by
    several entries (their store is down) in one line naming them."""
    entries_by_problem: dict[str, list[str]] = {}
    for e in inventory.entries:
        if e.error:
            entries_by_problem.setdefault(e.error, []).append(e.project)
    lines = [error for error in inventory.errors if not error.startswith("entry '")]
    for problem, names in entries_by_problem.items():
        which = "entry" if len(names) == 1 else "entries"
        lines.append(f"{problem} ({which} {', '.join(names)})")
    return lines
