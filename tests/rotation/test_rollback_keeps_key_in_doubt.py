"""A rollback deletes the new key only when every consumer is proven back on the old key.

A consumer whose restart moved it onto the new key and whose health endpoint then fails cannot
be proven back: deleting the new key might cut it off. The rollback restores the store, keeps the
new key, and the run ends ``needs_attention`` (exit 4); the step table and the notification name
the kept key and the reason. ``reconcile`` applies the same rule to the key left behind.
"""

from __future__ import annotations

import threading
import time

import pytest

from flows.models import RotationResult
from flows.rotation.entry_run import execute
from flows.rotation.runners import DirectRunner
from tests.fixtures.devstack import HealthStub
from tests.fixtures.rotation import ENTRY, RotationEnv

pytestmark = pytest.mark.slow  # each test waits out a consumer's deadline


def rotate(env: RotationEnv) -> RotationResult:
    return execute("rotate", ENTRY, str(env.write_config()), DirectRunner())


def reconcile(env: RotationEnv) -> RotationResult:
    return execute("reconcile", ENTRY, str(env.write_config()), DirectRunner())


def consumer_that_switches_then_goes_dark(env: RotationEnv, stub: HealthStub) -> threading.Thread:
    """The consumer adopts the new key on the rotation's restart; on the rollback's restart its
    health endpoint starts answering 500, so nobody can tell which key it runs on."""
    stub.set(mode="ok", public_key=env.current().public_key)
    env.consumers = [{"name": "api", "health_url": stub.health_url, "restart_url": stub.restart_url}]

    def act() -> None:
        deadline = time.monotonic() + 60
        while stub.restarts < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        stub.set(public_key=env.current().public_key)  # on the new pair now
        while stub.restarts < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        stub.set(mode="status500")

    thread = threading.Thread(target=act, daemon=True)
    thread.start()
    return thread


def test_a_consumer_that_cannot_be_proven_back_on_the_old_key_keeps_the_new_key(
    rotation_env: RotationEnv, health_stub: HealthStub
) -> None:
    env = rotation_env
    old = env.current().public_key
    env.entry_overrides = {"wait_timeout_s": 1.5, "canary_timeout_s": 1}
    env.sim.configure(otel_delay_s=60)  # verify fails after the consumer switched
    consumer_that_switches_then_goes_dark(env, health_stub)

    result = rotate(env)

    assert result.status == "needs_attention" and result.exit_code == 4, result.error
    new = result.new_public_key
    assert new is not None and new != old
    assert new in {k["publicKey"] for k in env.project_keys()}, "the key api may be using stays alive"
    assert env.current().public_key == old, "the store is rolled back all the same"
    assert env.works(env.current())
    rollback = next(s for s in result.steps if s.step == "rollback")
    assert rollback.outcome == "attention"
    for fact in (new, "kept", "api", "500"):
        assert fact in rollback.detail, rollback.detail
        assert fact in (result.error or "")
    note = env.sink.wait_for(1)[-1].json
    assert new in note["message"] and "kept" in note["message"] and "api" in note["message"]


def test_reconcile_keeps_the_key_while_the_consumer_cannot_be_proven_off_it_and_deletes_it_once_it_can(
    rotation_env: RotationEnv, health_stub: HealthStub
) -> None:
    env = rotation_env
    old = env.current().public_key
    env.entry_overrides = {"wait_timeout_s": 1.5, "canary_timeout_s": 1}
    env.sim.configure(otel_delay_s=60)
    dark = consumer_that_switches_then_goes_dark(env, health_stub)
    new = rotate(env).new_public_key
    dark.join(30)
    assert not dark.is_alive(), "the rotation and its rollback restarted the consumer"

    still = reconcile(env)

    assert still.status == "needs_attention" and still.exit_code == 4, still
    assert new in {k["publicKey"] for k in env.project_keys()}
    assert any(new in a and "api" in a for a in still.reconciled), still.reconciled

    health_stub.set(mode="ok", public_key=old)  # api answers again, on the old pair
    done = reconcile(env)

    assert done.status == "reconciled", done
    assert [k["publicKey"] for k in env.project_keys()] == [old]
