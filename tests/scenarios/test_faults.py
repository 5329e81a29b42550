"""Faults the rotator must survive: a clear one-line message, a non-zero exit, and the old pair
still current and valid (or, past the point of no return, the new pair current and the reason
the run needs a person).

Complements ``test_rotation_rollback.py`` (5xx on create, a consumer that never switches, a
canary that never arrives, a concurrent writer's check-and-set conflict, Vault sealed mid-run).
Runs in-process with the ``DirectRunner`` against the real local servers; the command line is
used where it is cheap (configuration errors stop before Prefect is imported).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.awsrequest import AWSResponse

from devstack.net import free_port
from devstack.prefect_server import PrefectServer
from flows.models import RotationResult
from flows.rotation.entry_run import execute
from flows.rotation.runners import DirectRunner
from tests.fixtures.devstack import HealthStub
from tests.fixtures.rotation import ENTRY, RotationEnv
from tests.fixtures.stores import throttle_on_the_wire

REPO = Path(__file__).resolve().parents[2]
KEYS_PATH = "/api/public/projects/{}/apiKeys"


def rotate(env: RotationEnv) -> RotationResult:
    return execute("rotate", ENTRY, str(env.write_config()), DirectRunner())


def one_line(result: RotationResult) -> str:
    assert result.error, "a failed run must say why"
    assert "\n" not in result.error
    return result.error


def assert_old_pair_current_and_valid(env: RotationEnv, old_public_key: str) -> None:
    current = env.current()
    assert current.public_key == old_public_key
    assert env.works(current), "the old pair must still authenticate"
    assert env.store.store.describe(env.location).pending is None
    assert [k["publicKey"] for k in env.project_keys()] == [old_public_key], "no new key may be left behind"


# --- Langfuse -------------------------------------------------------------------------------------


@pytest.mark.slow  # waits out the client's retry backoff
def test_a_5xx_storm_while_verifying_rolls_back_and_names_the_step(rotation_env: RotationEnv) -> None:
    env = rotation_env
    old = env.current().public_key
    env.entry_overrides = {"canary_timeout_s": 1.5}
    env.sim.inject_fault("/api/public/v2/observations", method="GET", status=503, count=10_000)

    result = rotate(env)

    assert result.status == "rolled_back" and result.exit_code == 1
    assert result.failed_step == "verify"
    assert "503" in one_line(result)
    assert_old_pair_current_and_valid(env, old)


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
@pytest.mark.slow  # waits out the Retry-After the storm asks for
def test_a_429_storm_on_key_creation_is_retried_as_told_then_rolled_back(rotation_env: RotationEnv) -> None:
    env = rotation_env
    old = env.current().public_key
    path = KEYS_PATH.format(env.project.id)
    env.sim.inject_fault(path, method="POST", status=429, retry_after=1, count=10_000)

    result = rotate(env)

    assert result.status == "rolled_back" and result.exit_code == 1
    assert result.failed_step == "create"
    assert "429" in one_line(result) or "rate" in one_line(result).lower()
    posts = [r for r in env.sim.requests()["requests"] if r["method"] == "POST" and r["path"] == path]
    assert len(posts) > 1, "a 429 is retried after Retry-After"
    assert_old_pair_current_and_valid(env, old)


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
@pytest.mark.slow  # waits out the client's retry backoff
def test_a_short_5xx_storm_is_ridden_out(rotation_env: RotationEnv) -> None:
    env = rotation_env
    old = env.current()
    path = KEYS_PATH.format(env.project.id)
    since = env.sim.requests()["next"]
    env.sim.inject_fault(path, method="GET", status=502, count=3)

    result = rotate(env)

    assert result.status == "rotated", result.error
    assert not env.works(old) and env.works(env.current())
    listed = [r["status"] for r in env.sim.requests(since)["requests"] if r["method"] == "GET" and r["path"] == path]
    assert listed[:4] == [502, 502, 502, 200], "the three 502s were served, then the retry went through"
    assert env.sim.control.faults() == []


@pytest.mark.slow  # waits out the client's real retry backoff
@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_an_unreachable_langfuse_fails_before_changing_anything(rotation_env: RotationEnv) -> None:
    env = rotation_env
    old = env.current().public_key
    env.top_overrides = {"langfuse": {**env.config_dict()["langfuse"], "host": f"http://127.0.0.1:{free_port()}"}}

    result = rotate(env)

    assert result.exit_code == 1 and result.status in {"failed", "rolled_back"}
    assert "unreachable" in one_line(result).lower() or "connect" in one_line(result).lower()
    assert_old_pair_current_and_valid(env, old)


# --- the API-key cache race (docs/rotation.md "The revocation race"): a revoked key still accepted ---------


def cache_race(env: RotationEnv, *, ttl_s: float) -> str:
    """Langfuse re-caches the old key as it is deleted (the race), for ``ttl_s`` after its last use."""
    old = env.current()
    assert env.works(old)  # in use: cached
    env.sim.configure(stale_after_delete=True, cache_ttl_s=ttl_s)
    return old.public_key


def test_without_an_admin_key_a_revoked_key_that_stays_accepted_needs_attention(rotation_env: RotationEnv) -> None:
    env = rotation_env
    cache_race(env, ttl_s=60)
    env.entry_overrides = {"revoke_recheck_s": 1}

    result = rotate(env)

    assert result.status == "needs_attention" and result.exit_code == 4
    assert result.old_key_rejected is False
    assert "STILL ACCEPTED" in one_line(result)
    assert env.works(env.current()), "the new pair is current and works"


@pytest.mark.slow  # re-probes until the key cache lets go
def test_without_an_admin_key_a_revoked_key_cached_shorter_than_the_recheck_is_rejected_after_it(
    rotation_env: RotationEnv,
) -> None:
    env = rotation_env
    old = cache_race(env, ttl_s=1)
    env.entry_overrides = {"revoke_recheck_s": 2}

    result = rotate(env)

    assert result.status == "rotated" and result.old_key_rejected is True, result.error
    revoke = next(s for s in result.steps if s.step == "revoke")
    assert "kept the key idle for 2s" in revoke.detail
    assert [k["publicKey"] for k in env.project_keys()] == [result.new_public_key] != [old]


def test_with_the_admin_key_langfuses_cache_is_invalidated_and_the_old_key_rejected(rotation_env: RotationEnv) -> None:
    env = rotation_env
    old = cache_race(env, ttl_s=60)
    env.top_overrides = {"langfuse": {**env.config_dict()["langfuse"], "admin_api_key": env.sim.admin_api_key}}

    result = rotate(env)

    assert result.status == "rotated" and result.old_key_rejected is True, result.error
    revoke = next(s for s in result.steps if s.step == "revoke")
    assert "invalidated" in revoke.detail
    assert old not in [k["publicKey"] for k in env.project_keys()]


# --- secret stores --------------------------------------------------------------------------------


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_a_vault_token_that_may_read_but_not_write_fails_at_staging(
    rotation_env: RotationEnv, request: pytest.FixtureRequest
) -> None:
    env = rotation_env
    old = env.current().public_key
    root = request.getfixturevalue("openbao").client()
    policy = f"read-only-{env.tmp.name}"
    root.sys.create_or_update_policy(
        name=policy,
        policy=f'path "secret/data/{env.path}*" {{ capabilities = ["read"] }}\n'
        f'path "secret/metadata/{env.path}*" {{ capabilities = ["read"] }}',
    )
    token = root.auth.token.create(policies=[policy], ttl="10m")["auth"]["client_token"]
    env.top_overrides = {"stores": {"main": {**env.store.config(), "token": token}}}

    result = rotate(env)

    assert result.exit_code == 1
    assert result.failed_step == "create"
    assert "permission denied" in one_line(result)
    assert_old_pair_current_and_valid(env, old)


@pytest.mark.parametrize("any_store", ["aws"], indirect=True)
def test_aws_access_denied_on_write_fails_at_staging(
    rotation_env: RotationEnv, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = rotation_env
    old = env.current().public_key
    moto = request.getfixturevalue("moto")
    reader = moto.create_iam_user(
        f"rotator-{env.tmp.name[-20:]}".replace("_", "-"),
        ["secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue"],
    )
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", reader.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", reader.secret_access_key.get_secret_value())
    moto.enable_iam_enforcement()
    try:
        result = rotate(env)
    finally:
        moto.disable_iam_enforcement()  # the test reads the store with the admin credentials again

    assert result.exit_code == 1
    assert result.failed_step == "create"
    assert "denied" in one_line(result).lower()
    assert_old_pair_current_and_valid(env, old)


def throttle(operation: str, times: int, attempts: list[list[int]] | None = None) -> Any:
    """Answer ``operation`` with ThrottlingException ``times`` times (moto never throttles, so this
    is the one place a response is faked). Above 100 the answer comes before botocore's retries
    (``before-call``: a storm, without waiting out the backoff); otherwise it is the HTTP response
    itself, which botocore's adaptive retry mode retries as it would a real one; then each client
    made adds to ``attempts`` the list of its attempts of ``operation`` (throttled or not)."""
    left = {"n": times}

    def hook(**_: Any) -> Any:
        if left["n"] <= 0:
            return None
        left["n"] -= 1
        error = {"Code": "ThrottlingException", "Message": "Rate exceeded"}
        http = AWSResponse(url="https://secretsmanager.invalid/", status_code=400, headers={}, raw=None)
        return http, {"Error": error, "ResponseMetadata": {"HTTPStatusCode": 400}}

    real_client = boto3.session.Session.client

    def client(self: boto3.session.Session, *args: Any, **kwargs: Any) -> Any:
        made = real_client(self, *args, **kwargs)
        if times > 100:
            made.meta.events.register(f"before-call.secrets-manager.{operation}", hook)
        else:
            seen = throttle_on_the_wire(made.meta.events, operation, times)
            if attempts is not None:
                attempts.append(seen)
        return made

    return client


@pytest.mark.parametrize("any_store", ["aws"], indirect=True)
def test_aws_throttling_that_does_not_stop_fails_the_run_with_the_old_pair_current(
    rotation_env: RotationEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = rotation_env
    old = env.current().public_key
    monkeypatch.setattr(boto3.session.Session, "client", throttle("PutSecretValue", 10_000))

    result = rotate(env)

    assert result.exit_code == 1
    assert result.failed_step == "create"
    assert "thrott" in one_line(result).lower()
    assert_old_pair_current_and_valid(env, old)


@pytest.mark.slow  # botocore's real adaptive backoff
@pytest.mark.parametrize("any_store", ["aws"], indirect=True)
def test_a_short_aws_throttling_burst_is_ridden_out(rotation_env: RotationEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    env = rotation_env
    attempts: list[list[int]] = []
    monkeypatch.setattr(boto3.session.Session, "client", throttle("UpdateSecretVersionStage", 2, attempts))

    result = rotate(env)

    assert result.status == "rotated", result.error
    # A client's first two attempts were answered with ThrottlingException; botocore retried them
    # and the promotion went through on a later attempt (as tests/connectors/test_aws_store.py shows for a read).
    served = [len(seen) for seen in attempts if seen]
    assert served and all(n >= 3 for n in served), served


# --- consumers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["hang", "garbage"])
@pytest.mark.slow  # waits out the health endpoint's deadline
def test_a_consumer_health_endpoint_that_hangs_or_answers_garbage_rolls_back_and_is_named(
    rotation_env: RotationEnv, health_stub: HealthStub, mode: Any
) -> None:
    """The store is rolled back; the new key is kept (the consumer may run on it, nobody can tell)
    until reconcile sees the consumer report the old key."""
    env = rotation_env
    old = env.current().public_key
    health_stub.set(mode=mode, public_key=old)
    env.consumers = [
        {
            "name": "billing-api",
            "health_url": health_stub.health_url,
            "restart_url": health_stub.restart_url,
            "timeout_s": 0.5,
        }
    ]
    env.entry_overrides = {"wait_timeout_s": 1.5}

    result = rotate(env)

    assert result.exit_code == 4 and result.status == "needs_attention"
    assert result.failed_step == "wait_for_restarts"
    assert result.lagging_consumers == ["billing-api"]
    assert "billing-api" in one_line(result)
    assert ("timed out" if mode == "hang" else "invalid JSON") in result.error
    assert f"new key {result.new_public_key} kept" in result.error
    assert env.current().public_key == old and env.works(env.current())
    health_stub.set(mode="ok")
    assert execute("reconcile", ENTRY, str(env.write_config()), DirectRunner()).status == "reconciled"
    assert_old_pair_current_and_valid(env, old)


def test_a_rollback_keeps_the_new_key_while_a_consumer_still_uses_it_and_reconcile_deletes_it_later(
    rotation_env: RotationEnv, health_stub: HealthStub
) -> None:
    env = rotation_env
    old = env.current().public_key
    health_stub.set(mode="ok", public_key=old)

    def adopt_the_current_key_once() -> int:  # then it ignores restarts: stuck on the new key
        if health_stub.restarts == 0:
            health_stub.public_key = env.current().public_key
        health_stub.restarts += 1
        return 200

    health_stub._restart = adopt_the_current_key_once  # type: ignore[method-assign]
    env.consumers = [{"name": "api", "health_url": health_stub.health_url, "restart_url": health_stub.restart_url}]
    env.entry_overrides = {"wait_timeout_s": 1.5, "canary_timeout_s": 1}
    env.sim.configure(otel_delay_s=60)  # verify fails after the consumer switched

    result = rotate(env)

    assert result.exit_code == 4 and result.failed_step == "verify"
    assert f"new key {result.new_public_key} kept: not every consumer is proven back" in one_line(result)
    assert f"api (reports {result.new_public_key})" in one_line(result)
    assert env.current().public_key == old
    assert result.new_public_key in [k["publicKey"] for k in env.project_keys()], "the key api uses stays alive"

    still = execute("reconcile", ENTRY, str(env.write_config()), DirectRunner())
    assert still.status == "needs_attention" and any("api still use it" in a for a in still.reconciled), still
    health_stub.public_key = old  # api is back on the old pair
    done = execute("reconcile", ENTRY, str(env.write_config()), DirectRunner())
    assert done.status == "reconciled" and any("deleted orphan key" in a for a in done.reconciled), done
    assert_old_pair_current_and_valid(env, old)


# --- configuration --------------------------------------------------------------------------------


def cli(env: RotationEnv, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli.main", "rotate", "--config", str(config), "--project", ENTRY, *args],
        env=env.env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def broken(env: RotationEnv, how: str) -> Path:
    config = env.config_dict()
    if how == "missing project_id":
        del config["projects"][0]["project_id"]
    elif how == "wrong type":
        config["projects"][0]["wait_timeout_s"] = "soon"
    elif how == "unknown key":
        config["projects"][0]["consumer"] = []
    elif how == "path into another entry":
        config["projects"][0]["path"] = f"{config['projects'][0]['path']}/../other-entry"
    path = env.tmp / "broken.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("missing project_id", r"broken.yaml:\d+: projects\[0\].project_id: required field is missing"),
        ("wrong type", r"broken.yaml:\d+: projects\[0\].wait_timeout_s: "),
        ("unknown key", r"broken.yaml:\d+: projects\[0\].consumer: unknown key"),
        ("path into another entry", r"broken.yaml:\d+: projects\[0\].path: the path must not contain '.' or '..'"),
    ],
)
@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_an_incomplete_or_malformed_config_exits_2_with_one_line_naming_line_and_field(
    rotation_env: RotationEnv, how: str, expected: str
) -> None:
    env = rotation_env
    before = env.store.store.describe(env.location)
    seq = env.sim.requests()["next"]

    proc = cli(env, broken(env, how), "--json")

    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert re.search(expected, lines[0]), lines[0]
    assert env.store.store.describe(env.location) == before, "nothing changed in the store"
    assert env.sim.requests(seq)["requests"] == [], "Langfuse was not even called"


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_a_config_that_is_not_yaml_exits_2_naming_the_line(rotation_env: RotationEnv) -> None:
    env = rotation_env
    path = env.tmp / "broken.yaml"
    path.write_text("langfuse:\n  host: http://x\n  org_public_key: [unclosed\nstores: {}\n")

    proc = cli(env, path)

    assert proc.returncode == 2
    assert re.fullmatch(r"langfuse-rotate: error: \S+broken.yaml:\d+: .+", proc.stderr.strip())


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
@pytest.mark.parametrize("command", ["rotate", "emergency"])
def test_a_lock_directory_other_users_can_write_exits_2_and_changes_nothing(
    rotation_env: RotationEnv, command: str, prefect_server: PrefectServer
) -> None:
    env = rotation_env
    shared = env.tmp / "shared-locks"
    shared.mkdir()
    shared.chmod(0o1777)
    before = env.store.store.describe(env.location)
    seq = env.sim.requests()["next"]

    extra = ["--no-prefect"] if command == "emergency" else []
    # rotate runs against the session's Prefect server (not an embedded one started for the test).
    child = prefect_server.client_env(env.env) if command == "rotate" else env.env
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli.main",
            command,
            "--config",
            str(env.write_config()),
            "--project",
            ENTRY,
            *extra,
        ],
        env={**child, "LANGFUSE_ROTATE_LOCK_DIR": str(shared)},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )

    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert [line for line in proc.stderr.splitlines() if "writable by other users" in line], proc.stderr
    assert env.store.store.describe(env.location) == before
    assert [r for r in env.sim.requests(seq)["requests"] if r["method"] != "GET"] == []
