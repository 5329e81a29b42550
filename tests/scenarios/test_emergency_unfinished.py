"""An emergency while a scheduled rotation of the same key is unfinished (its run was killed)."""

from __future__ import annotations

import json
import subprocess
import sys

from flows.rotation.crashpoints import CRASH_ENV_VAR
from tests.fixtures.rotation import ENTRY, RotationEnv


def kill_rotation_after_promotion(env: RotationEnv) -> tuple[str, str]:
    """(old, new) public keys of a rotation whose run was SIGKILLed right after promoting."""
    old = env.current().public_key
    child_env = dict(env.env, **{CRASH_ENV_VAR: "after_promote"})
    proc = subprocess.run(
        [sys.executable, "-m", "tests.direct_cli", "rotate", "--config", str(env.write_config()), "--project", ENTRY],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stdout + proc.stderr
    new = env.current().public_key
    assert new != old
    return old, new


def emergency(env: RotationEnv, *args: str) -> tuple[int, dict[str, object]]:
    proc = env.cli(
        "emergency", "--config", str(env.write_config()), "--project", ENTRY, "--no-prefect", "--json", *args
    )
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def test_naming_the_unfinished_rotations_new_key_is_bad_input_and_changes_nothing(rotation_env: RotationEnv) -> None:
    old, new = kill_rotation_after_promotion(rotation_env)
    before = rotation_env.store.store.describe(rotation_env.location)

    code, result = emergency(rotation_env, "--public-key", new)

    assert code == 2
    assert "reconcile" in str(result["error"]) and new in str(result["error"])
    after = rotation_env.store.store.describe(rotation_env.location)
    assert after.current_version == before.current_version and after.pending == before.pending
    live = {k["publicKey"] for k in rotation_env.project_keys()}
    assert {old, new} <= live


def test_by_default_the_unfinished_rotations_old_key_is_contained_and_the_result_says_so(
    rotation_env: RotationEnv,
) -> None:
    old, new = kill_rotation_after_promotion(rotation_env)

    code, result = emergency(rotation_env)

    assert code == 0, result
    assert result["status"] == "contained"
    assert result["old_public_key"] == old and result["new_public_key"] == new
    steps = result["steps"]
    assert isinstance(steps, list)
    assert any(s["step"] == "resume" and "unfinished rotation" in s["detail"] for s in steps)
    live = {k["publicKey"] for k in rotation_env.project_keys()}
    assert old not in live and new in live
    assert rotation_env.current().public_key == new
