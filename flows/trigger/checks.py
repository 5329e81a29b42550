"""The checks an event-started emergency passes before it may change anything (docs/emergency.md
"Emergency trigger").

A ``langfuse.key.compromised`` event is input from outside (a secret scanner, an alert rule), so
it is checked like any other input. The run acts only when:

- the event names a configured entry and ``payload.public_key`` (a ``pk-lf-...`` key);
- that key is live in the entry's Langfuse project and is not the current or staged key of
  another configured entry (whatever its store);
- no event-started containment of the same key ran within the last hour (events repeat: one
  containment per key);
- fewer than ``emergency.max_per_hour`` event-started containments of the entry ran within the
  last hour (past that a person must run the command).

Anything else is refused: audited, notified as a warning (tag ``failure``, never ``emergency``),
nothing changed. The emergency deployment runs at most one run per entry at a time
(``emergency_slot``), so these checks and the containment they allow never race another run.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from connectors.errors import ConnectorError
from flows.config.model import ProjectEntry, RotationConfig, load_config
from flows.errors import ConfigError, EventRefused
from flows.rotation.run_names import project_tag
from flows.shown import ENTRY_NAME, shown_matching

TAG_EVENT = "trigger:event"
TAG_CONTAINMENT = "trigger:event-containment"
EMERGENCY_FLOW = "langfuse-key-emergency"
WINDOW = timedelta(hours=1)
_PUBLIC_KEY = re.compile(r"pk-lf-[A-Za-z0-9_-]{1,200}")


@dataclass(frozen=True)
class EarlierRun:
    """An event-started containment of the entry within the hour (``public_key`` as its
    parameter)."""

    name: str
    public_key: str | None


class RunLedger(Protocol):
    """Where the checks read earlier containments and mark this one: the Prefect server, through
    Prefect's client inside a flow (``_PrefectLedger``) or over REST in the responder. Both read and
    write the same flow runs, so a containment by either counts for the other."""

    def earlier_containments(self, entry: str, flow_run_id: str) -> list[EarlierRun]: ...

    def add_tags(self, flow_run_id: str, tags: list[str]) -> None: ...


def slot_name(entry: str) -> str:
    return f"langfuse-emergency-{entry}"


def check_entry(
    config_path: str | None, project: str, *, config: RotationConfig | None = None
) -> tuple[RotationConfig, ProjectEntry]:
    """``config``: already loaded (the responder's, loaded once), else read from ``config_path``."""
    if config is None:
        try:
            config = load_config(config_path)
        except ConfigError as exc:
            raise EventRefused(f"the configuration cannot be read: {exc}", page=True) from None
    try:
        # Looked up (and named in the refusal) only as checked: a name that is none is <invalid>.
        return config, config.entry(shown_matching(ENTRY_NAME, project))
    except ConfigError as exc:
        raise EventRefused(f"the event names {exc}") from None


def check_key(
    config: RotationConfig,
    entry: ProjectEntry,
    public_key: str | None,
    flow_run_id: str,
    ledger: RunLedger | None = None,
) -> None:
    """Raises ``EventRefused`` unless the event may contain ``public_key``; on success this run is
    counted as one of the entry's event-started containments. Called under the entry's emergency
    slot, so no other run checks (or contains) between the look at earlier runs and the tag."""
    ledger = ledger or _PrefectLedger()
    if not public_key:
        raise EventRefused("the event names no payload.public_key: an event must name the leaked key")
    if not _PUBLIC_KEY.fullmatch(public_key):
        raise EventRefused("payload.public_key is not a Langfuse public key (pk-lf-...)")
    earlier = ledger.earlier_containments(entry.name, flow_run_id)
    same_key = [run for run in earlier if run.public_key == public_key]
    if same_key:
        raise EventRefused(
            f"{public_key} was already contained by run {same_key[0].name} within the hour: one containment per key",
            duplicate=True,
        )
    limit = config.emergency.max_per_hour
    if len(earlier) >= limit:
        raise EventRefused(
            f"{len(earlier)} event-started containments of '{entry.name}' within the hour "
            f"(emergency.max_per_hour {limit}): a person must run "
            f"'langfuse-rotate emergency --project {entry.name} --public-key {public_key}'"
        )
    _check_not_another_entrys_key(config, entry, public_key)
    _check_live_in_project(config, entry, public_key)
    ledger.add_tags(flow_run_id, [TAG_CONTAINMENT])


def _check_not_another_entrys_key(config: RotationConfig, entry: ProjectEntry, public_key: str) -> None:
    from flows.config.stores import build_store

    for other in config.projects:
        if other.name == entry.name or other.project_id != entry.project_id:
            continue  # a Langfuse key belongs to one project: only entries of this project can hold it
        try:
            desc = build_store(config.stores[other.store]).describe(other.location())
        except (ConnectorError, ConfigError) as exc:
            raise EventRefused(
                f"cannot check whether entry '{other.name}' uses {public_key}: {exc}", page=True
            ) from None
        staged = {desc.pending.old_public_key, desc.pending.new_public_key} if desc.pending else set()
        if public_key == desc.current_public_key or public_key in staged:
            raise EventRefused(
                f"{public_key} is a key of entry '{other.name}', not of '{entry.name}': "
                f"contain it with 'langfuse-rotate emergency --project {other.name}'"
            )


def _check_live_in_project(config: RotationConfig, entry: ProjectEntry, public_key: str) -> None:
    from flows.rotation.context import EntryContext

    try:
        ctx = EntryContext(config, entry, eager_notifier=False)
        try:
            keys = ctx.admin.list_api_keys(entry.project_id)
        finally:
            ctx.close()
    except (ConnectorError, ConfigError) as exc:
        raise EventRefused(f"cannot list the keys of project {entry.project_id}: {exc}", page=True) from None
    if not any(k.public_key == public_key for k in keys):
        raise EventRefused(f"{public_key} is not a live key of Langfuse project {entry.project_id} (already deleted?)")


def refused_message(refused: EventRefused) -> str:
    """The state message of a run that refused its event (``refused: <why>``)."""
    from flows.shown import single_line

    return f"refused: {single_line(str(refused))}"


def report_refusal(
    project: str,
    config_path: str | None,
    public_key: str | None,
    event_id: str,
    event_source: str | None,
    refused: EventRefused,
    *,
    config: RotationConfig | None = None,
) -> None:
    """The refused run's one audit line and its warning. A duplicate (the key was contained by
    another run of the same report: the responder's and the automation's, or a repeated event) is
    audited but not notified: the containment that happened sent the one notification."""
    from connectors.notify import Notification
    from flows.audit import AuditLog, resource_id
    from flows.config.model import audit_path_for
    from flows.rotation.notification import send_to
    from flows.shown import EVENT_ID, EVENT_SOURCE, shown_key, single_line

    reason = str(refused)
    audit_path = config.audit.path if config is not None else audit_path_for(config_path)
    details: dict[str, Any] = {"reason": reason, "public_key": public_key, "event_id": event_id}
    details["event_source"] = event_source
    if refused.duplicate:
        details["duplicate"] = True
    AuditLog(audit_path).final("emergency", project, "refused", **details)
    if refused.duplicate:
        return
    what = "could not be checked" if refused.page else "was refused"
    # Everything here came with the event: shown only as checked, each on its own line.
    entry = shown_matching(ENTRY_NAME, project)
    body = "\n".join(
        [
            f"project: {entry}",
            f"resource: {resource_id(entry)}",
            f"event: {shown_matching(EVENT_ID, event_id)} from "
            f"{shown_matching(EVENT_SOURCE, event_source) if event_source else 'unknown source'}",
            f"public key: {shown_key(public_key) if public_key else '(none)'}",
            f"nothing was changed: {single_line(reason)}",
        ]
    )
    send_to(
        config_path,
        Notification(
            title=f"Langfuse compromise event {what}: {entry}",
            body=body,
            kind="emergency" if refused.page else "failure",
        ),
        config=config,
    )


# --- Prefect: earlier runs, tags, one run per entry ---------------------------------------------


class _PrefectLedger:
    """Earlier containments through Prefect's client (inside a flow, where it is loaded anyway)."""

    def earlier_containments(self, entry: str, flow_run_id: str) -> list[EarlierRun]:
        return [
            EarlierRun(name=run.name, public_key=(run.parameters or {}).get("public_key"))
            for run in _earlier_containments(entry, flow_run_id)
        ]

    def add_tags(self, flow_run_id: str, tags: list[str]) -> None:
        _add_tags(flow_run_id, tags)


def _earlier_containments(entry: str, flow_run_id: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterStartTime,
        FlowRunFilterTags,
    )

    since = datetime.now(UTC) - WINDOW
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[EMERGENCY_FLOW])),
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[project_tag(entry), TAG_CONTAINMENT]),
                start_time=FlowRunFilterStartTime(after_=since),
            ),
        )
    return [run for run in runs if str(run.id) != flow_run_id]


def _add_tags(flow_run_id: str, tags: list[str]) -> None:
    from uuid import UUID

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(flow_run_id))
        client.update_flow_run(UUID(flow_run_id), tags=sorted({*run.tags, *tags}))


def mark_event_started(flow_run_id: str) -> None:
    _add_tags(flow_run_id, [TAG_EVENT])


@contextlib.contextmanager
def emergency_slot(entry: str, *, wait_s: float, lease_s: int) -> Iterator[None]:
    """At most one emergency run per entry at a time (a Prefect global concurrency limit
    ``langfuse-emergency-<entry>``, leased so a crashed holder frees it). A run that waits longer
    than ``wait_s`` is refused."""
    from connectors.prefect_api import ConcurrencyLimit
    from flows.rotation.lock import held_lease, prefect_api

    api = prefect_api()
    if api is None:  # the embedded server: every run is in this process's server, one at a time per entry anyway
        raise EventRefused("an emergency slot needs a Prefect server (PREFECT_API_URL)")
    name = slot_name(entry)
    api.ensure_limit(ConcurrencyLimit(name=name, limit=1))
    lease = api.acquire(name, lease_s=lease_s, timeout_s=max(wait_s, 1.0))
    if lease is None:
        raise EventRefused(f"another emergency run of '{entry}' is still running after {wait_s:g}s")
    with held_lease(api, lease, lease_s, label=f"emergency-{entry}"):
        yield
