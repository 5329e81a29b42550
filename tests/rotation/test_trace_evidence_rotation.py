"""Trace evidence alone (no health endpoints), on the local stack (issue 21, "Done when").

Each consumer here is a set of replicas of the demo app (``devstack.consumer``: the real ``langfuse``
SDK, one process each, reading the pair from the store at start and on restart), with one restart
command that asks every replica to restart. The rotation sees them only through their traces in the
simulator.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from flows.rotation.entry_run import execute
from flows.rotation.runners import DirectRunner
from tests.fixtures.replicas import Replicas, traced_consumer
from tests.fixtures.rotation import ENTRY, RotationEnv

pytestmark = [pytest.mark.parametrize("any_store", ["vault"], indirect=True)]


def audit_time(env: RotationEnv, action: str) -> datetime:
    for line in env.audit_path.read_text().splitlines():
        record = json.loads(line)
        if record["event"]["action"] == action:
            return datetime.fromisoformat(record["@timestamp"].replace("Z", "+00:00"))
    raise AssertionError(f"no audit line {action}")


def step_detail(result: Any, name: str) -> str:
    return next(s.detail for s in result.steps if s.step == name)


# --- before revoke: every replica on the new key --------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("key_source", ["sdk", "metadata"])
def test_replicas_that_all_restart_rotate_on_trace_evidence_alone(
    rotation_env: RotationEnv, replicas: Replicas, key_source: str
) -> None:
    """Replicas restart 0, 1 and 2 s after the hook; the old key is deleted only after the last one
    sent with the new key."""
    old = rotation_env.current()
    replicas.start(3, delays=(0.0, 1.0, 2.0), stamp_key=key_source == "metadata")
    rotation_env.consumers = [traced_consumer(replicas.restart_command(), key_source)]
    rotation_env.entry_overrides = {"wait_timeout_s": 30}

    result = execute("rotate", ENTRY, str(rotation_env.write_config()), DirectRunner())

    assert result.status == "rotated", result.error
    assert result.exit_code == 0
    assert result.consumers == {"api": result.new_public_key}
    assert "api: sent with the new key, none with the old one for 3s" in step_detail(result, "wait_for_restarts")
    deleted_at = audit_time(rotation_env, "langfuse.delete_key")
    for seen in replicas.health():
        assert seen["langfuse_public_key"] == result.new_public_key
        assert datetime.fromisoformat(seen["last_restart_at"]) < deleted_at
    assert not rotation_env.works(old)
    assert step_detail(result, "check_ingestion").startswith("api sending")


@pytest.mark.slow
def test_one_replica_that_never_restarts_keeps_the_old_key_alive(rotation_env: RotationEnv, replicas: Replicas) -> None:
    old = rotation_env.current()
    replicas.start(2).start(1, ignore_restart=True)
    rotation_env.consumers = [traced_consumer(replicas.restart_command())]
    rotation_env.entry_overrides = {"wait_timeout_s": 8}

    result = execute("rotate", ENTRY, str(rotation_env.write_config()), DirectRunner())

    assert result.status == "rolled_back", result.error
    assert result.exit_code != 0
    assert result.lagging_consumers == ["api"]
    assert result.error is not None
    assert f"api (traces: still sent with the old key {old.public_key}, last at " in result.error
    assert rotation_env.current().public_key == old.public_key
    assert rotation_env.works(old)
    assert "STILL ON THE OLD KEY: api" in rotation_env.sink.wait_for(1)[-1].json["message"]


def test_a_langfuse_too_old_for_the_filter_never_counts_as_switched(rotation_env: RotationEnv) -> None:
    """The rollback cannot prove the consumer back on the old key either: the new key is kept for a
    person (the consumer may run on it), the store is back on the old pair."""
    old = rotation_env.current()
    rotation_env.sim.configure(version="3.100.0")
    rotation_env.consumers = [traced_consumer(["true"])]
    rotation_env.entry_overrides = {"wait_timeout_s": 2}

    result = execute("rotate", ENTRY, str(rotation_env.write_config()), DirectRunner())

    assert result.status == "needs_attention"
    assert result.error is not None
    assert result.error.startswith("wait_for_restarts: consumers did not switch")
    assert "is version 3.100.0; trace evidence needs Langfuse 3.116.1 or later" in result.error
    assert "new key" in result.error and "kept" in result.error
    assert "Traceback" not in result.error and "switched" not in step_detail(result, "wait_for_restarts")
    assert rotation_env.current().public_key == old.public_key
    assert rotation_env.works(old)


# --- after revoke: the consumers' traces keep arriving ---------------------------------------------


@pytest.mark.slow
def test_an_unstamped_service_left_on_the_old_key_ends_needs_attention_naming_it(
    rotation_env: RotationEnv, replicas: Replicas
) -> None:
    replicas.start(1, ignore_restart=True).sending()
    rotation_env.consumers = [traced_consumer(replicas.restart_command(), "none", after_revoke_s=6)]
    rotation_env.entry_overrides = {"grace_period_s": 1}

    result = execute("rotate", ENTRY, str(rotation_env.write_config()), DirectRunner())

    assert result.status == "needs_attention", result.error
    assert result.exit_code == 4
    assert list(result.silent_consumers) == ["api"]
    last = datetime.fromisoformat(result.silent_consumers["api"].replace("Z", "+00:00"))
    assert last <= audit_time(rotation_env, "langfuse.delete_key").replace(microsecond=0)
    assert result.error is not None and "api silent since the revoke (last trace " in result.error
    assert [s.outcome for s in result.steps if s.step == "check_ingestion"] == ["attention"]
    assert "SILENT SINCE THE REVOKE: api (last trace " in rotation_env.sink.wait_for(1)[-1].json["message"]
    assert json.loads(result.to_json_line())["silent_consumers"] == result.silent_consumers


@pytest.mark.slow
def test_an_unstamped_service_that_restarted_gives_no_false_alarm(
    rotation_env: RotationEnv, replicas: Replicas
) -> None:
    replicas.start(2).sending()
    rotation_env.consumers = [traced_consumer(replicas.restart_command(), "none")]
    rotation_env.entry_overrides = {"grace_period_s": 2}

    result = execute("rotate", ENTRY, str(rotation_env.write_config()), DirectRunner())

    assert result.status == "rotated", result.error
    assert result.exit_code == 0
    assert result.silent_consumers == {}
    assert step_detail(result, "check_ingestion").startswith("api sending")
    assert "no evidence before revoke (key_source none); waited 2s grace period" in step_detail(
        result, "wait_for_restarts"
    )


def test_a_consumer_that_sent_nothing_before_the_revoke_is_not_judged(rotation_env: RotationEnv) -> None:
    rotation_env.consumers = [traced_consumer(["true"], "none", after_revoke_s=1)]

    result = execute("rotate", ENTRY, str(rotation_env.write_config()), DirectRunner())

    assert result.status == "rotated", result.error
    assert step_detail(result, "check_ingestion") == "api not judged (no trace before the revoke)"


@pytest.mark.slow
def test_an_emergency_names_the_service_its_revoke_broke(rotation_env: RotationEnv, replicas: Replicas) -> None:
    """Revoke first, then restarts: ``batch`` ignores its restart and stays on the revoked key, its
    exports are refused, and the containment's after-revoke check names it; ``api`` restarted."""
    leaked = rotation_env.current()
    api = Replicas(rotation_env, replicas.stack).start(1)
    batch = Replicas(rotation_env, replicas.stack).start(1, ignore_restart=True, environment="batch").sending()
    rotation_env.consumers = [
        traced_consumer(api.restart_command(), "none", after_revoke_s=6),
        {
            **traced_consumer(batch.restart_command(), "none", after_revoke_s=6, match={"environment": "batch"}),
            "name": "batch",
        },
    ]
    rotation_env.entry_overrides = {"grace_period_s": 1}

    result = execute(
        "emergency", ENTRY, str(rotation_env.write_config()), DirectRunner(), compromised_public_key=leaked.public_key
    )

    assert result.status == "needs_attention", result.error
    assert list(result.silent_consumers) == ["batch"]
    detail = step_detail(result, "check_ingestion")
    assert detail.startswith("api sending") and "batch silent since the revoke (last trace " in detail
    assert not rotation_env.works(leaked)


def test_a_dry_run_names_the_consumers_read_from_their_traces_and_changes_nothing(rotation_env: RotationEnv) -> None:
    before = rotation_env.current()
    rotation_env.consumers = [traced_consumer(["true"])]

    proc = rotation_env.cli(
        "rotate", "--config", str(rotation_env.write_config()), "--project", ENTRY, "--dry-run", "--json"
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["status"] == "planned"
    assert "no health endpoints; read from their traces: api" in proc.stderr
    assert "wait up to 10s for api" in proc.stderr
    assert rotation_env.current().version == before.version
