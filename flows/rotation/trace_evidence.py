"""Trace evidence (docs/trace-evidence.md): a consumer's own traces show which key it sends with.

Two questions, each answered by polling Langfuse with small ``fields=core`` queries (through the
project client: the fleet's Langfuse limiter, retries and response cap apply), backing off between
rounds:

- ``wait_switched`` (before revoke): has every replica moved to the new key? Yes once a matching
  trace sent with the new key arrived since the new pair was stored *and* none sent with the old
  key has a timestamp in the last ``quiet_s``.
- ``check_after_revoke`` (after revoke): does every consumer that sent in the ``after_revoke_s``
  before the revoke send again after it (with the new key, where its traces carry one)? One that
  sent nothing before is not judged.

Never raises for what Langfuse answers: a server too old for the filter (a 400) is the consumer's
error, naming the minimum version, and never counts as switched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict

from connectors.errors import ConnectorError, LangfuseUnsupportedServerError
from connectors.langfuse import KeySource, KeySpec, TraceMatch, TraceSighting
from flows.config.model import ProjectEntry
from flows.redact import scrub
from flows.rotation.progress import progress

_log = logging.getLogger("langfuse_rotate.trace_evidence")

FIRST_POLL_S = 1.0
MAX_POLL_S = 10.0
"""Between rounds the pause doubles from ``FIRST_POLL_S`` up to this (never a tight poll)."""


class _Counted(Protocol):
    queries: int


class TraceReader(Protocol):
    """What is read from Langfuse: ``LangfuseProjectClient.latest_traces``."""

    def latest_traces(
        self,
        match: TraceMatch,
        since: datetime,
        *,
        public_key: str | None = None,
        key: KeySpec | None = None,
        limit: int = 5,
    ) -> list[TraceSighting]: ...


class TraceWatch(BaseModel):
    """One consumer's ``traces`` section, as the checks use it."""

    model_config = ConfigDict(frozen=True)

    name: str
    match: TraceMatch
    key: KeySpec | None
    """How its traces show their key; None: they carry none (``key_source: none``)."""
    quiet_s: float
    after_revoke_s: float
    has_health: bool = False

    @property
    def gives_evidence_before_revoke(self) -> bool:
        return self.key is not None


def trace_watches(entry: ProjectEntry) -> list[TraceWatch]:
    """The entry's consumers with a ``traces`` section, in configuration order."""
    watches = []
    for consumer in entry.consumers:
        traces = consumer.traces
        if traces is None:
            continue
        m = traces.match
        match = TraceMatch(
            name=m.name,
            environment=m.environment,
            tags=tuple(m.tags),
            release=m.release,
            version=m.version,
            metadata=dict(m.metadata),
        )
        key = None if traces.key_source == "none" else KeySpec(source=KeySource(traces.key_source))
        if key is not None and key.source is KeySource.METADATA:
            key = KeySpec(source=KeySource.METADATA, metadata_key=traces.key_metadata)
        watches.append(
            TraceWatch(
                name=consumer.name,
                match=match,
                key=key,
                quiet_s=traces.quiet_s,
                after_revoke_s=traces.after_revoke_s,
                has_health=consumer.health_url is not None,
            )
        )
    return watches


def _at(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- before revoke ------------------------------------------------------------------------------


class TraceVerdict(BaseModel):
    """What one consumer's traces showed before the revoke."""

    name: str
    switched: bool = False
    new_seen_at: datetime | None = None
    """The newest trace sent with the new key since the new pair was stored."""
    old_last_at: datetime | None = None
    """The newest trace sent with the old key that a query saw (None: none in the windows asked)."""
    error: str | None = None
    queries: int = 0
    quiet_s: float = 0.0

    @property
    def public_key_seen(self) -> Literal["new", "old"] | None:
        if self.switched or (self.new_seen_at is not None and self.old_last_at is None):
            return "new"
        if self.old_last_at is not None:
            return "old"
        return None

    def evidence(self) -> str:
        """One line for the step table and the progress log."""
        if self.switched:
            return f"{self.name}: sent with the new key, none with the old one for {self.quiet_s:g}s"
        return f"{self.name}: {self.why_not()}"

    def why_not(self, old: str = "the old key", new: str = "the new key") -> str:
        """Why not switched (``old``/``new``: how to name the keys, e.g. with the key itself)."""
        if self.error is not None:
            return self.error
        if self.old_last_at is not None:
            return f"still sent with {old}, last at {_at(self.old_last_at)}" + (
                "" if self.new_seen_at is not None else f"; nothing with {new} yet"
            )
        return f"no trace sent with {new} yet"


class TraceWait:
    """Polls trace evidence with backoff; ``sleep`` is the handover-aware pause of the run."""

    def __init__(
        self,
        reader: TraceReader,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._reader = reader
        self._sleep = sleep
        self._clock = clock
        self._now = now

    def _ask(
        self, counted: _Counted, watch: TraceWatch, since: datetime, public_key: str | None
    ) -> TraceSighting | None:
        """The newest matching trace since ``since`` (sent with ``public_key``, if given); counted."""
        counted.queries += 1
        found = self._reader.latest_traces(watch.match, since, public_key=public_key, key=watch.key, limit=1)
        return max(found, key=lambda s: s.timestamp) if found else None

    def wait_switched(
        self,
        watches: Sequence[TraceWatch],
        new_key: str,
        old_key: str | None,
        *,
        since: datetime,
        timeout_s: float,
    ) -> dict[str, TraceVerdict]:
        """Until every watch (with a key source) switched, or ``timeout_s`` is over; never raises."""
        start = self._clock()
        verdicts = {w.name: TraceVerdict(name=w.name, quiet_s=w.quiet_s) for w in watches if w.key is not None}
        pending = [w for w in watches if w.key is not None]
        delay = FIRST_POLL_S
        while pending:
            final = self._clock() - start >= timeout_s
            for watch in list(pending):
                verdict = verdicts[watch.name]
                done = self._round(watch, verdict, new_key, old_key, since, final)
                if done:
                    pending.remove(watch)
            switched = [v.name for v in verdicts.values() if v.switched]
            if pending:
                progress(
                    f"wait_for_restarts: traces: {len(switched)}/{len(verdicts)} switched to {new_key}; waiting for "
                    + ", ".join(f"{w.name} ({verdicts[w.name].why_not()})" for w in pending)
                )
            remaining = timeout_s - (self._clock() - start)
            if not pending or final:
                break
            self._sleep(max(min(delay, remaining), 0.0))
            delay = min(delay * 2, MAX_POLL_S)
        return verdicts

    def _round(
        self,
        watch: TraceWatch,
        verdict: TraceVerdict,
        new_key: str,
        old_key: str | None,
        since: datetime,
        final: bool,
    ) -> bool:
        """One look at one consumer; True when nothing more is to be learnt (switched, or refused)."""
        try:
            if verdict.new_seen_at is None:
                seen = self._ask(verdict, watch, since, new_key)
                verdict.new_seen_at = seen.timestamp if seen is not None else None
            if old_key is not None and (verdict.new_seen_at is not None or final):
                # the last quiet_s; on the final round reach back to the wait's start, to say when it last sent
                window = timedelta(seconds=watch.quiet_s)
                after = self._now() - window if verdict.new_seen_at is not None else min(since, self._now()) - window
                old = self._ask(verdict, watch, after, old_key)
                if old is not None:
                    verdict.old_last_at = max(old.timestamp, verdict.old_last_at or old.timestamp)
                quiet = old is None or old.timestamp < self._now() - window
            else:
                quiet = True
            verdict.error = None
        except LangfuseUnsupportedServerError as exc:
            verdict.error = scrub(str(exc))
            return True
        except ConnectorError as exc:
            verdict.error = scrub(f"cannot read its traces: {exc}")
            return False
        verdict.switched = verdict.new_seen_at is not None and quiet
        return verdict.switched

    # --- after revoke ---------------------------------------------------------------------------

    def check_after_revoke(
        self, watches: Sequence[TraceWatch], new_key: str, *, revoked_at: datetime
    ) -> AfterRevokeOutcome:
        """Every watch: did it send after ``revoked_at`` within its ``after_revoke_s``? Never raises."""
        start = self._clock()
        elapsed_at_start = (self._now() - revoked_at).total_seconds()
        states = {w.name: _AfterRevoke(name=w.name) for w in watches}
        pending = list(watches)
        delay = FIRST_POLL_S
        while pending:
            for watch in list(pending):
                state = states[watch.name]
                left = watch.after_revoke_s - elapsed_at_start - (self._clock() - start)
                if self._look_after(watch, state, new_key, revoked_at) or left <= 0:
                    pending.remove(watch)
            if not pending:
                break
            left = min(w.after_revoke_s for w in pending) - elapsed_at_start - (self._clock() - start)
            progress(
                "check_ingestion: waiting for a trace after the revoke from "
                + ", ".join(w.name for w in pending)
                + f"; {max(left, 0):.0f}s left"
            )
            self._sleep(max(min(delay, left), 0.0))
            delay = min(delay * 2, MAX_POLL_S)
        return AfterRevokeOutcome(
            revoked_at=revoked_at,
            consumers=[states[w.name].result() for w in watches],
        )

    def _look_after(self, watch: TraceWatch, state: _AfterRevoke, new_key: str, revoked_at: datetime) -> bool:
        try:
            key = new_key if watch.key is not None else None
            after = self._ask(state, watch, revoked_at, key)
            if after is not None:
                state.sent_after_at = after.timestamp
                return True
            if state.sent_before_at is None:
                before = self._ask(state, watch, revoked_at - timedelta(seconds=watch.after_revoke_s), None)
                if before is not None:
                    state.sent_before_at = before.timestamp
            state.error = None
            return False
        except LangfuseUnsupportedServerError as exc:
            state.error = scrub(str(exc))
            return True
        except ConnectorError as exc:
            state.error = scrub(f"cannot read its traces: {exc}")
            return False


class _AfterRevoke(BaseModel):
    name: str
    sent_before_at: datetime | None = None
    sent_after_at: datetime | None = None
    error: str | None = None
    queries: int = 0

    def result(self) -> IngestionVerdict:
        if self.sent_after_at is not None:
            verdict: Literal["sending", "silent", "not_judged", "unknown"] = "sending"
        elif self.error is not None:
            verdict = "unknown"
        elif self.sent_before_at is not None:
            verdict = "silent"
        else:
            verdict = "not_judged"
        return IngestionVerdict(
            name=self.name,
            verdict=verdict,
            last_before_at=self.sent_before_at,
            first_after_at=self.sent_after_at,
            error=self.error,
            queries=self.queries,
        )


class IngestionVerdict(BaseModel):
    """One consumer after the revoke: ``sending`` again, ``silent`` (sent before, not since),
    ``not_judged`` (sent nothing before the revoke) or ``unknown`` (its traces could not be read)."""

    name: str
    verdict: Literal["sending", "silent", "not_judged", "unknown"]
    last_before_at: datetime | None = None
    first_after_at: datetime | None = None
    error: str | None = None
    queries: int = 0

    def line(self) -> str:
        if self.verdict == "sending":
            return f"{self.name} sending (trace at {_at(self.first_after_at)})"
        if self.verdict == "silent":
            return f"{self.name} silent since the revoke (last trace {_at(self.last_before_at)})"
        if self.verdict == "unknown":
            return f"{self.name} not checked: {self.error}"
        return f"{self.name} not judged (no trace before the revoke)"


class AfterRevokeOutcome(BaseModel):
    """The after-revoke ingestion check of one run (the step ``check_ingestion``)."""

    revoked_at: datetime
    consumers: list[IngestionVerdict]

    @property
    def silent(self) -> list[IngestionVerdict]:
        return [c for c in self.consumers if c.verdict in ("silent", "unknown")]

    def describe(self) -> str:
        return "; ".join(c.line() for c in self.consumers)

    def facts(self) -> dict[str, object]:
        silent = {c.name: _at(c.last_before_at) if c.verdict == "silent" else "unknown" for c in self.silent}
        return {"silent_consumers": silent} if silent else {}

    def problem(self) -> str | None:
        """The line for a person, or None when every judged consumer sends again."""
        if not self.silent:
            return None
        return "consumers silent after the revoke (were they still on the old key?): " + ", ".join(
            c.line() for c in self.silent
        )
