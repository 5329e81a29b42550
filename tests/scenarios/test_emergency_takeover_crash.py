"""An emergency killed after it took over a scheduled rotation is carried on, never rolled back.

A scheduled rotation is SIGKILLed right after promoting its new pair; then the old key leaks and
an emergency of the same entry takes that rotation over and is SIGKILLed at one of its crash points
(``LANGFUSE_ROTATE_CRASH_AT``). Whatever runs next on the entry (``reconcile``, as the daily
deployment does unattended; a ``rotate`` rerun; another ``emergency``; a fleet run) must contain
the leaked key: Langfuse answers it with 401, the new pair is current and works, nothing is staged,
and the consumer (a real service that re-reads the store on restart) runs on the new pair. Rolling
the rotation back instead would make the leaked key current again, move the consumer onto it and
delete the new key.

The durable fact "an emergency took this rotation over" is the staged record itself (its mode is
``emergency`` from the takeover on), not the handover request in the store's metadata.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devstack.consumer import ConsumerProcess
from tests.fixtures.rotation import RotationEnv
from tests.scenarios.test_crash_resume import killed, last_json, run_direct, start_consumer

pytestmark = pytest.mark.slow

EMERGENCY_POINTS = (
    "after_take_over",
    "after_promote",
    "after_delete",
    "after_restarts",
    "after_verify",
    "after_finish",
)
"""Every crash point an emergency passes when it carries a promoted scheduled rotation through."""


@pytest.fixture
def consumer(rotation_env: RotationEnv) -> Iterator[ConsumerProcess]:
    with start_consumer(rotation_env) as proc:
        yield proc


def rotation_killed_after_promotion(env: RotationEnv, point: str = "after_promote") -> str:
    """A scheduled rotation SIGKILLed at ``point``; returns its rotation id."""
    killed(run_direct(env, "rotate", crash_at=point), point)
    pending = env.store.store.describe(env.location).pending
    assert pending is not None and pending.mode == "scheduled"
    return pending.rotation_id


def emergency_killed_at(env: RotationEnv, point: str, rotation_id: str) -> None:
    killed(run_direct(env, "emergency", crash_at=point), point)
    pending = env.store.store.describe(env.location).pending
    if pending is not None:
        assert pending.rotation_id == rotation_id, "the emergency carries the staged rotation, not one of its own"
        assert pending.mode == "emergency", "the staged record says the emergency took it over"


def entry_result(proc: Any, follow_up: str) -> dict[str, Any]:
    result = last_json(proc)
    if follow_up == "fleet":
        assert len(result["entries"]) == 1, result
        entry: dict[str, Any] = result["entries"][0]
        return entry
    return result


def assert_leaked_key_contained(
    env: RotationEnv, consumer: ConsumerProcess, leaked: Any, result: dict[str, Any]
) -> None:
    assert not any("rolled back" in action for action in result.get("reconciled") or []), result["reconciled"]
    assert not any(step["step"] == "rollback" for step in result.get("steps") or []), result["steps"]
    assert not env.works(leaked), "the leaked key must end rejected (401), not current again"
    current = env.current()
    assert current.public_key != leaked.public_key and env.works(current)
    assert [k["publicKey"] for k in env.project_keys()] == [current.public_key]
    assert env.store.store.describe(env.location).pending is None, "nothing may stay staged"
    assert httpx.get(consumer.health_url, timeout=5).json()["langfuse_public_key"] == current.public_key


@pytest.mark.parametrize("follow_up", ["reconcile", "rotate", "emergency"])
@pytest.mark.parametrize("point", EMERGENCY_POINTS)
def test_whatever_runs_after_an_emergency_killed_after_taking_over_contains_the_leaked_key(
    rotation_env: RotationEnv, consumer: ConsumerProcess, point: str, follow_up: str
) -> None:
    env = rotation_env
    leaked = env.current()
    rotation_id = rotation_killed_after_promotion(env)
    emergency_killed_at(env, point, rotation_id)

    proc = run_direct(env, follow_up)

    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    result = entry_result(proc, follow_up)
    assert_leaked_key_contained(env, consumer, leaked, result)
    if follow_up == "rotate" and point != "after_finish":
        assert result["mode"] == "emergency" and result["status"] == "contained", result


@pytest.mark.parametrize("point", ["after_take_over", "after_promote"])
def test_a_fleet_run_after_an_emergency_killed_after_taking_over_contains_the_leaked_key(
    rotation_env: RotationEnv, consumer: ConsumerProcess, point: str
) -> None:
    env = rotation_env
    leaked = env.current()
    rotation_id = rotation_killed_after_promotion(env)
    emergency_killed_at(env, point, rotation_id)

    proc = run_direct(env, "fleet")

    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    result = entry_result(proc, "fleet")
    assert result["mode"] == "emergency" and result["status"] == "contained", result
    assert_leaked_key_contained(env, consumer, leaked, result)


@pytest.mark.parametrize("any_store", ["vault", "aws"], indirect=True)
def test_reconcile_carries_on_an_unpromoted_rotation_an_emergency_took_over_before_it_died(
    rotation_env: RotationEnv, consumer: ConsumerProcess
) -> None:
    """The scheduled rotation died before promoting; the emergency died right after taking it over."""
    env = rotation_env
    leaked = env.current()
    rotation_id = rotation_killed_after_promotion(env, "after_create")
    emergency_killed_at(env, "after_take_over", rotation_id)

    proc = run_direct(env, "reconcile")

    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    result = last_json(proc)
    assert result["status"] == "reconciled" and result["old_key_rejected"] is True, result
    assert_leaked_key_contained(env, consumer, leaked, result)


@pytest.mark.parametrize("any_store", ["vault", "aws"], indirect=True)
def test_an_emergency_that_fails_before_revoking_a_rotation_it_took_over_leaves_it_staged_for_a_rerun(
    rotation_env: RotationEnv, consumer: ConsumerProcess
) -> None:
    """Not killed but failing (Langfuse refuses the create): the taken-over rotation is not rolled
    back either; the result says to run the emergency again, and that rerun contains the key."""
    env = rotation_env
    leaked = env.current()
    rotation_id = rotation_killed_after_promotion(env, "after_stage")
    env.sim.control.inject_fault("/api/public/projects/", method="POST", status=500, count=50)

    failed = run_direct(env, "emergency")

    assert failed.returncode == 1, failed.stdout + failed.stderr[-3000:]
    result = last_json(failed)
    assert result["status"] == "failed" and "stays staged as an emergency" in result["error"], result
    assert not any(step["step"] == "rollback" for step in result["steps"]), result["steps"]
    pending = env.store.store.describe(env.location).pending
    assert pending is not None and pending.rotation_id == rotation_id and pending.mode == "emergency"
    env.sim.control.clear_faults()

    rerun = run_direct(env, "emergency")

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr[-3000:]
    assert_leaked_key_contained(env, consumer, leaked, last_json(rerun))
