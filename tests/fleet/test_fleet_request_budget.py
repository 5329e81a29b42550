"""Langfuse requests per fleet entry, counted on the wire (README "Fleet rotation": at most 7).

A fleet's wall time on Langfuse Cloud is set by the organization's rate limit, so each request per
entry costs a minute per 1,000 entries at 1,000 requests a minute. The simulator here makes a sent
trace readable after 1 s, as Langfuse's asynchronous ingestion does; its request log is the count.
Also here: the verify step's proof that the new pair authenticates to the expected project, now
that the canary read back with it stands for the auth check.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from connectors import pacing
from connectors.keypair import KeyPair
from connectors.langfuse import LangfuseAdminClient, LangfuseProjectClient
from connectors.store import SecretLocation
from connectors.vault import VaultStore
from connectors.vault_auth import TokenAuth
from devstack.fleet_consumers import FleetConsumers
from flows.config.model import RotationConfig, parse_config
from flows.errors import StepFailed
from flows.fleet.run import run_fleet
from flows.rotation import steps
from flows.rotation.context import EntryContext
from flows.rotation.plan import plan_rotation
from tests.fakes import MemoryStore
from tests.fixtures.langfuse_sim import SimHandle
from tests.fixtures.rotation import RotationEnv

BUDGET = 7
VAULT_BUDGET = 24
"""Vault requests per entry: 22 and the handover checks between steps (benchmarks/README.md, "Issue 24")."""
ENTRIES = 5


@pytest.fixture
def consumers(rotation_env: RotationEnv) -> Iterator[FleetConsumers]:
    started = FleetConsumers(rotation_env.store.store).start()
    yield started
    started.stop()


def _fleet_config(env: RotationEnv, consumers: FleetConsumers) -> RotationConfig:
    entries: list[dict[str, Any]] = []
    with LangfuseAdminClient(env.sim.url, env.sim.org_public_key, SecretStr(env.sim.org_secret_key)) as admin:
        for i in range(ENTRIES):
            pair = KeyPair.generate()
            admin.create_api_key(env.project.id, pair, note=f"seed {i}")
            path = f"{env.path}/budget-{i}"
            env.store.store.seed(SecretLocation(path=path), pair, env.sim.url)
            entries.append(
                {
                    "name": f"svc-{i}",
                    "project_id": env.project.id,
                    "store": "main",
                    "path": path,
                    "consumers": [
                        {
                            "name": "app",
                            "health_url": consumers.health_url(path),
                            "restart_url": consumers.restart_url(path),
                        }
                    ],
                    "wait_timeout_s": 10,
                    "grace_period_s": 0,
                    "canary_timeout_s": 15,
                    "revoke_recheck_s": 1,
                }
            )
    config = env.config_dict()
    config["projects"] = entries
    return parse_config(yaml.safe_dump(config, sort_keys=False))


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_a_fleet_entry_costs_at_most_seven_langfuse_requests_with_a_one_second_ingestion_delay(
    rotation_env: RotationEnv, consumers: FleetConsumers
) -> None:
    config = _fleet_config(rotation_env, consumers)
    rotation_env.sim.configure(otel_delay_s=1.0, ingestion_delay_s=1.0)
    since = rotation_env.sim.requests()["next"]

    result = run_fleet(config, config_path=None, concurrency=ENTRIES)

    assert result.counts == {"rotated": ENTRIES}, [(e.project, e.error) for e in result.entries]
    log = rotation_env.sim.requests(since)["requests"]
    by_type = Counter(f"{r['method']} {r['path'].split('?')[0]}" for r in log)
    assert len(log) <= BUDGET * ENTRIES, f"{len(log) / ENTRIES:.1f} requests per entry: {dict(by_type)}"
    assert by_type["POST /api/public/otel/v1/traces"] == ENTRIES, "one canary per entry"


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_a_fleet_entry_costs_at_most_twenty_four_vault_requests(rotation_env: RotationEnv) -> None:
    store = rotation_env.store.config()
    # The consumers read the store through another address of the same server, so that their
    # reads (a consumer of its own in production) are not counted as the rotator's.
    elsewhere = VaultStore(
        str(store["url"]).replace("127.0.0.1", "localhost"), auth=TokenAuth(SecretStr(str(store["token"])))
    )
    consumers = FleetConsumers(elsewhere).start()
    try:
        config = _fleet_config(rotation_env, consumers)
        key = pacing.vault_key(str(store["url"]))
        before = pacing.requests[key]

        result = run_fleet(config, config_path=None, concurrency=ENTRIES)
    finally:
        consumers.stop()

    assert result.counts == {"rotated": ENTRIES}, [(e.project, e.error) for e in result.entries]
    used = pacing.requests[key] - before
    assert used <= VAULT_BUDGET * ENTRIES, f"{used / ENTRIES:.1f} Vault requests per entry"


@pytest.fixture
def ctx(sim: SimHandle, tmp_path: Path) -> Iterator[EntryContext]:
    """An entry of project 0 with its bootstrap pair, in an in-memory store."""
    project = sim.projects[0]
    config = RotationConfig.model_validate(
        {
            "langfuse": {"host": sim.url, "org_public_key": sim.org_public_key, "org_secret_key": sim.org_secret_key},
            "stores": {"main": {"kind": "vault", "url": "http://127.0.0.1:9", "token": "unused-token"}},
            "projects": [
                {"name": "unit", "project_id": project.id, "store": "main", "path": "lf/unit", "canary_timeout_s": 5}
            ],
            "audit": {"path": str(tmp_path / "audit.jsonl")},
        }
    )
    store = MemoryStore()
    entry = config.entry("unit")
    store.seed(
        entry.location(), KeyPair(public_key=project.public_key, secret_key=SecretStr(project.secret_key)), sim.url
    )
    context = EntryContext(config, entry, eager_notifier=False, stores={"main": store})
    yield context
    context.close()


def test_verify_fails_when_the_canary_read_back_names_another_project(ctx: EntryContext, sim: SimHandle) -> None:
    plan = plan_rotation(ctx, "scheduled")
    record = steps.create(ctx, plan).record
    steps.store(ctx, record)
    other = sim.projects[1].id
    ctx.entry = ctx.entry.model_copy(update={"project_id": other})  # the entry expected another project

    with pytest.raises(StepFailed, match=f"authenticates to project {sim.projects[0].id}, expected {other}"):
        steps.verify(ctx, record)


def test_verify_reads_the_canary_back_without_a_separate_auth_check(ctx: EntryContext, sim: SimHandle) -> None:
    plan = plan_rotation(ctx, "scheduled")
    record = steps.create(ctx, plan).record
    steps.store(ctx, record)
    since = sim.requests()["next"]

    outcome = steps.verify(ctx, record)

    assert outcome.project_id == ctx.entry.project_id
    paths = [r["path"].split("?")[0] for r in sim.requests(since)["requests"]]
    assert "/api/public/projects" not in paths, paths
    assert paths[0] == "/api/public/otel/v1/traces" and set(paths[1:]) == {"/api/public/v2/observations"}


@pytest.mark.parametrize("version", ["4.16.0", "3.225.4"])
def test_a_canary_read_back_names_the_project_of_the_key_that_sent_it(sim: SimHandle, version: str) -> None:
    """Langfuse 4: the rows of ``v2/observations``; Langfuse 3: ``GET /traces/{id}``."""
    sim.configure(version=version)
    project = sim.projects[1]
    pair = KeyPair(public_key=project.public_key, secret_key=SecretStr(project.secret_key))
    with LangfuseProjectClient(sim.url, pair) as client:
        trace_id = client.send_canary()
        client.wait_for_canary(trace_id, timeout_s=10)
        sighting = client.read_canary(trace_id)

    assert sighting is not None and sighting.project_ids == (project.id,)
