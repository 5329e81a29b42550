"""The ``SecretStore`` contract: every store (Vault via OpenBao, AWS via moto) passes this suite,
and so does ``tests/fakes.py``'s ``MemoryStore``, which the step tests rely on keeping it.

It reads as the rotation protocol: seed, stage (written ahead, invisible to consumers), promote
(fenced on the old version), rollback or finish; and each step can be repeated after a crash.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from connectors.aws_secrets import AwsSecretsStore
from connectors.errors import StoreConflictError, StoreError, StoreNotFoundError
from connectors.keypair import KeyPair
from connectors.store import FieldNames, HandoverRequest, RotationRecord, SecretLocation, SecretStore
from connectors.vault import VaultStore
from connectors.vault_auth import TokenAuth
from flows.config.stores import STORE_KINDS
from tests.fakes import MemoryStore
from tests.fixtures.stores import STORES_UNDER_TEST, StoreUnderTest, new_record

HOST = "https://langfuse.example.test"
real_stores_only = pytest.mark.parametrize("any_store", list(STORE_KINDS), indirect=True)


@pytest.fixture(params=[*STORE_KINDS, "memory"])
def any_store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> StoreUnderTest:
    """Every registered store kind on its local server, and the in-memory fake."""
    if request.param != "memory":
        return STORES_UNDER_TEST[request.param](request, monkeypatch)
    memory = MemoryStore()
    return StoreUnderTest(
        memory, "memory", {"kind": "memory"}, memory.external_write, memory.external_read, {}, memory.external_metadata
    )


@pytest.fixture
def loc(any_store: StoreUnderTest, store_path: str) -> SecretLocation:
    return any_store.location(f"{store_path}/proj-a")


@pytest.fixture
def old() -> KeyPair:
    return KeyPair.generate()


@pytest.fixture
def new() -> KeyPair:
    return KeyPair.generate()


@pytest.fixture
def seeded(any_store: StoreUnderTest, loc: SecretLocation, old: KeyPair) -> SecretStore:
    any_store.store.seed(loc, old, HOST)
    return any_store.store


@pytest.fixture
def staged(seeded: SecretStore, loc: SecretLocation, new: KeyPair) -> RotationRecord:
    record = new_record(seeded, loc, new)
    seeded.stage(loc, record, new, HOST)
    return record


def test_store_satisfies_protocol(any_store: StoreUnderTest) -> None:
    assert isinstance(any_store.store, SecretStore)
    assert any_store.store.kind == any_store.kind
    assert any_store.config()["kind"] == any_store.kind


# --- seed and read ------------------------------------------------------------------------------


def test_seed_then_read_current(any_store: StoreUnderTest, loc: SecretLocation, old: KeyPair) -> None:
    store = any_store.store
    version = store.seed(loc, old, HOST)

    pair = store.read_current(loc)
    assert pair.key_pair() == old
    assert pair.host == HOST
    assert pair.version == version
    desc = store.describe(loc)
    assert desc.exists and desc.current_version == version
    assert desc.current_public_key == old.public_key
    assert desc.pending is None and not desc.pending_promoted
    assert desc.kind == any_store.kind and desc.location == store.location_label(loc)


def test_seed_repeated_with_same_pair_is_a_noop(seeded: SecretStore, loc: SecretLocation, old: KeyPair) -> None:
    first = seeded.read_current(loc).version
    assert seeded.seed(loc, old, HOST) == first
    with pytest.raises(StoreConflictError):
        seeded.seed(loc, KeyPair.generate(), HOST)
    assert seeded.read_current(loc).public_key == old.public_key


def test_missing_secret(any_store: StoreUnderTest, loc: SecretLocation) -> None:
    with pytest.raises(StoreNotFoundError):
        any_store.store.read_current(loc)
    desc = any_store.store.describe(loc)
    assert not desc.exists and desc.current_version is None and desc.pending is None
    assert any_store.store.read_staged(loc) is None


def test_stage_needs_an_existing_secret(any_store: StoreUnderTest, loc: SecretLocation, new: KeyPair) -> None:
    record = new_record(any_store.store, loc, new)
    with pytest.raises(StoreNotFoundError):
        any_store.store.stage(loc, record, new, HOST)


# --- stage --------------------------------------------------------------------------------------


def test_stage_is_invisible_to_read_current(
    seeded: SecretStore, loc: SecretLocation, old: KeyPair, new: KeyPair, staged: RotationRecord
) -> None:
    assert seeded.read_current(loc).key_pair() == old
    found = seeded.read_staged(loc)
    assert found is not None
    record, pair = found
    assert record == staged
    assert pair.key_pair() == new and pair.host == HOST


def test_stage_repeated_with_same_rotation_is_a_noop(
    seeded: SecretStore, loc: SecretLocation, new: KeyPair, staged: RotationRecord
) -> None:
    before = seeded.describe(loc)
    seeded.stage(loc, staged, new, HOST)
    assert seeded.describe(loc) == before
    assert seeded.read_staged(loc) is not None


@pytest.mark.parametrize("promote_first", [False, True], ids=["staged", "promoted"])
def test_second_rotation_staged_is_a_conflict(
    seeded: SecretStore, loc: SecretLocation, staged: RotationRecord, promote_first: bool
) -> None:
    if promote_first:  # promoted but not finished is still in flight
        seeded.promote(loc, staged)
    other = KeyPair.generate()
    before = seeded.describe(loc)
    with pytest.raises(StoreConflictError):
        seeded.stage(loc, new_record(seeded, loc, other), other, HOST)
    found = seeded.read_staged(loc)
    assert found is not None and found[0] == staged
    assert seeded.describe(loc) == before


def test_stage_fenced_on_the_current_version(
    any_store: StoreUnderTest, seeded: SecretStore, loc: SecretLocation, new: KeyPair
) -> None:
    record = new_record(seeded, loc, new)
    other = KeyPair.generate()
    any_store.external_write(
        loc,
        {"LANGFUSE_PUBLIC_KEY": other.public_key, "LANGFUSE_SECRET_KEY": other.secret_key.get_secret_value()},
    )
    with pytest.raises(StoreConflictError):
        seeded.stage(loc, record, new, HOST)
    assert seeded.read_staged(loc) is None


# --- describe -----------------------------------------------------------------------------------


def test_describe_tells_where_a_rotation_stopped(
    seeded: SecretStore, loc: SecretLocation, old: KeyPair, new: KeyPair, staged: RotationRecord
) -> None:
    desc = seeded.describe(loc)
    assert desc.pending == staged and not desc.pending_promoted
    assert desc.current_public_key == old.public_key

    seeded.promote(loc, staged)
    desc = seeded.describe(loc)
    assert desc.pending == staged and desc.pending_promoted
    assert desc.current_public_key == new.public_key
    assert desc.previous_version == staged.old_version

    seeded.finish(loc, staged)
    desc = seeded.describe(loc)
    assert desc.pending is None and not desc.pending_promoted
    assert desc.last_rotation_id == staged.rotation_id


# --- promote ------------------------------------------------------------------------------------


def test_promote_makes_new_current_and_keeps_old(
    seeded: SecretStore, loc: SecretLocation, old: KeyPair, new: KeyPair, staged: RotationRecord
) -> None:
    version = seeded.promote(loc, staged)

    current = seeded.read_current(loc)
    assert current.key_pair() == new and current.version == version and current.host == HOST
    assert version != staged.old_version
    assert staged.old_version is not None
    assert seeded.read_version(loc, staged.old_version).key_pair() == old


def test_promote_repeated_returns_the_same_version(
    seeded: SecretStore, loc: SecretLocation, staged: RotationRecord
) -> None:
    version = seeded.promote(loc, staged)
    before = seeded.describe(loc)
    assert seeded.promote(loc, staged) == version
    assert seeded.describe(loc) == before


def test_promote_fenced_against_a_concurrent_writer(
    any_store: StoreUnderTest, seeded: SecretStore, loc: SecretLocation, staged: RotationRecord
) -> None:
    other = KeyPair.generate()
    written = any_store.external_write(
        loc,
        {
            "LANGFUSE_PUBLIC_KEY": other.public_key,
            "LANGFUSE_SECRET_KEY": other.secret_key.get_secret_value(),
            "LANGFUSE_HOST": HOST,
        },
    )
    before = seeded.describe(loc)

    with pytest.raises(StoreConflictError):
        seeded.promote(loc, staged)

    assert seeded.describe(loc) == before
    current = seeded.read_current(loc)
    assert current.public_key == other.public_key and current.version == written


def test_promote_of_an_unstaged_rotation_is_a_conflict(seeded: SecretStore, loc: SecretLocation, new: KeyPair) -> None:
    record = new_record(seeded, loc, new)
    with pytest.raises(StoreConflictError):
        seeded.promote(loc, record)


# --- rollback -----------------------------------------------------------------------------------


def test_rollback_before_promote(
    seeded: SecretStore, loc: SecretLocation, old: KeyPair, staged: RotationRecord
) -> None:
    result = seeded.rollback(loc, staged)

    assert result == staged.old_version
    assert seeded.read_current(loc).key_pair() == old
    assert seeded.read_staged(loc) is None
    desc = seeded.describe(loc)
    assert desc.pending is None and desc.current_version == staged.old_version


def test_rollback_after_promote(
    seeded: SecretStore, loc: SecretLocation, old: KeyPair, new: KeyPair, staged: RotationRecord
) -> None:
    promoted = seeded.promote(loc, staged)

    result = seeded.rollback(loc, staged)

    current = seeded.read_current(loc)
    assert current.key_pair() == old and current.public_key != new.public_key
    assert current.host == HOST
    assert result == current.version
    assert seeded.read_staged(loc) is None
    assert seeded.read_version(loc, promoted).key_pair() == new  # history is kept
    desc = seeded.describe(loc)
    assert desc.pending is None and desc.current_public_key == old.public_key


@pytest.mark.parametrize("promote_first", [False, True], ids=["staged", "promoted"])
def test_rollback_repeated_is_a_noop(
    seeded: SecretStore, loc: SecretLocation, old: KeyPair, staged: RotationRecord, promote_first: bool
) -> None:
    if promote_first:
        seeded.promote(loc, staged)
    first = seeded.rollback(loc, staged)
    before = seeded.describe(loc)

    assert seeded.rollback(loc, staged) == first
    assert seeded.describe(loc) == before
    assert seeded.read_current(loc).key_pair() == old


def test_promote_after_rollback_is_a_conflict(
    seeded: SecretStore, loc: SecretLocation, old: KeyPair, staged: RotationRecord
) -> None:
    seeded.rollback(loc, staged)
    with pytest.raises(StoreConflictError):
        seeded.promote(loc, staged)
    assert seeded.read_current(loc).key_pair() == old


def test_rollback_leaves_another_rotation_alone(
    seeded: SecretStore, loc: SecretLocation, new: KeyPair, staged: RotationRecord
) -> None:
    stranger = staged.model_copy(
        update={"rotation_id": str(uuid.uuid4()), "new_public_key": KeyPair.generate().public_key}
    )
    seeded.rollback(loc, stranger)
    found = seeded.read_staged(loc)
    assert found is not None and found[0] == staged


# --- finish -------------------------------------------------------------------------------------


def test_finish_clears_staging_and_records_facts(
    seeded: SecretStore, loc: SecretLocation, old: KeyPair, new: KeyPair, staged: RotationRecord
) -> None:
    version = seeded.promote(loc, staged)
    before = datetime.now(UTC)

    seeded.finish(loc, staged)

    assert seeded.read_staged(loc) is None
    assert seeded.read_current(loc).key_pair() == new
    desc = seeded.describe(loc)
    assert desc.current_version == version and desc.pending is None
    assert desc.last_rotation_id == staged.rotation_id
    assert desc.last_rotated_at is not None
    assert abs((desc.last_rotated_at - before).total_seconds()) < 60
    assert desc.last_mode == staged.mode
    assert staged.old_version is not None
    assert seeded.read_version(loc, staged.old_version).key_pair() == old


def test_finish_before_promote_is_a_conflict(seeded: SecretStore, loc: SecretLocation, staged: RotationRecord) -> None:
    with pytest.raises(StoreConflictError):
        seeded.finish(loc, staged)
    assert seeded.describe(loc).pending == staged


def test_a_second_rotation_after_finish(
    seeded: SecretStore, loc: SecretLocation, new: KeyPair, staged: RotationRecord
) -> None:
    seeded.promote(loc, staged)
    seeded.finish(loc, staged)
    newer = KeyPair.generate()
    record = new_record(seeded, loc, newer)
    assert record.old_public_key == new.public_key

    seeded.stage(loc, record, newer, HOST)
    seeded.promote(loc, record)
    seeded.finish(loc, record)

    assert seeded.read_current(loc).key_pair() == newer
    assert seeded.describe(loc).last_rotation_id == record.rotation_id
    before = seeded.describe(loc)
    with pytest.raises(StoreConflictError):  # a late rerun of the first finish: refused, harmless
        seeded.finish(loc, staged)
    assert seeded.describe(loc) == before


# --- takeover by an emergency -------------------------------------------------------------------


def test_take_over_marks_the_staged_record_as_an_emergency(
    seeded: SecretStore, loc: SecretLocation, new: KeyPair, staged: RotationRecord
) -> None:
    current = seeded.read_current(loc)
    before = datetime.now(UTC)

    record = seeded.take_over(loc, staged.rotation_id, "emergency-run-1")

    assert record.mode == "emergency" and record.taken_over_by == "emergency-run-1"
    assert record.taken_over_at is not None and abs((record.taken_over_at - before).total_seconds()) < 60
    assert record.model_copy(update={"mode": "scheduled", "taken_over_by": None, "taken_over_at": None}) == staged
    assert seeded.describe(loc).pending == record
    found = seeded.read_staged(loc)
    assert found is not None and found[0] == record and found[1].key_pair() == new
    assert seeded.read_current(loc) == current, "nothing consumers read changes"


@pytest.mark.parametrize("promote_first", [False, True], ids=["staged", "promoted"])
def test_take_over_repeated_or_by_another_emergency_keeps_the_first(
    seeded: SecretStore, loc: SecretLocation, staged: RotationRecord, promote_first: bool
) -> None:
    if promote_first:
        seeded.promote(loc, staged)
    first = seeded.take_over(loc, staged.rotation_id, "emergency-run-1")
    before = seeded.describe(loc)

    assert seeded.take_over(loc, staged.rotation_id, "emergency-run-1") == first
    assert seeded.take_over(loc, staged.rotation_id, "emergency-run-2") == first
    assert seeded.describe(loc) == before


def test_take_over_of_a_rotation_not_staged_is_a_conflict(
    any_store: StoreUnderTest, seeded: SecretStore, loc: SecretLocation, store_path: str, staged: RotationRecord
) -> None:
    before = seeded.describe(loc)

    with pytest.raises(StoreConflictError):
        seeded.take_over(loc, str(uuid.uuid4()), "emergency-run-1")

    assert seeded.describe(loc) == before
    other = any_store.location(f"{store_path}/nothing-staged")
    seeded.seed(other, KeyPair.generate(), HOST)
    with pytest.raises(StoreConflictError):
        seeded.take_over(other, staged.rotation_id, "emergency-run-1")
    assert seeded.describe(other).pending is None


def test_a_record_an_emergency_staged_is_an_emergency_without_a_takeover(
    seeded: SecretStore, loc: SecretLocation, new: KeyPair
) -> None:
    record = new_record(seeded, loc, new, mode="emergency")
    seeded.stage(loc, record, new, HOST)

    assert seeded.describe(loc).pending == record
    assert seeded.take_over(loc, record.rotation_id, "emergency-run-1") == record


@pytest.mark.parametrize("end", ["finish", "rollback"])
def test_a_taken_over_rotation_finishes_or_rolls_back_like_any_other(
    seeded: SecretStore, loc: SecretLocation, old: KeyPair, new: KeyPair, staged: RotationRecord, end: str
) -> None:
    seeded.promote(loc, staged)
    seeded.take_over(loc, staged.rotation_id, "emergency-run-1")

    if end == "finish":
        seeded.finish(loc, staged)  # the record a run read before the takeover: the stored one counts
        assert seeded.read_current(loc).key_pair() == new
        assert seeded.describe(loc).last_mode == "emergency"
    else:
        seeded.rollback(loc, staged)
        assert seeded.read_current(loc).key_pair() == old
    assert seeded.describe(loc).pending is None and seeded.read_staged(loc) is None
    newer = KeyPair.generate()
    record = new_record(seeded, loc, newer)
    seeded.stage(loc, record, newer, HOST)
    assert seeded.describe(loc).pending == record, "the next rotation is scheduled again"


# --- crash and rerun ----------------------------------------------------------------------------

Step = Callable[[SecretStore, SecretLocation, RotationRecord, KeyPair], object]
STEPS: dict[str, Step] = {
    "stage": lambda s, loc, r, p: s.stage(loc, r, p, HOST),
    "promote": lambda s, loc, r, p: s.promote(loc, r),
    "finish": lambda s, loc, r, p: s.finish(loc, r),
    "rollback": lambda s, loc, r, p: s.rollback(loc, r),
    "take_over": lambda s, loc, r, p: s.take_over(loc, r.rotation_id, "emergency-run-1"),
}
PATHS = {
    "happy": ["stage", "promote", "finish"],
    "taken-over": ["stage", "promote", "take_over", "finish"],
    "rollback-staged": ["stage", "rollback"],
    "rollback-promoted": ["stage", "promote", "rollback"],
}


@pytest.mark.parametrize("path", list(PATHS), ids=list(PATHS))
def test_every_step_repeated_after_itself_is_a_noop(
    seeded: SecretStore, loc: SecretLocation, new: KeyPair, path: str
) -> None:
    record = new_record(seeded, loc, new)
    for name in PATHS[path]:
        first = STEPS[name](seeded, loc, record, new)
        after_first = seeded.describe(loc)
        staged_first = seeded.read_staged(loc)

        again = STEPS[name](seeded, loc, record, new)  # the rerun after a crash right here

        assert again == first, name
        assert seeded.describe(loc) == after_first, name
        assert seeded.read_staged(loc) == staged_first, name


# --- secrecy and field names --------------------------------------------------------------------


def test_no_secret_in_any_store_error(
    any_store: StoreUnderTest,
    seeded: SecretStore,
    loc: SecretLocation,
    old: KeyPair,
    new: KeyPair,
    staged: RotationRecord,
) -> None:
    other = KeyPair.generate()
    attempts: list[Callable[[], object]] = [
        lambda: seeded.seed(loc, other, HOST),
        lambda: seeded.stage(loc, new_record(seeded, loc, other), other, HOST),
        lambda: seeded.finish(loc, staged),
        lambda: seeded.read_current(any_store.location(f"{loc.path}-missing")),
        lambda: seeded.read_version(loc, "nope-version" if any_store.kind == "aws" else 999),
        lambda: seeded.read_current(any_store.location(loc.path, FieldNames(secret_key="ELSEWHERE"))),
    ]

    def promote_after_concurrent_write() -> object:
        any_store.external_write(
            loc,
            {
                "LANGFUSE_PUBLIC_KEY": other.public_key,
                "LANGFUSE_SECRET_KEY": other.secret_key.get_secret_value(),
            },
        )
        return seeded.promote(loc, staged)

    attempts.append(promote_after_concurrent_write)

    messages = []
    for attempt in attempts:
        with pytest.raises(StoreError) as caught:
            attempt()
        messages.append(caught.value.message)
        error = caught.value
        assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)

    secrets = [p.secret_key.get_secret_value() for p in (old, new, other)]
    for message in messages:
        assert "\n" not in message
        for secret in secrets:
            assert secret not in message
    assert all(s not in repr(seeded.read_current(loc)) for s in secrets)


def test_field_names_are_configurable(any_store: StoreUnderTest, store_path: str) -> None:
    fields = FieldNames(public_key="LF_PK", secret_key="LF_SK", host="LF_HOST")
    loc = any_store.location(f"{store_path}/custom", fields)
    store = any_store.store
    old, new = KeyPair.generate(), KeyPair.generate()
    store.seed(loc, old, HOST)
    assert store.read_current(loc).key_pair() == old
    with pytest.raises(StoreNotFoundError):
        store.read_current(any_store.location(loc.path))  # default names are not there

    record = new_record(store, loc, new)
    store.stage(loc, record, new, HOST)
    staged = store.read_staged(loc)
    assert staged is not None and staged[1].key_pair() == new
    store.promote(loc, record)
    store.finish(loc, record)
    current = store.read_current(loc)
    assert current.key_pair() == new and current.host == HOST


def test_other_fields_survive_rotation_and_rollback(any_store: StoreUnderTest, store_path: str) -> None:
    store = any_store.store
    loc = any_store.location(f"{store_path}/extra")
    old = KeyPair.generate()
    store.seed(loc, old, HOST)
    any_store.external_write(
        loc,
        {
            "LANGFUSE_PUBLIC_KEY": old.public_key,
            "LANGFUSE_SECRET_KEY": old.secret_key.get_secret_value(),
            "LANGFUSE_HOST": HOST,
            "OTHER_SETTING": "kept",
        },
    )
    new = KeyPair.generate()
    record = new_record(store, loc, new)
    store.stage(loc, record, new, HOST)
    assert any_store.external_read(loc)["LANGFUSE_PUBLIC_KEY"] == old.public_key

    store.promote(loc, record)
    promoted = any_store.external_read(loc)
    assert promoted["LANGFUSE_PUBLIC_KEY"] == new.public_key and promoted["OTHER_SETTING"] == "kept"

    store.rollback(loc, record)
    restored = any_store.external_read(loc)
    assert restored["LANGFUSE_PUBLIC_KEY"] == old.public_key and restored["OTHER_SETTING"] == "kept"
    assert set(restored) == {"LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "LANGFUSE_HOST", "OTHER_SETTING"}


@real_stores_only  # the fake has no configuration to build another client from
def test_a_store_built_from_config_sees_the_same_secret(
    any_store: StoreUnderTest, seeded: SecretStore, loc: SecretLocation, old: KeyPair
) -> None:
    config = any_store.config()
    other: SecretStore
    if config["kind"] == "vault":
        other = VaultStore(config["url"], auth=TokenAuth(SecretStr(config["token"])), mount=config["mount"])
    else:  # credentials come from the environment the fixture set up
        other = AwsSecretsStore(region=config["region"], endpoint_url=config["endpoint_url"])
    assert other.read_current(loc).key_pair() == old
    assert other.location_label(loc) == seeded.location_label(loc)


def test_handover_request_is_read_back_alone_and_cleared(
    seeded: SecretStore, any_store: StoreUnderTest, loc: SecretLocation, store_path: str
) -> None:
    request = HandoverRequest(
        emergency_run="emergency-run-1",
        nonce=uuid.uuid4().hex,
        requested_at=datetime.now(UTC),
        flow_run_id=str(uuid.uuid4()),
    )
    assert seeded.read_handover(loc) is None

    seeded.request_handover(loc, request)
    assert seeded.read_handover(loc) == request == seeded.describe(loc).handover

    seeded.clear_handover(loc, "another-emergency")
    assert seeded.read_handover(loc) == request
    seeded.clear_handover(loc, "emergency-run-1")
    assert seeded.read_handover(loc) is None
    assert seeded.read_handover(any_store.location(f"{store_path}/never-seeded")) is None
