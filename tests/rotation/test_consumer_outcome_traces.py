"""What ``wait_for_restarts`` reports when consumers show their key on a health endpoint, in their
traces, or both (docs/trace-evidence.md): a consumer with both must satisfy both."""

from __future__ import annotations

from datetime import UTC, datetime

from connectors.consumers import WaitOutcome
from flows.rotation.steps import ConsumerOutcome
from flows.rotation.trace_evidence import TraceVerdict

NEW, OLD = "pk-lf-new", "pk-lf-old"
AT = datetime(2026, 12, 6, 1, 2, 3, tzinfo=UTC)


def health(**seen: str) -> WaitOutcome:
    lagging = [name for name, key in seen.items() if key != NEW]
    return WaitOutcome(all_switched=not lagging, last_seen=dict(seen), errors={}, elapsed_s=1.0, lagging=lagging)


def outcome(wait: WaitOutcome, **traces: TraceVerdict) -> ConsumerOutcome:
    return ConsumerOutcome(wait=wait, public_key=NEW, old_public_key=OLD, timeout_s=60, traces=traces)


def test_healthy_but_still_tracing_with_the_old_key_is_not_switched() -> None:
    still = TraceVerdict(name="api", new_seen_at=AT, old_last_at=AT, quiet_s=30)

    result = outcome(health(api=NEW), api=still)

    assert not result.all_switched()
    assert result.lagging() == (
        "consumers did not switch to pk-lf-new within 60s: "
        "api (traces: still sent with the old key pk-lf-old, last at 2026-12-06T01:02:03Z)"
    )
    assert result.facts()["lagging_consumers"] == ["api"]


def test_traces_switched_but_health_on_the_old_key_is_not_switched() -> None:
    switched = TraceVerdict(name="api", switched=True, new_seen_at=AT, quiet_s=30)

    result = outcome(health(api=OLD), api=switched)

    assert not result.all_switched()
    assert result.lagging() == "consumers did not switch to pk-lf-new within 60s: api (still on pk-lf-old)"
    assert result.facts()["consumers"] == {"api": OLD}


def test_both_switched_is_switched_and_the_evidence_is_described() -> None:
    switched = TraceVerdict(name="api", switched=True, new_seen_at=AT, quiet_s=30)

    result = outcome(health(api=NEW), api=switched)

    assert result.all_switched() and result.lagging() is None
    assert result.facts() == {"consumers": {"api": NEW}}
    assert "api: sent with the new key, none with the old one for 30s" in result.describe()


def test_a_traces_only_consumer_is_named_with_the_key_its_traces_showed() -> None:
    silent = TraceVerdict(name="batch", quiet_s=30)
    switched = TraceVerdict(name="api", switched=True, new_seen_at=AT, quiet_s=30)

    result = outcome(health(), api=switched, batch=silent)

    assert result.facts() == {"consumers": {"api": NEW, "batch": None}, "lagging_consumers": ["batch"]}
    assert result.lagging() == (
        "consumers did not switch to pk-lf-new within 60s: batch (traces: no trace sent with the new key yet)"
    )
