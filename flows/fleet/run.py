"""Fleet rotation: every entry of the configuration, concurrently (docs/fleet.md).

Each entry runs the same checklist as ``rotate --project`` (``flows.rotation.entry_run``), at most
``concurrency`` at a time, so the waits for consumers overlap. One entry failing never stops the
others. Requests are paced (``flows.fleet.pacing``); entries rotated within
``fleet.skip_if_rotated_within`` are ``skipped`` and unfinished ones resume, so rerunning a killed
fleet never rotates a key twice. The entries' notifications are held and sent as one summary.

Prefect is optional here: ``flows.fleet.prefect_run`` records each entry as its own flow run and
publishes the summary and progress artifacts; the CLI's ``--dry-run`` runs without it.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel

from connectors.errors import ConnectorError
from connectors.notify import Notification, Notifier
from connectors.store import SecretStore, StoreDescription
from flows.audit import AuditLog
from flows.clock import in_the_future
from flows.config.model import ProjectEntry, RotationConfig
from flows.config.stores import OpenStores
from flows.config.templates import Generated, expand, organization_projects
from flows.fleet.group_lease import GroupLeases, group_size
from flows.fleet.pacing import fleet_pacing
from flows.models import DONE_STATUSES, ExitCode, RotationResult, StepRecord
from flows.redact import install_redaction, scrub
from flows.rotation import events, steps
from flows.rotation.context import shared_stores
from flows.rotation.entry_run import execute
from flows.rotation.lock import prefect_api, shared_slots
from flows.rotation.notification import held_for_summary
from flows.rotation.runners import DirectRunner, StepRunner
from flows.rotation.step_table import one_line
from flows.shown import single_line

FleetStatus = Literal["rotated", "partial", "failed", "needs_attention", "planned"]

_GOOD = DONE_STATUSES | {"skipped"}
_FAILED = {"failed", "rolled_back"}
T = TypeVar("T")


class FleetResult(BaseModel):
    """``rotate --all --json``: one object (docs/fleet.md)."""

    status: FleetStatus
    total: int
    counts: dict[str, int]
    entries: list[RotationResult]
    duration_s: float
    prefect_flow_run_id: str | None = None
    error: str | None = None
    template: list[dict[str, Any]] | None = None

    @property
    def exit_code(self) -> ExitCode:
        return fleet_exit_code(self.entries, failed=self.error is not None)

    @property
    def nothing_to_rotate(self) -> bool:
        """Every entry was skipped (rotated within ``fleet.skip_if_rotated_within``)."""
        return bool(self.entries) and all(e.status == "skipped" for e in self.entries)

    def contract_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "status": self.status,
            "total": self.total,
            "counts": self.counts,
            "entries": [e.contract_dict() for e in self.entries],
            "duration_s": self.duration_s,
            "prefect_flow_run_id": self.prefect_flow_run_id,
        }
        if self.error is not None:
            data["error"] = self.error
        if self.template is not None:
            data["template"] = self.template
        return data

    def to_json_line(self) -> str:
        return json.dumps(self.contract_dict())


def fleet_exit_code(entries: Sequence[RotationResult], *, failed: bool = False) -> ExitCode:
    """4 if any entry needs a person, else 1 if any failed, else 3 if any was refused as in
    progress, else 0."""
    statuses = {e.status for e in entries}
    if "needs_attention" in statuses:
        return ExitCode.NEEDS_ATTENTION
    if failed or statuses & _FAILED:
        return ExitCode.FAILED
    if "in_progress" in statuses:
        return ExitCode.IN_PROGRESS
    return ExitCode.OK


def fleet_status(entries: Sequence[RotationResult], *, dry_run: bool = False) -> FleetStatus:
    statuses = [e.status for e in entries]
    if "needs_attention" in statuses:
        return "needs_attention"
    good = sum(s in _GOOD for s in statuses)
    if dry_run:
        return "planned" if good == len(statuses) else ("failed" if not good else "partial")
    if good == len(statuses):
        return "rotated"
    return "failed" if good == 0 else "partial"


def counts_of(entries: Sequence[RotationResult]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.status] = counts.get(entry.status, 0) + 1
    return dict(sorted(counts.items()))


# --- recording and progress (Prefect or terminal plug in here) ----------------------------------


class EntryRecorder(Protocol):
    """Records each entry as its own run (``flows.fleet.prefect_run``)."""

    orchestrator: str

    def started(self, entry: ProjectEntry) -> tuple[str | None, str | None]:
        """(run id, run label) of the entry's run, before it changes anything."""
        ...

    def finished(self, entry: ProjectEntry, run_id: str | None, result: RotationResult) -> None: ...


class FleetProgress:
    """Counts for the live progress bar and the progress artifact: done, failed, waiting on
    consumers, remaining, elapsed."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.finished: dict[str, int] = {}
        self.waiting: set[str] = set()
        self.running: set[str] = set()

    def start(self, name: str) -> None:
        with self._lock:
            self.running.add(name)

    def wait(self, name: str, waiting: bool) -> None:
        with self._lock:
            (self.waiting.add if waiting else self.waiting.discard)(name)

    def finish(self, name: str, status: str) -> None:
        with self._lock:
            self.running.discard(name)
            self.waiting.discard(name)
            self.finished[status] = self.finished.get(status, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            done = sum(self.finished.values())
            failed = sum(n for s, n in self.finished.items() if s not in _GOOD)
            return {
                "total": self.total,
                "done": done,
                "failed": failed,
                "waiting": len(self.waiting),
                "running": len(self.running),
                "remaining": self.total - done,
                "elapsed_s": round(time.monotonic() - self.started, 1),
            }

    def line(self, width: int = 30) -> str:
        s = self.snapshot()
        filled = int(width * s["done"] / s["total"]) if s["total"] else width
        elapsed = int(s["elapsed_s"])
        return (
            f"[{'#' * filled}{'.' * (width - filled)}] {s['done']}/{s['total']} done, {s['failed']} failed, "
            f"{s['waiting']} waiting on consumers, {s['remaining']} remaining, {elapsed // 60}:{elapsed % 60:02d}"
        )


ProgressSink = Callable[[FleetProgress, bool], None]
"""Called every ``PROGRESS_EVERY_S`` and once at the end (second argument True)."""
PROGRESS_EVERY_S = 1.0


@contextmanager
def _reporting(progress: FleetProgress, sinks: Sequence[ProgressSink]) -> Iterator[None]:
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(PROGRESS_EVERY_S):
            for sink in sinks:
                sink(progress, False)

    thread = threading.Thread(target=tick, name="fleet-progress", daemon=True) if sinks else None
    if thread is not None:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if thread is not None:
            thread.join(5)
        for sink in sinks:
            sink(progress, True)


def terminal_progress_sink() -> ProgressSink:
    """A live progress bar on stderr (redrawn in place; a newline at the end)."""
    import sys

    def sink(progress: FleetProgress, final: bool) -> None:
        sys.stderr.write("\r\x1b[2K" + progress.line() + ("\n" if final else ""))
        sys.stderr.flush()

    return sink


class _ProgressRunner:
    """The step runner of one entry: runs steps directly and tells the progress who waits on consumers."""

    def __init__(self, inner: StepRunner, progress: FleetProgress, name: str, orchestrator: str) -> None:
        self._inner = inner
        self._progress = progress
        self._name = name
        self.orchestrator = orchestrator

    def run(self, fn: Callable[..., T], *args: Any, timeout_s: float | None = None, **kwargs: Any) -> T:
        if fn is not steps.wait_for_restarts:
            return self._inner.run(fn, *args, timeout_s=timeout_s, **kwargs)
        self._progress.wait(self._name, True)
        try:
            return self._inner.run(fn, *args, timeout_s=timeout_s, **kwargs)
        finally:
            self._progress.wait(self._name, False)


# --- the fleet run ------------------------------------------------------------------------------

ApprovalRunner = Callable[[ProjectEntry], RotationResult]


def run_fleet(
    config: RotationConfig,
    *,
    config_path: str | None,
    concurrency: int | None = None,
    dry_run: bool = False,
    only: Sequence[str] | None = None,
    recorder: EntryRecorder | None = None,
    progress_sinks: Sequence[ProgressSink] = (),
    shared_pacing: bool = False,
    lock_with_prefect: bool | None = None,
    approval_runner: ApprovalRunner | None = None,
    fleet_run_id: str | None = None,
    notify_summary: bool = True,
) -> FleetResult:
    """Rotate (or, ``dry_run``, check) every entry; ``only`` limits the run to some entries (a
    batch handed to another worker)."""
    install_redaction()
    started = time.monotonic()
    generated: list[Generated] = []
    if config.project_template is not None:
        try:
            config, generated = expand(config, organization_projects(config))
        except ConnectorError as exc:
            error = f"project_template: cannot list the organization's projects: {one_line(exc)}"
            return _setup_failed(config, error, started, fleet_run_id, notify_summary)
    entries = [e for e in config.projects if only is None or e.name in set(only)]
    refused = refused_results(generated, "prefect" if recorder is not None else "none") if only is None else []
    width = max(1, min(concurrency or config.fleet.concurrency, len(entries) or 1))
    progress = FleetProgress(len(entries))
    held: list[RotationResult] = []
    store = OpenStores(config.stores)
    groups = _group_leases(config, entries, width) if lock_with_prefect and not dry_run else None

    def one(entry: ProjectEntry) -> RotationResult:
        held_for_summary.set(held)
        shared_stores.set(store)
        shared_slots.set(groups)
        progress.start(entry.name)
        try:
            if dry_run:
                result = _dry_run(config, entry)
            else:
                result = _rotate_one(
                    config,
                    entry,
                    config_path=config_path,
                    store=store,
                    recorder=recorder,
                    progress=progress,
                    lock_with_prefect=lock_with_prefect,
                    approval_runner=approval_runner,
                )
        except Exception as exc:  # one entry's surprise never stops the others
            result = RotationResult(status="failed", project=entry.name, store=entry.store, error=one_line(exc))
        finally:
            if groups is not None:
                groups.done(entry.name)
        progress.finish(entry.name, result.status)
        return result

    try:
        with (
            fleet_pacing(config, shared=shared_pacing and not dry_run),
            events.batched() if not dry_run else contextlib.nullcontext(),
            _reporting(progress, progress_sinks),
            ThreadPoolExecutor(max_workers=width, thread_name_prefix="fleet") as pool,
        ):
            results = list(pool.map(one, entries)) + refused
    finally:
        if groups is not None:
            groups.close()
    store.close()
    result = FleetResult(
        status=fleet_status(results, dry_run=dry_run),
        total=len(results),
        counts=counts_of(results),
        entries=results,
        duration_s=round(time.monotonic() - started, 3),
        prefect_flow_run_id=fleet_run_id,
        template=[_generated_row(g) for g in generated] if config.project_template is not None else None,
    )
    if not dry_run:
        failed = sorted(e.project for e in results if e.status not in _GOOD)
        AuditLog(config.audit.path, run_id=fleet_run_id).final(
            "rotate-all",
            None,
            "failed" if failed else "rotated",
            entries=len(results),
            failed_entries=failed or None,
            counts=result.counts,
        )
        if notify_summary:
            send_summary(config, result)
    return result


def _group_leases(config: RotationConfig, entries: Sequence[ProjectEntry], width: int) -> GroupLeases | None:
    """The entries' Prefect slots, a group at a time (``flows.fleet.group_lease``); an entry that
    needs approval runs as its own flow run, which takes its own slot."""
    size = group_size(width)
    api = prefect_api() if size else None
    if api is None:
        return None
    names = [e.name for e in entries if e.approval != "required"]
    return GroupLeases(api, names, size=size, lease_s=config.lock.lease_s)


def refused_results(generated: Sequence[Generated], orchestrator: Literal["prefect", "none"]) -> list[RotationResult]:
    """The projects the template refused for safety, as ``skipped`` entries that say why (README
    "Entry templates"): nothing of theirs ran, nothing was written."""
    results = []
    for g in generated:
        if g.refused is None:
            continue
        results.append(
            RotationResult(
                status="skipped",
                project=g.refused.entry,
                store=g.refused.store,
                orchestrator=orchestrator,
                error=g.problem,
                steps=[StepRecord(step="plan", outcome="skipped", duration_s=0.0, detail=g.problem or "")],
            )
        )
    return results


def _generated_row(g: Generated) -> dict[str, Any]:
    return {"project": g.project_name, "project_id": g.project_id, "entry": g.entry, "problem": g.problem}


def _setup_failed(
    config: RotationConfig, error: str, started: float, fleet_run_id: str | None, notify_summary: bool
) -> FleetResult:
    result = FleetResult(
        status="failed",
        total=0,
        counts={},
        entries=[],
        duration_s=round(time.monotonic() - started, 3),
        prefect_flow_run_id=fleet_run_id,
        error=scrub(error),
    )
    if notify_summary:
        send_summary(config, result)
    return result


def _skip_reason(desc: StoreDescription | None, window_s: float, now: datetime) -> str | None:
    """Why the entry described by ``desc`` needs no rotation now (rotated within the window), or
    None. An unfinished rotation is never skipped: the run resumes it. Nor is a key whose rotation
    time lies in the future (``flows.clock``): its age is unknown, not zero."""
    if window_s <= 0 or desc is None:
        return None
    last = desc.last_rotated_at
    if desc.pending is not None or last is None or last.tzinfo is None or in_the_future(last, now):
        return None
    if now - last < timedelta(seconds=window_s):
        return f"rotated {last.isoformat(timespec='seconds')}, within fleet.skip_if_rotated_within"
    return None


def _rotate_one(
    config: RotationConfig,
    entry: ProjectEntry,
    *,
    config_path: str | None,
    store: Callable[[str], SecretStore],
    recorder: EntryRecorder | None,
    progress: FleetProgress,
    lock_with_prefect: bool | None,
    approval_runner: ApprovalRunner | None,
) -> RotationResult:
    began = time.monotonic()
    try:
        before: StoreDescription | None = store(entry.store).describe(entry.location())
    except ConnectorError:
        before = None  # the run's plan step reports it
    reason = _skip_reason(before, config.fleet.skip_window_s, datetime.now(UTC))
    if reason is not None:
        return RotationResult(
            status="skipped",
            project=entry.name,
            store=entry.store,
            orchestrator="prefect" if recorder is not None else "none",
            steps=[
                StepRecord(step="plan", outcome="skipped", duration_s=round(time.monotonic() - began, 3), detail=reason)
            ],
            duration_s=round(time.monotonic() - began, 3),
        )
    if entry.approval == "required":
        if approval_runner is None:
            return RotationResult(
                status="needs_attention",
                project=entry.name,
                store=entry.store,
                orchestrator="none",
                error="approval required: a fleet run without Prefect cannot pause for it; "
                f"run 'langfuse-rotate rotate --project {entry.name}'",
            )
        return approval_runner(entry)
    run_id, label = recorder.started(entry) if recorder is not None else (None, None)
    runner = _ProgressRunner(DirectRunner(), progress, entry.name, recorder.orchestrator if recorder else "none")
    try:
        result = execute(
            "rotate",
            entry.name,
            config_path,
            runner,
            flow_run_id=run_id,
            run_label=label,
            lock_with_prefect=lock_with_prefect,
            config=config,
            state_before=before,
        )
    except Exception as exc:
        result = RotationResult(
            status="failed", project=entry.name, store=entry.store, prefect_flow_run_id=run_id, error=one_line(exc)
        )
    if recorder is not None:
        recorder.finished(entry, run_id, result)
    return result


def _dry_run(config: RotationConfig, entry: ProjectEntry) -> RotationResult:
    from flows.rotation.context import EntryContext
    from flows.rotation.dryrun import dry_run

    try:
        ctx = EntryContext(config, entry, run_label="dry-run")
    except ConnectorError as exc:
        return RotationResult(
            status="failed", project=entry.name, store=entry.store, orchestrator="none", error=str(exc)
        )
    try:
        return dry_run(ctx)
    finally:
        ctx.close()


# --- the one summary notification ---------------------------------------------------------------


def _summary_notification(result: FleetResult, run_name: str | None = None) -> Notification:
    """Failures and entries needing a person by name; successes counted, not listed."""
    ok = result.counts.get("rotated", 0)
    skipped = result.counts.get("skipped", 0)
    if result.nothing_to_rotate:
        title = f"Langfuse fleet rotation: nothing to rotate ({skipped} skipped of {result.total})"
        body = [
            f"fleet run: {run_name or result.prefect_flow_run_id or 'local'}",
            "every entry was rotated within fleet.skip_if_rotated_within; nothing was changed",
            f"duration: {result.duration_s:.1f}s",
        ]
        return Notification(title=title, body=scrub("\n".join(body)), kind="info")
    title = f"Langfuse fleet rotation {result.status}: {ok} rotated, {skipped} skipped of {result.total}"
    lines = [f"fleet run: {run_name or result.prefect_flow_run_id or 'local'}", f"status: {result.status}"]
    lines.append("counts: " + (", ".join(f"{k} {v}" for k, v in result.counts.items()) or "none"))
    if result.error:
        lines.append(f"error: {single_line(result.error)}")
    groups = (
        ("NEEDS A PERSON", {"needs_attention"}),
        ("FAILED", _FAILED),
        ("refused, another rotation in progress", {"in_progress"}),
    )
    for heading, statuses in groups:
        named = [e for e in result.entries if e.status in statuses]
        if named:
            lines.append(f"{heading} ({len(named)}):")
            lines += [f"- {e.project} ({e.status}): {single_line(e.error or 'see its run')}" for e in named]
    refused = [e for e in result.entries if e.status == "skipped" and e.error]
    if refused:
        lines.append(f"SKIPPED, refused by project_template ({len(refused)}):")
        lines += [f"- {e.project}: {single_line(e.error or '')}" for e in refused]
    lines.append(f"duration: {result.duration_s:.1f}s")
    kind = "success" if result.status == "rotated" else "failure"
    return Notification(title=title, body=scrub("\n".join(lines)), kind=kind)


def send_summary(config: RotationConfig, result: FleetResult, run_name: str | None = None) -> None:
    """One message per fleet run; a delivery problem is audited, never fatal."""
    audit = AuditLog(config.audit.path, run_id=result.prefect_flow_run_id)
    try:
        outcome = Notifier(config.notify.targets()).send(_summary_notification(result, run_name))
    except (ConnectorError, ValueError) as exc:
        audit.record("notify", "fleet", "failed", error=one_line(exc))
        return
    audit.record("notify", "fleet", outcome.status, delivered=outcome.delivered)
