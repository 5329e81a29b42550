"""A handover request in the store's metadata is obeyed only when a live emergency wrote it.

Handover requests live in metadata (Vault ``custom_metadata`` ``handover_*``, AWS tags
``langfuse-rotate:handover:*``), which a credential weaker than the rotator's may be able to write.
Written there by hand, as such a credential would: a request naming a staged scheduled rotation
never makes its rerun revoke the old key first (whether an emergency took a rotation over is in
the staged record, which only the rotator writes), and a stale request written while a rotation
runs does not stop it. Either way the step table names the request that was ignored.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from flows.models import RotationResult
from flows.rotation.entry_run import execute
from flows.rotation.runners import DirectRunner
from tests.fixtures.calls import recorded_calls
from tests.fixtures.devstack import HealthStub
from tests.fixtures.rotation import ENTRY, RotationEnv
from tests.scenarios.test_concurrency import gate, open_gate, wait_until
from tests.scenarios.test_crash_resume import killed, last_json, run_direct

STALE = timedelta(hours=1)


def forge_handover(
    env: RotationEnv, emergency_run: str, *, written_ago: timedelta, rotation_id: str | None = None
) -> None:
    """A handover request written straight into the store's metadata, not by an emergency run."""
    values = {
        "handover_emergency_run": emergency_run,
        "handover_nonce": uuid.uuid4().hex,
        "handover_requested_at": (datetime.now(UTC) - written_ago).isoformat(),
    }
    if rotation_id is not None:
        values["handover_rotation_id"] = rotation_id  # how earlier versions named a taken-over rotation
    env.store.external_metadata(env.location, values)


def handover_rows(steps: list[dict[str, str]]) -> list[dict[str, str]]:
    return [s for s in steps if s["step"] == "handover"]


@pytest.mark.parametrize("written_ago", [timedelta(0), STALE], ids=["fresh", "stale"])
def test_a_forged_request_naming_a_staged_rotation_does_not_turn_its_rerun_into_an_emergency(
    rotation_env: RotationEnv, written_ago: timedelta
) -> None:
    env = rotation_env
    old = env.current()
    killed(run_direct(env, "rotate", crash_at="after_promote"), "after_promote")
    pending = env.store.store.describe(env.location).pending
    assert pending is not None
    forge_handover(env, "forged-run", written_ago=written_ago, rotation_id=pending.rotation_id)

    rerun = run_direct(env, "rotate")

    result = last_json(rerun)
    assert rerun.returncode == 0 and result["status"] == "rotated", rerun.stdout + rerun.stderr[-3000:]
    assert result["mode"] == "scheduled" and result["rotation_id"] == pending.rotation_id
    steps = [s["step"] for s in result["steps"]]
    assert steps.index("verify") < steps.index("revoke"), "the old key is revoked only after the new pair verified"
    [row] = handover_rows(result["steps"])
    assert row["outcome"] == "skipped" and "ignored" in row["detail"] and "forged-run" in row["detail"], row
    assert not env.works(old) and env.works(env.current())


@pytest.mark.slow  # the rotation waits while the stale request is ignored
def test_a_stale_request_written_while_a_rotation_waits_does_not_stop_it(
    rotation_env: RotationEnv, health_stub: HealthStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = rotation_env
    gate(env, health_stub)  # the consumer does not switch until the test says so
    config = str(env.write_config())
    forged = threading.Event()
    looked = recorded_calls(monkeypatch, type(env.store.store), "read_handover", lambda *_: True, when=forged.is_set)
    results: list[RotationResult] = []
    rotation = threading.Thread(target=lambda: results.append(execute("rotate", ENTRY, config, DirectRunner())))
    rotation.start()
    wait_until(lambda: env.store.store.describe(env.location).pending_promoted, "the rotation promoted its key")

    forge_handover(env, "forged-run", written_ago=STALE)
    forged.set()
    wait_until(lambda: len(looked) >= 2 or not rotation.is_alive(), "the rotation looked at the forged request")
    open_gate(health_stub, env.store.store, env.location)
    rotation.join(120)

    [result] = results
    assert result.status == "rotated", result.error
    [row] = handover_rows([s.model_dump() for s in result.steps])
    assert row["outcome"] == "skipped" and "forged-run" in row["detail"] and "not live" in row["detail"], row
