"""Every failure before revocation rolls back: the old pair is current and valid again, the new
Langfuse key is gone, and a notification says why. Run in-process (no Prefect) for speed; the
Prefect path is covered in test_rotation_cli.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from connectors.errors import StoreError
from devstack.openbao import OpenBaoServer
from flows.models import RotationResult
from flows.rotation.entry_run import execute
from flows.rotation.runners import DirectRunner
from tests.fixtures.devstack import HealthStub
from tests.fixtures.rotation import ENTRY, RotationEnv


def rotate(env: RotationEnv) -> RotationResult:
    return execute("rotate", ENTRY, str(env.write_config()), DirectRunner())


def assert_rolled_back(env: RotationEnv, result: RotationResult, old_public_key: str) -> None:
    assert result.status == "rolled_back", result.error
    assert result.exit_code == 1
    current = env.current()
    assert current.public_key == old_public_key
    assert env.works(current), "the old pair must still authenticate"
    assert env.store.store.describe(env.location).pending is None
    live = {k["publicKey"] for k in env.project_keys()}
    assert result.new_public_key not in live, "the new key must be deleted from Langfuse"
    assert old_public_key in live
    notes = env.sink.wait_for(1)
    assert notes[-1].json["type"] == "failure"


@pytest.fixture
def in_background() -> Iterator[Callable[[Callable[[], None]], None]]:
    threads: list[threading.Thread] = []

    def start(fn: Callable[[], None]) -> None:
        thread = threading.Thread(target=fn, daemon=True)
        thread.start()
        threads.append(thread)

    yield start
    for thread in threads:
        thread.join(30)


def test_a_consumer_that_never_switches_rolls_back(rotation_env: RotationEnv, health_stub: HealthStub) -> None:
    old = rotation_env.current().public_key
    health_stub.set(mode="ok", public_key=old)
    rotation_env.consumers = [
        {"name": "api", "health_url": health_stub.health_url, "restart_url": health_stub.restart_url}
    ]
    rotation_env.entry_overrides = {"wait_timeout_s": 1.5}

    result = rotate(rotation_env)

    assert_rolled_back(rotation_env, result, old)
    assert result.failed_step == "wait_for_restarts"
    assert result.lagging_consumers == ["api"]
    assert "api" in (result.error or "")
    assert health_stub.restarts >= 2, "restart hooks fire for the switch and again for the rollback"


def test_a_canary_that_never_arrives_rolls_back(rotation_env: RotationEnv) -> None:
    old = rotation_env.current().public_key
    rotation_env.sim.configure(otel_delay_s=60)
    rotation_env.entry_overrides = {"canary_timeout_s": 1}

    result = rotate(rotation_env)

    assert_rolled_back(rotation_env, result, old)
    assert result.failed_step == "verify"


@pytest.mark.slow  # waits out the client's real retry backoff (the 429 storm in test_faults.py is quicker)
def test_langfuse_5xx_on_create_rolls_back(rotation_env: RotationEnv) -> None:
    old = rotation_env.current().public_key
    rotation_env.sim.inject_fault(
        f"/api/public/projects/{rotation_env.project.id}/apiKeys", method="POST", status=503, count=50
    )

    result = rotate(rotation_env)

    assert_rolled_back(rotation_env, result, old)
    assert result.failed_step == "create"
    assert "503" in (result.error or "") or "server" in (result.error or "").lower()


def test_a_concurrent_writer_makes_promotion_fail_and_roll_back(
    rotation_env: RotationEnv, in_background: Callable[[Callable[[], None]], None]
) -> None:
    old_pair = rotation_env.current()
    rotation_env.sim.inject_fault(
        f"/api/public/projects/{rotation_env.project.id}/apiKeys", method="POST", status=None, delay_s=1.0
    )

    def rewrite_while_langfuse_creates() -> None:
        deadline = time.monotonic() + 10
        while rotation_env.store.store.describe(rotation_env.location).pending is None:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        rotation_env.store.external_write(
            rotation_env.location,
            {
                "LANGFUSE_PUBLIC_KEY": old_pair.public_key,
                "LANGFUSE_SECRET_KEY": old_pair.secret_key.get_secret_value(),
                "LANGFUSE_HOST": rotation_env.sim.url,
            },
        )

    in_background(rewrite_while_langfuse_creates)
    result = rotate(rotation_env)

    assert_rolled_back(rotation_env, result, old_pair.public_key)
    assert result.failed_step == "store"


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)  # sealing is a Vault behaviour
@pytest.mark.slow  # waits until the sealed Vault is unsealed
def test_vault_sealed_mid_run_rolls_back_once_unsealed(
    rotation_env: RotationEnv, in_background: Callable[[Callable[[], None]], None], openbao: OpenBaoServer
) -> None:
    old = rotation_env.current().public_key
    rotation_env.entry_overrides = {"grace_period_s": 2}  # no consumers: the grace period is the window

    def seal_after_promotion_then_unseal() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if rotation_env.store.store.describe(rotation_env.location).pending_promoted:
                    break
            except StoreError:
                pass
            time.sleep(0.05)
        openbao.seal()
        time.sleep(4)
        openbao.unseal()

    in_background(seal_after_promotion_then_unseal)
    result = rotate(rotation_env)

    assert_rolled_back(rotation_env, result, old)
    assert result.failed_step == "verify"
    assert "sealed" in (result.error or "")
