"""A rerun, or a reconcile, that finds the old key already deleted (by someone else) still waits
for consumers and verifies the new pair before it reports success.

The first run is SIGKILLed right after promoting the new pair; then someone deletes the old key
by hand. The rerun can no longer roll back (the old pair is dead), but it must not claim a
verified rotation it never checked: consumers that never switched, or a new pair that does not
verify, make it "needs attention" (exit 4), never "rotated".
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from connectors.langfuse import LangfuseAdminClient
from flows.rotation.crashpoints import CRASH_ENV_VAR
from tests.fixtures.devstack import HealthStub
from tests.fixtures.rotation import ENTRY, RotationEnv

REPO = Path(__file__).resolve().parents[2]


def run_direct(
    env: RotationEnv, *, crash_at: str | None = None, kind: str = "rotate"
) -> tuple[int, dict[str, Any], str]:
    child = {k: v for k, v in env.env.items() if k != CRASH_ENV_VAR}
    if crash_at is not None:
        child[CRASH_ENV_VAR] = crash_at
    proc = subprocess.run(
        [sys.executable, "-m", "tests.direct_cli", kind, "--config", str(env.write_config()), "--project", ENTRY],
        env=child,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    lines = proc.stdout.strip().splitlines()
    return proc.returncode, json.loads(lines[-1]) if lines else {}, proc.stdout + proc.stderr[-3000:]


def delete_by_hand(env: RotationEnv, public_key: str) -> None:
    with LangfuseAdminClient(env.sim.url, env.sim.org_public_key, SecretStr(env.sim.org_secret_key)) as admin:
        key = admin.find_api_key(env.project.id, public_key)
        assert key is not None
        admin.delete_api_key(env.project.id, key.id)


def served_by_stub(env: RotationEnv, health_stub: HealthStub) -> None:
    """The entry's one consumer, ``api``, is the health stub, on the current pair."""
    health_stub.set(mode="ok", public_key=env.current().public_key)
    env.consumers = [{"name": "api", "health_url": health_stub.health_url, "restart_url": health_stub.restart_url}]


def killed_after_promotion_then_old_key_deleted(env: RotationEnv) -> tuple[str, str]:
    old = env.current().public_key
    code, _, output = run_direct(env, crash_at="after_promote")
    assert code == -9, output
    new = env.current().public_key
    assert new != old
    delete_by_hand(env, old)
    return old, new


# A rerun of ``rotate`` and a ``reconcile`` meet the same rotation the same way.
KINDS = pytest.mark.parametrize("kind", ["rotate", "reconcile"])


@KINDS
@pytest.mark.slow  # waits out the consumer deadline
def test_consumers_that_never_switched_make_the_rerun_need_attention_not_succeed(
    rotation_env: RotationEnv, health_stub: HealthStub, kind: str
) -> None:
    env = rotation_env
    served_by_stub(env, health_stub)
    env.entry_overrides = {"wait_timeout_s": 1.5}
    _, new = killed_after_promotion_then_old_key_deleted(env)

    code, result, output = run_direct(env, kind=kind)

    assert code == 4 and result["status"] == "needs_attention", output
    assert result["lagging_consumers"] == ["api"]
    assert "api" in result["error"]
    assert "wait_for_restarts" in [s["step"] for s in result["steps"]]
    assert env.current().public_key == new, "the only live pair stays current"
    assert env.works(env.current())
    assert env.store.store.describe(env.location).pending is not None, "still staged: a rerun checks again"


@KINDS
@pytest.mark.slow  # waits out the canary timeout
def test_a_new_pair_that_does_not_verify_makes_the_rerun_need_attention(rotation_env: RotationEnv, kind: str) -> None:
    env = rotation_env
    killed_after_promotion_then_old_key_deleted(env)
    env.sim.configure(otel_delay_s=60)  # the canary never becomes readable
    env.entry_overrides = {"canary_timeout_s": 1}

    code, result, output = run_direct(env, kind=kind)

    assert code == 4 and result["status"] == "needs_attention", output
    assert result["verified"] is False
    assert "verify" in result["error"]


@pytest.mark.parametrize(
    ("kind", "status", "in_order"),
    [
        ("rotate", "rotated", ["resume", "wait_for_restarts", "verify"]),
        ("reconcile", "reconciled", ["wait_for_restarts", "verify", "finish"]),
    ],
)
def test_a_rerun_whose_consumers_switched_and_pair_verifies_finishes_the_rotation(
    rotation_env: RotationEnv, health_stub: HealthStub, kind: str, status: str, in_order: list[str]
) -> None:
    env = rotation_env
    served_by_stub(env, health_stub)
    _, new = killed_after_promotion_then_old_key_deleted(env)
    health_stub.switch_to = new  # its restart hook moves it onto the new pair

    code, result, output = run_direct(env, kind=kind)

    assert code == 0 and result["status"] == status, output
    assert result["verified"] is True and result["consumers"] == {"api": new}
    steps = [s["step"] for s in result["steps"]]
    assert [steps.index(step) for step in in_order] == sorted(steps.index(step) for step in in_order), steps
    assert env.store.store.describe(env.location).pending is None
