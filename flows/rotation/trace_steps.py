"""The steps' use of trace evidence (``flows.rotation.trace_evidence``): the reader is the entry's current
stored pair (the new pair once it is promoted), read from the store inside the step and dropped
with it; and the after-revoke step ``check_ingestion``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

from connectors.errors import ConnectorError
from connectors.langfuse import LangfuseProjectClient
from flows.redact import register_secret, scrub
from flows.rotation.context import EntryContext
from flows.rotation.contract import step
from flows.rotation.trace_evidence import AfterRevokeOutcome, IngestionVerdict, TraceVerdict, TraceWait, TraceWatch

TRACE_CLOCK_SKEW_S = 5.0
"""A trace's timestamp is the consumer's clock: the window "since the new pair was stored" starts
this much earlier, so a consumer whose clock runs a little behind is still seen."""


@contextmanager
def _reader(ctx: EntryContext) -> Iterator[LangfuseProjectClient]:
    """A client of the entry's current stored pair: trace reads need a project key."""
    current = ctx.store.read_current(ctx.location)
    register_secret(current.secret_key)
    with LangfuseProjectClient(ctx.host, current.key_pair(), timeout_s=ctx.config.langfuse.timeout_s) as client:
        yield client


def trace_evidence_wait(
    ctx: EntryContext,
    watches: Sequence[TraceWatch],
    expected: str,
    other: str | None,
    since: datetime,
    timeout_s: float,
) -> dict[str, TraceVerdict]:
    """``TraceWait.wait_switched`` with the entry's reader; a store or connection failure is each
    consumer's error (never switched), not an exception."""
    try:
        with _reader(ctx) as client:
            wait = TraceWait(client, sleep=ctx.handover.sleep)
            return wait.wait_switched(watches, expected, other, since=since, timeout_s=max(timeout_s, 0.0))
    except ConnectorError as exc:
        why = scrub(f"cannot read its traces: {exc}")
        return {w.name: TraceVerdict(name=w.name, error=why, quiet_s=w.quiet_s) for w in watches}


@step("check_ingestion", retries=0, timeout_s=60, plus=("after_revoke_s",))
def check_ingestion(ctx: EntryContext, new_public_key: str, revoked_at: datetime) -> AfterRevokeOutcome:
    """After the revoke (docs/trace-evidence.md): each consumer with ``traces`` that sent in the
    ``after_revoke_s`` before ``revoked_at`` must send again after it (with ``new_public_key``,
    where its traces carry their key) within ``after_revoke_s``. Never raises: who went silent is
    in the outcome, for a person (nothing can roll back once the old key is gone).

    No "already done?" check: it only reads traces and changes nothing."""
    watches = ctx.trace_watches
    try:
        with _reader(ctx) as client:
            wait = TraceWait(client, sleep=ctx.handover.sleep)
            return wait.check_after_revoke(watches, new_public_key, revoked_at=revoked_at)
    except ConnectorError as exc:
        why = scrub(f"cannot read its traces: {exc}")
        unknown = [IngestionVerdict(name=w.name, verdict="unknown", error=why) for w in watches]
        return AfterRevokeOutcome(revoked_at=revoked_at, consumers=unknown)
