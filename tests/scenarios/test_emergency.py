"""Emergency containment of a compromised key (issue 6), against the real local stack.

The compromised key must stop working now (even while a consumer keeps using it and Langfuse's
API-key cache still holds it), other keys of the project survive, whoever did not switch is named,
and containment works with or without a Prefect server. Most tests run the checklist in-process
(``DirectRunner``), which is what the command does when no Prefect server answers; the command
line and the Prefect path have their own tests at the end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest
from pydantic import SecretStr

from connectors.keypair import KeyPair
from connectors.langfuse import LangfuseAdminClient
from connectors.store import SecretLocation
from devstack.consumer import ConsumerProcess, start_consumer_process
from devstack.net import free_port
from devstack.prefect_server import PrefectServer
from flows.models import RotationResult
from flows.rotation.entry_run import execute
from flows.rotation.runners import DirectRunner
from tests.fixtures.devstack import HealthStub
from tests.fixtures.rotation import ENTRY, RotationEnv

ADMIN_KEY_ENV = "TEST_LANGFUSE_ADMIN_API_KEY"


def emergency(env: RotationEnv, public_key: str | None = None) -> RotationResult:
    return execute("emergency", ENTRY, str(env.write_config()), DirectRunner(), compromised_public_key=public_key)


def last_json(stdout: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return data


def audit_entries(env: RotationEnv) -> list[dict[str, Any]]:
    return [json.loads(line) for line in env.audit_path.read_text().splitlines()]


def with_admin_api_key(env: RotationEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """Configure ``langfuse.admin_api_key`` (the self-hosted instance's ADMIN_API_KEY)."""
    assert env.sim.admin_api_key
    monkeypatch.setenv(ADMIN_KEY_ENV, env.sim.admin_api_key)
    langfuse = env.config_dict()["langfuse"] | {"admin_api_key": f"${{{ADMIN_KEY_ENV}}}"}
    env.top_overrides = {"langfuse": langfuse}


def create_project_key(env: RotationEnv, note: str) -> KeyPair:
    """A key of the same Langfuse project that this tool does not manage (made by hand)."""
    pair = KeyPair.generate()
    with LangfuseAdminClient(env.sim.url, env.sim.org_public_key, SecretStr(env.sim.org_secret_key)) as admin:
        admin.create_api_key(env.project.id, pair, note)
    return pair


def start_consumer(env: RotationEnv, **options: Any) -> ConsumerProcess:
    """A real SDK consumer reading the entry's secret from the store under test."""
    return start_consumer_process(
        name="api", path=env.path, langfuse_host=env.sim.url, **env.store.consumer_args(), **options
    )


@pytest.fixture
def busy_consumer(rotation_env: RotationEnv) -> Iterator[ConsumerProcess]:
    """A consumer that sends a trace every 0.2 s with the key it started with, and never restarts."""
    with start_consumer(rotation_env, trace_interval_s=0.2, ignore_restart=True) as consumer:
        rotation_env.consumers = [
            {"name": "api", "health_url": consumer.health_url, "restart_url": consumer.restart_url}
        ]
        yield consumer


def wait_for_traffic(env: RotationEnv, public_key: str | None, since: int, count: int = 3) -> list[dict[str, Any]]:
    """Trace exports the simulator logged after position ``since`` with ``public_key`` (the log names
    the key of accepted requests only; None: every export, accepted or not). Waits for ``count``."""
    deadline = time.monotonic() + 15
    while True:
        seen = [
            r
            for r in env.sim.requests(since)["requests"]
            if r["path"].startswith("/api/public/otel") and (public_key is None or r.get("public_key") == public_key)
        ]
        if len(seen) >= count or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


# --- containment --------------------------------------------------------------------------------


def test_the_compromised_key_is_rejected_and_a_new_pair_is_current(rotation_env: RotationEnv) -> None:
    old = rotation_env.current()

    result = emergency(rotation_env)

    assert result.status == "contained", result.error
    assert result.exit_code == 0
    new = rotation_env.current()
    assert new.public_key == result.new_public_key != old.public_key
    assert not rotation_env.works(old)
    assert rotation_env.works(new)
    assert result.old_public_key == old.public_key and result.old_key_rejected is True
    assert result.verified


def test_the_key_is_revoked_before_consumers_are_waited_for(rotation_env: RotationEnv) -> None:
    rotation_env.entry_overrides = {"grace_period_s": 1}

    result = emergency(rotation_env)

    steps = [s.step for s in result.steps]
    assert steps.index("revoke") < steps.index("wait_for_restarts") < steps.index("verify")
    assert steps.index("store") < steps.index("revoke")


def test_another_entrys_key_of_the_same_project_survives(rotation_env: RotationEnv) -> None:
    other_pair = create_project_key(rotation_env, "the batch job's key")
    other_path = f"{rotation_env.path}-batch"
    rotation_env.store.store.seed(SecretLocation(path=other_path), other_pair, rotation_env.sim.url)
    rotation_env.extra_entries = [rotation_env.entry(name="batch-prod", path=other_path, consumers=[])]

    result = emergency(rotation_env)

    assert result.status == "contained", result.error
    assert rotation_env.works(other_pair)
    assert rotation_env.store.store.read_current(SecretLocation(path=other_path)).public_key == other_pair.public_key


def test_a_hand_made_key_of_the_same_project_survives(rotation_env: RotationEnv) -> None:
    manual = create_project_key(rotation_env, "made by hand in the UI")

    result = emergency(rotation_env)

    assert result.status == "contained", result.error
    assert rotation_env.works(manual)
    assert manual.public_key in {k["publicKey"] for k in rotation_env.project_keys()}


def test_public_key_names_a_key_that_is_not_the_entrys_and_only_that_key_is_revoked(
    rotation_env: RotationEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_admin_api_key(rotation_env, monkeypatch)
    current = rotation_env.current()
    leaked = create_project_key(rotation_env, "a developer's laptop key")

    result = emergency(rotation_env, public_key=leaked.public_key)

    assert result.status == "contained", result.error
    assert result.old_public_key == leaked.public_key and result.old_key_rejected is True
    assert not rotation_env.works(leaked)
    assert rotation_env.current().public_key == current.public_key, "the entry's own key is not touched"
    assert rotation_env.works(current)


def test_a_key_without_its_secret_and_no_admin_key_cannot_be_proven_rejected(rotation_env: RotationEnv) -> None:
    leaked = create_project_key(rotation_env, "a developer's laptop key")

    result = emergency(rotation_env, public_key=leaked.public_key)

    assert result.status == "needs_attention" and result.exit_code == 4
    assert result.old_key_rejected is None
    assert result.error and "could not be probed" in result.error
    assert leaked.public_key not in {k["publicKey"] for k in rotation_env.project_keys()}, "deleted all the same"


def test_a_public_key_that_is_not_in_the_project_is_bad_input(rotation_env: RotationEnv) -> None:
    before = rotation_env.current()
    stranger = KeyPair.generate().public_key
    proc = rotation_env.cli(
        "emergency",
        "--config",
        str(rotation_env.write_config()),
        "--project",
        ENTRY,
        "--public-key",
        stranger,
        "--no-prefect",
        "--json",
    )

    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert stranger in proc.stderr
    assert rotation_env.current().public_key == before.public_key
    assert rotation_env.works(before)


# --- consumers that never switch ----------------------------------------------------------------


def test_consumers_that_never_switch_are_named_in_the_result_and_the_notification(
    rotation_env: RotationEnv, health_stub: HealthStub
) -> None:
    old = rotation_env.current()
    health_stub.set(mode="ok", public_key=old.public_key)
    rotation_env.consumers = [
        {"name": "billing-api", "health_url": health_stub.health_url, "restart_url": health_stub.restart_url}
    ]
    rotation_env.entry_overrides = {"wait_timeout_s": 1.5}

    result = emergency(rotation_env)

    assert result.status == "needs_attention" and result.exit_code == 4
    assert result.lagging_consumers == ["billing-api"]
    assert result.consumers == {"billing-api": old.public_key}
    assert result.error and "billing-api" in result.error
    assert not rotation_env.works(old), "the key is revoked whether or not consumers switched"
    assert health_stub.restarts == 1
    body = rotation_env.sink.wait_for(1)[-1].json
    assert "STILL ON THE OLD KEY: billing-api" in body["message"]


def test_the_notification_carries_the_emergency_and_failure_tags(rotation_env: RotationEnv) -> None:
    sink = rotation_env.sink
    notify = {
        "urls": [
            {"url": sink.apprise_url("/pager"), "tags": ["emergency"]},
            {"url": sink.apprise_url("/alerts"), "tags": ["failure"]},
            {"url": sink.apprise_url("/chat"), "tags": ["success"]},
        ]
    }
    rotation_env.top_overrides = {"notify": notify}

    result = emergency(rotation_env)

    assert result.status == "contained", result.error
    received = {r.path: r.json for r in sink.received()}
    assert set(received) == {"/pager", "/alerts"}
    assert received["/pager"]["type"] == "failure"
    assert received["/pager"]["title"].startswith("EMERGENCY")


@pytest.mark.slow  # lists thousands of keys
def test_a_key_list_past_the_body_cap_fails_the_emergency_saying_so_and_pages(rotation_env: RotationEnv) -> None:
    sink = rotation_env.sink
    rotation_env.top_overrides = {
        "notify": {"urls": [sink.apprise_url("/chat"), {"url": sink.apprise_url("/pager"), "tags": ["emergency"]}]}
    }
    rotation_env.sim.control.add_keys(rotation_env.project.id, 100_000)  # Langfuse answers, with 25 MB

    result = emergency(rotation_env)

    assert result.status == "failed" and result.exit_code == 1
    assert result.error is not None and "unreachable" not in result.error
    assert "answered, but its answer to GET /api/public/projects/" in result.error
    assert "is larger than the 16 MiB cap" in result.error
    pages = [r.json for r in sink.wait_for(2, timeout_s=10) if r.path == "/pager"]
    assert len(pages) == 1 and pages[0]["title"].startswith("EMERGENCY")
    assert "larger than the 16 MiB cap" in pages[0]["message"]


# --- the cache race: a consumer keeps using the compromised key ----------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_with_an_admin_key_the_compromised_key_is_rejected_while_a_consumer_keeps_using_it(
    rotation_env: RotationEnv, busy_consumer: ConsumerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    rotation_env.sim.configure(cache_mode="snapshot", stale_after_delete=True)
    with_admin_api_key(rotation_env, monkeypatch)
    rotation_env.entry_overrides = {"wait_timeout_s": 1}
    old = rotation_env.current()
    assert wait_for_traffic(rotation_env, old.public_key, since=0), "the consumer is sending traces"

    result = emergency(rotation_env)
    after = rotation_env.sim.requests()["next"]

    assert result.old_key_rejected is True, result.error
    revoke = next(s for s in result.steps if s.step == "revoke")
    assert "invalidated Langfuse's API-key cache" in revoke.detail, "the race happened and was handled"
    later = wait_for_traffic(rotation_env, None, since=after)
    assert len(later) >= 3 and {r["status"] for r in later} == {401}, "the consumer's traces are refused"
    assert result.lagging_consumers == ["api"]


@pytest.mark.slow
@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_without_an_admin_key_a_key_kept_in_use_stays_accepted_and_the_result_says_so(
    rotation_env: RotationEnv, busy_consumer: ConsumerProcess
) -> None:
    rotation_env.sim.configure(cache_mode="snapshot", stale_after_delete=True, cache_ttl_s=1)
    rotation_env.entry_overrides = {"wait_timeout_s": 1, "revoke_recheck_s": 2}
    old = rotation_env.current()
    assert wait_for_traffic(rotation_env, old.public_key, since=0)

    result = emergency(rotation_env)

    assert result.status == "needs_attention" and result.exit_code == 4
    assert result.old_key_rejected is False
    assert result.error and "kept the key idle for 2s" in result.error and "STILL ACCEPTED" in result.error
    assert result.lagging_consumers == ["api"]
    assert [s.step for s in result.steps][-2:] == ["recheck_revoked", "finish"]


@pytest.mark.slow
@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_without_an_admin_key_the_key_is_rejected_once_consumers_moved_off_and_it_went_idle(
    rotation_env: RotationEnv,
) -> None:
    rotation_env.sim.configure(cache_mode="snapshot", stale_after_delete=True, cache_ttl_s=1)
    rotation_env.entry_overrides = {"revoke_recheck_s": 2}
    old = rotation_env.current()
    with start_consumer(rotation_env, trace_interval_s=0.2) as consumer:
        rotation_env.consumers = [
            {"name": "api", "health_url": consumer.health_url, "restart_url": consumer.restart_url}
        ]
        assert wait_for_traffic(rotation_env, old.public_key, since=0)

        result = emergency(rotation_env)

    assert result.status == "contained", result.error
    assert result.old_key_rejected is True
    assert result.consumers == {"api": result.new_public_key}
    steps = {s.step: s for s in result.steps}
    assert "still accepted right after delete" in steps["revoke"].detail
    assert "kept the key idle for 2s" in steps["recheck_revoked"].detail
    assert not rotation_env.works(old)


# --- with and without Prefect -------------------------------------------------------------------


def test_without_a_reachable_prefect_server_the_command_contains_in_process(rotation_env: RotationEnv) -> None:
    old = rotation_env.current()
    closed = f"http://127.0.0.1:{free_port()}/api"

    proc = rotation_env.cli(
        "emergency",
        "--config",
        str(rotation_env.write_config()),
        "--project",
        ENTRY,
        "--json",
        env={"PREFECT_API_URL": closed},
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = last_json(proc.stdout)
    assert result["status"] == "contained"
    assert result["orchestrator"] == "none" and result["prefect_flow_run_id"] is None
    assert "(without Prefect)" in proc.stderr and "running without Prefect" in proc.stderr
    assert proc.stdout.count("\n") == 1, "with --json, stdout holds only the JSON object"
    assert result["new_public_key"] == rotation_env.current().public_key
    assert not rotation_env.works(old)
    (final,) = [e for e in audit_entries(rotation_env) if e["langfuse_rotate"]["final"]]
    assert final["event"]["action"] == "emergency" and final["event"]["outcome"] == "success"
    assert final["langfuse_rotate"]["outcome"] == "contained"
    assert final["langfuse_rotate"]["old_public_key"] == old.public_key


def test_without_prefect_the_command_never_imports_prefect(rotation_env: RotationEnv) -> None:
    """Containment does not depend on the orchestrator, not even on its package loading."""
    proc = rotation_env.cli(
        "emergency",
        "--config",
        str(rotation_env.write_config()),
        "--project",
        ENTRY,
        "--no-prefect",
        env={"PYTHONPROFILEIMPORTTIME": "1"},
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert "flows.rotation.checklists" in imported, "the import log was captured"
    assert not [name for name in imported if name == "prefect" or name.startswith("prefect.")]


@pytest.mark.slow  # waits out the consumer deadline
def test_the_command_exits_4_when_consumers_lag(rotation_env: RotationEnv, health_stub: HealthStub) -> None:
    health_stub.set(mode="ok", public_key=rotation_env.current().public_key)
    rotation_env.consumers = [{"name": "billing-api", "health_url": health_stub.health_url}]
    rotation_env.entry_overrides = {"wait_timeout_s": 1}

    proc = rotation_env.cli(
        "emergency", "--config", str(rotation_env.write_config()), "--project", ENTRY, "--no-prefect", "--json"
    )

    assert proc.returncode == 4, proc.stdout + proc.stderr
    result = last_json(proc.stdout)
    assert result["status"] == "needs_attention" and result["lagging_consumers"] == ["billing-api"]
    assert "still on the old key: billing-api" in proc.stderr


@pytest.mark.slow
def test_with_a_prefect_server_the_command_runs_the_emergency_flow(
    rotation_env: RotationEnv, prefect_server: PrefectServer
) -> None:
    from prefect.client.orchestration import get_client

    rotation_env.prefect_env = prefect_server.client_env(rotation_env.env)
    old = rotation_env.current()

    proc = rotation_env.cli("emergency", "--config", str(rotation_env.write_config()), "--project", ENTRY, "--json")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = last_json(proc.stdout)
    assert result["status"] == "contained" and result["orchestrator"] == "prefect"
    assert not rotation_env.works(old)
    run_id = UUID(result["prefect_flow_run_id"])
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
    assert {f"project:{ENTRY}", "mode:emergency"} <= set(run.tags)
    final = [e for e in audit_entries(rotation_env) if e["langfuse_rotate"]["final"]]
    assert len(final) == 1 and final[0]["event"]["action"] == "emergency"
    assert {e["labels"]["run_id"] for e in audit_entries(rotation_env)} == {str(run_id)}


@pytest.mark.slow
def test_with_a_prefect_server_containment_never_waits_for_importing_prefect_and_is_recorded(
    rotation_env: RotationEnv, prefect_server: PrefectServer
) -> None:
    """The run is recorded over the server's REST API: named, tagged, finished, with its step table."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    rotation_env.prefect_env = prefect_server.client_env(rotation_env.env)
    old = rotation_env.current()

    proc = rotation_env.cli(
        "emergency",
        "--config",
        str(rotation_env.write_config()),
        "--project",
        ENTRY,
        "--json",
        env={"PYTHONPROFILEIMPORTTIME": "1"},
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert not [name for name in imported if name == "prefect" or name.startswith("prefect.")]
    result = last_json(proc.stdout)
    assert result["status"] == "contained" and result["orchestrator"] == "prefect"
    assert not rotation_env.works(old)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(result["prefect_flow_run_id"]))
        flow = client.read_flow(run.flow_id)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
    assert flow.name == "langfuse-key-emergency"
    assert run.name.startswith(f"emergency-{ENTRY}-")
    assert {f"project:{ENTRY}", "mode:emergency", "store:main"} <= set(run.tags)
    assert run.state is not None and run.state.is_completed()
    assert any("| revoke | done |" in str(a.data) for a in artifacts)
