"""Each step of flows/rotation/steps.py, run alone: its "already done?" branch does nothing twice.

A rerun after a crash calls every step again from the top, so each must notice its work is done
and return the same outcome without writing again. The store is an in-memory ``SecretStore``
(tests/fakes.py, which keeps the store contract); Langfuse is the local simulator.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr

from connectors.keypair import KeyPair
from connectors.store import HandoverRequest, RotationRecord
from flows.config.model import RotationConfig
from flows.errors import BadInputError, StepFailed
from flows.models import RotationPlan
from flows.rotation import steps
from flows.rotation.context import EntryContext
from flows.rotation.plan import check_compromised_key, past_revocation, plan_rotation, staged_mode
from tests.fakes import MemoryStore
from tests.fixtures.langfuse_sim import SimHandle

ENTRY = "unit-entry"


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def ctx(sim: SimHandle, store: MemoryStore, tmp_path: Path) -> Iterator[EntryContext]:
    """Entry ``unit-entry`` whose current pair is project 0's bootstrap key, in memory."""
    project = sim.projects[0]
    config = RotationConfig.model_validate(
        {
            "langfuse": {
                "host": sim.url,
                "org_public_key": sim.org_public_key,
                "org_secret_key": sim.org_secret_key,
                "timeout_s": 5,
            },
            # Never connected: the context is handed the in-memory store under this name.
            "stores": {"main": {"kind": "vault", "url": "http://127.0.0.1:9", "token": "unused-token"}},
            "projects": [
                {
                    "name": ENTRY,
                    "project_id": project.id,
                    "store": "main",
                    "path": "langfuse/unit",
                    "grace_period_s": 0,
                    "canary_timeout_s": 5,
                    "revoke_recheck_s": 0,
                }
            ],
            "audit": {"path": str(tmp_path / "audit.jsonl")},
        }
    )
    entry = config.entry(ENTRY)
    pair = KeyPair(public_key=project.public_key, secret_key=SecretStr(project.secret_key))
    store.seed(entry.location(), pair, sim.url)
    context = EntryContext(config, entry, eager_notifier=False, stores={"main": store})
    yield context
    context.close()


def project_keys(sim: SimHandle, ctx: EntryContext) -> set[str]:
    return {k["publicKey"] for k in sim.keys() if k.get("projectId") == ctx.entry.project_id}  # noqa: SIM118


def staged_and_created(ctx: EntryContext) -> tuple[RotationPlan, RotationRecord]:
    plan = plan_rotation(ctx, "scheduled")
    return plan, steps.create(ctx, plan).record


def promoted(ctx: EntryContext) -> tuple[RotationPlan, RotationRecord]:
    plan, record = staged_and_created(ctx)
    steps.store(ctx, record)
    return plan, record


# --- plan ---------------------------------------------------------------------------------------


def test_plan_resumes_the_staged_rotation_instead_of_starting_another(ctx: EntryContext) -> None:
    first, record = staged_and_created(ctx)

    again = plan_rotation(ctx, "scheduled")

    assert again.resumed and again.rotation_id == first.rotation_id
    assert again.new_public_key == record.new_public_key and again.old_version == first.old_version


def test_staged_mode_is_none_when_nothing_is_staged(ctx: EntryContext) -> None:
    assert staged_mode(ctx) is None


def test_staged_mode_is_emergency_for_a_scheduled_rotation_an_emergency_took_over(ctx: EntryContext) -> None:
    plan, _ = staged_and_created(ctx)
    assert staged_mode(ctx) == "scheduled"

    outcome = steps.take_over(ctx, plan.rotation_id, "emergency-1")

    assert outcome.taken_now and outcome.record.taken_over_by == "emergency-1"
    assert staged_mode(ctx) == "emergency"
    assert not steps.take_over(ctx, plan.rotation_id, "emergency-2").taken_now, "the first takeover stands"


def test_a_handover_request_never_makes_a_staged_rotation_an_emergency(ctx: EntryContext, store: MemoryStore) -> None:
    """Requests live in metadata a weaker credential may write; only the staged record counts."""
    staged_and_created(ctx)
    request = HandoverRequest(emergency_run="emergency-1", nonce="n", requested_at=datetime.now(UTC))
    store.request_handover(ctx.location, request)

    assert staged_mode(ctx) == "scheduled"


def test_past_revocation_is_none_while_the_old_key_is_alive(ctx: EntryContext) -> None:
    plan, _ = promoted(ctx)

    assert past_revocation(ctx, plan.rotation_id) is None


def test_past_revocation_is_none_before_the_new_pair_is_promoted(ctx: EntryContext) -> None:
    plan, _ = staged_and_created(ctx)
    assert plan.old_public_key is not None
    steps.revoke(ctx, plan.old_public_key, plan.old_version)

    assert past_revocation(ctx, plan.rotation_id) is None


def test_past_revocation_is_the_promoted_rotation_whose_old_key_is_gone(ctx: EntryContext) -> None:
    plan, record = promoted(ctx)
    assert plan.old_public_key is not None
    steps.revoke(ctx, plan.old_public_key, plan.old_version)

    forward_only = past_revocation(ctx, plan.rotation_id)

    assert forward_only is not None and forward_only.record == record
    assert forward_only.facts() == {"new_public_key": record.new_public_key, "store_version": 2}


# --- emergency: the compromised key named -------------------------------------------------------


def test_a_named_key_that_is_the_entrys_own_passes(ctx: EntryContext) -> None:
    check_compromised_key(ctx, ctx.store.describe(ctx.location).current_public_key or "")


def test_a_named_key_that_is_not_in_the_project_is_bad_input(ctx: EntryContext) -> None:
    with pytest.raises(BadInputError, match="not a key of Langfuse project"):
        check_compromised_key(ctx, KeyPair.generate().public_key)


# --- 1. create ----------------------------------------------------------------------------------


def test_create_reuses_a_staged_pair_already_in_langfuse(ctx: EntryContext, store: MemoryStore, sim: SimHandle) -> None:
    plan, record = staged_and_created(ctx)
    writes, keys = list(store.calls), project_keys(sim, ctx)

    again = steps.create(ctx, plan.model_copy(update={"resumed": True}))

    assert again.record == record
    assert not again.staged_now and not again.created_now
    assert store.calls == writes and project_keys(sim, ctx) == keys


def test_create_of_a_staged_pair_not_yet_in_langfuse_creates_that_pair(
    ctx: EntryContext, store: MemoryStore, sim: SimHandle
) -> None:
    first = plan_rotation(ctx, "scheduled")
    pair = KeyPair.generate()
    record = RotationRecord(
        rotation_id=first.rotation_id,
        entry=ENTRY,
        mode="scheduled",
        old_public_key=first.old_public_key,
        new_public_key=pair.public_key,
        old_version=first.old_version,
        started_at=datetime.now(UTC),
    )
    store.stage(ctx.location, record, pair, ctx.host)  # a run killed between staging and creating
    plan = plan_rotation(ctx, "scheduled")  # the rerun's plan resumes it

    created = steps.create(ctx, plan)

    assert created.record == record and not created.staged_now and created.created_now
    assert store.calls.count("stage") == 1
    assert pair.public_key in project_keys(sim, ctx)


def test_create_refuses_when_another_rotation_is_staged(ctx: EntryContext, store: MemoryStore) -> None:
    staged_and_created(ctx)
    other = plan_rotation(ctx, "scheduled").model_copy(update={"rotation_id": str(uuid.uuid4())})

    with pytest.raises(StepFailed, match="another rotation"):
        steps.create(ctx, other)


# --- 2. store -----------------------------------------------------------------------------------


def test_store_of_a_promoted_pair_returns_its_version_without_writing(ctx: EntryContext, store: MemoryStore) -> None:
    _, record = staged_and_created(ctx)
    first = steps.store(ctx, record)

    again = steps.store(ctx, record)

    assert again.version == first.version
    assert store.calls.count("promote") == 1


# --- 3. wait for restarts -----------------------------------------------------------------------


def test_wait_for_restarts_without_consumers_only_waits_the_grace_period(ctx: EntryContext) -> None:
    outcome = steps.wait_for_restarts(ctx, "pk-lf-anything")

    assert outcome.wait.all_switched and outcome.wait.lagging == []
    assert outcome.grace_period_s == 0


# --- 5. revoke ----------------------------------------------------------------------------------


def test_revoke_of_a_key_already_deleted_deletes_nothing_and_proves_it_rejected(
    ctx: EntryContext, sim: SimHandle
) -> None:
    plan, _ = promoted(ctx)
    assert plan.old_public_key is not None
    steps.revoke(ctx, plan.old_public_key, plan.old_version)
    keys = project_keys(sim, ctx)

    again = steps.revoke(ctx, plan.old_public_key, plan.old_version)

    assert not again.deleted_now and again.key_id is None
    assert again.rejected is True
    assert project_keys(sim, ctx) == keys


def test_revoke_deletes_by_the_id_reconcile_listed_without_listing_again(ctx: EntryContext, sim: SimHandle) -> None:
    plan, _ = promoted(ctx)
    assert plan.old_public_key is not None
    key_ids = steps.reconcile(ctx, plan).key_ids
    mark = sim.requests()["next"]

    revoked = steps.revoke(ctx, plan.old_public_key, plan.old_version, key_id=key_ids[plan.old_public_key])

    assert revoked.deleted_now and revoked.rejected is True
    assert revoked.key_id == key_ids[plan.old_public_key]
    assert plan.old_public_key not in project_keys(sim, ctx)
    lists = [r for r in sim.requests(mark)["requests"] if r["method"] == "GET" and r["path"].endswith("/apiKeys")]
    assert lists == []


def test_revoke_by_the_id_of_a_key_already_deleted_deletes_nothing(ctx: EntryContext, sim: SimHandle) -> None:
    plan, _ = promoted(ctx)
    assert plan.old_public_key is not None
    key_id = steps.reconcile(ctx, plan).key_ids[plan.old_public_key]
    steps.revoke(ctx, plan.old_public_key, plan.old_version, key_id=key_id)
    keys = project_keys(sim, ctx)

    again = steps.revoke(ctx, plan.old_public_key, plan.old_version, key_id=key_id)

    assert not again.deleted_now and again.rejected is True
    assert project_keys(sim, ctx) == keys


def test_reconcile_names_the_ids_of_the_keys_the_run_tracks_only(ctx: EntryContext, sim: SimHandle) -> None:
    plan, record = promoted(ctx)

    key_ids = steps.reconcile(ctx, plan).key_ids

    assert set(key_ids) == {plan.old_public_key, record.new_public_key}
    listed = {k["publicKey"]: k["id"] for k in sim.keys() if k.get("projectId") == ctx.entry.project_id}  # noqa: SIM118
    assert all(listed[public_key] == key_id for public_key, key_id in key_ids.items())


# --- finish & rollback --------------------------------------------------------------------------


def test_finish_of_a_finished_rotation_writes_nothing(ctx: EntryContext, store: MemoryStore) -> None:
    _, record = promoted(ctx)
    steps.finish(ctx, record)
    writes = list(store.calls)

    steps.finish(ctx, record)

    assert store.calls == writes
    desc = store.describe(ctx.location)
    assert desc.pending is None and desc.last_rotation_id == record.rotation_id


def test_rollback_of_a_rolled_back_rotation_writes_and_deletes_nothing(
    ctx: EntryContext, store: MemoryStore, sim: SimHandle
) -> None:
    plan, record = promoted(ctx)
    plan = plan.model_copy(update={"new_public_key": record.new_public_key})
    first = steps.rollback(ctx, plan)
    assert first.store_restored and first.new_key_deleted
    writes, keys = list(store.calls), project_keys(sim, ctx)

    again = steps.rollback(ctx, plan)

    assert again.store_restored and again.new_key_deleted and not again.errors
    assert again.restored_version == first.restored_version
    assert store.calls == writes and project_keys(sim, ctx) == keys
    assert store.read_current(ctx.location).public_key == plan.old_public_key


def test_reconcile_leaves_the_keys_of_the_staged_rotation_alone(ctx: EntryContext, sim: SimHandle) -> None:
    _, record = staged_and_created(ctx)
    keys = project_keys(sim, ctx)
    assert record.new_public_key in keys

    outcome = steps.reconcile(ctx, plan_rotation(ctx, "scheduled"))

    assert outcome.actions == [] and outcome.kept == []
    assert project_keys(sim, ctx) == keys


def test_every_step_says_where_its_already_done_check_is_or_why_it_has_none() -> None:
    from flows.rotation import trace_steps
    from flows.rotation.contract import contract_of

    def is_step(fn: object) -> bool:
        try:
            contract_of(fn)  # type: ignore[arg-type]
        except TypeError:
            return False
        return True

    declared = [fn for module in (steps, trace_steps) for fn in vars(module).values() if callable(fn) and is_step(fn)]
    silent = [
        fn.__name__
        for fn in declared
        if "Already done?" not in (fn.__doc__ or "") and 'No "already done?" check:' not in (fn.__doc__ or "")
    ]

    assert len(declared) >= 10 and silent == []
