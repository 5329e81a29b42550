"""Vault-specific behaviour of ``VaultStore`` against a real OpenBao dev server."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import hvac.exceptions
import pytest
from pydantic import SecretStr

from connectors.errors import (
    StoreAccessDeniedError,
    StoreConflictError,
    StoreNotFoundError,
    StoreRefusedError,
    StoreUnavailableError,
)
from connectors.keypair import KeyPair
from connectors.store import RotationRecord, SecretLocation
from connectors.vault import PENDING_SUFFIX, RECORD_FIELD, VaultStore
from connectors.vault_auth import AppRoleAuth, TokenAuth
from devstack.net import free_port
from devstack.openbao import OpenBaoServer
from tests.fixtures.stores import new_record

HOST = "https://langfuse.example.test"


@pytest.fixture
def loc(store_path: str) -> SecretLocation:
    return SecretLocation(path=f"{store_path}/proj-a")


def test_location_label(vault_store: VaultStore) -> None:
    assert vault_store.location_label(SecretLocation(path="/langfuse/x/")) == "vault:secret/langfuse/x"


def test_staging_layout_and_record(openbao: OpenBaoServer, vault_store: VaultStore, loc: SecretLocation) -> None:
    old, new = KeyPair.generate(), KeyPair.generate()
    vault_store.seed(loc, old, HOST)
    record = new_record(vault_store, loc, new, mode="emergency")
    vault_store.stage(loc, record, new, HOST)

    kv = openbao.client().secrets.kv.v2
    staged = kv.read_secret_version(path=f"{loc.path}/{PENDING_SUFFIX}", raise_on_deleted_version=True)
    assert RotationRecord.model_validate_json(staged["data"]["data"][RECORD_FIELD]) == record
    mirrored = kv.read_secret_metadata(path=f"{loc.path}/{PENDING_SUFFIX}")["data"]["custom_metadata"]
    assert mirrored["rotation_id"] == record.rotation_id and mirrored["new_public_key"] == new.public_key

    vault_store.promote(loc, record)
    current = kv.read_secret_version(path=loc.path, raise_on_deleted_version=True)["data"]["data"]
    assert RECORD_FIELD not in current  # consumers never see the record

    vault_store.finish(loc, record)
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_metadata(path=f"{loc.path}/{PENDING_SUFFIX}")  # destroyed entirely


def test_custom_metadata_holds_facts_and_no_secret(
    openbao: OpenBaoServer, vault_store: VaultStore, loc: SecretLocation
) -> None:
    old, new = KeyPair.generate(), KeyPair.generate()
    vault_store.seed(loc, old, HOST)
    kv = openbao.client().secrets.kv.v2
    kv.update_metadata(
        path=loc.path, max_versions=7, delete_version_after="768h0m0s", custom_metadata={"owner": "team-a"}
    )
    record = new_record(vault_store, loc, new, mode="emergency")
    vault_store.stage(loc, record, new, HOST)
    vault_store.promote(loc, record)
    vault_store.finish(loc, record)

    meta = kv.read_secret_metadata(path=loc.path)["data"]
    custom = meta["custom_metadata"]
    assert custom["rotation_id"] == record.rotation_id
    assert custom["public_key"] == new.public_key
    assert custom["state"] == "rotated" and custom["mode"] == "emergency"
    assert datetime.fromisoformat(custom["rotated_at"]).tzinfo is not None
    assert custom["owner"] == "team-a"  # other metadata preserved
    assert meta["max_versions"] == 7 and meta["delete_version_after"] == "768h0m0s"  # settings preserved
    blob = json.dumps(meta)
    for pair in (old, new):
        assert pair.secret_key.get_secret_value() not in blob


def test_cas_conflict_on_seed_and_promote(openbao: OpenBaoServer, vault_store: VaultStore, loc: SecretLocation) -> None:
    old, new = KeyPair.generate(), KeyPair.generate()
    vault_store.seed(loc, old, HOST)
    with pytest.raises(StoreConflictError, match="already exists"):
        vault_store.seed(loc, new, HOST)

    record = new_record(vault_store, loc, new, mode="emergency")
    vault_store.stage(loc, record, new, HOST)
    openbao.client().secrets.kv.v2.create_or_update_secret(path=loc.path, secret={"LANGFUSE_HOST": HOST})
    with pytest.raises(StoreConflictError, match="changed after rotation"):
        vault_store.promote(loc, record)


def test_crash_inside_finish_is_reported_and_continued(
    openbao: OpenBaoServer, vault_store: VaultStore, loc: SecretLocation
) -> None:
    """finish() writes the facts, then destroys staging; a crash between is visible and resumable."""
    old, new = KeyPair.generate(), KeyPair.generate()
    vault_store.seed(loc, old, HOST)
    record = new_record(vault_store, loc, new, mode="emergency")
    vault_store.stage(loc, record, new, HOST)
    vault_store.promote(loc, record)
    kv = openbao.client().secrets.kv.v2
    kv.update_metadata(
        path=loc.path,
        custom_metadata={"rotation_id": record.rotation_id, "rotated_at": datetime.now(UTC).isoformat()},
    )

    desc = vault_store.describe(loc)
    assert desc.pending == record and desc.pending_promoted and desc.last_rotation_id == record.rotation_id

    vault_store.finish(loc, record)
    assert vault_store.describe(loc).pending is None


def test_approle_login_and_denied_path(openbao: OpenBaoServer, store_path: str) -> None:
    allowed = SecretLocation(path=f"{store_path}/allowed/proj-a")
    denied = SecretLocation(path=f"{store_path}/denied/proj-a")
    root = VaultStore(openbao.url, auth=TokenAuth(SecretStr(openbao.root_token)))
    old, new = KeyPair.generate(), KeyPair.generate()
    root.seed(denied, old, HOST)
    creds = openbao.enable_approle(f"role-{uuid.uuid4().hex[:8]}", f"{store_path}/allowed")

    store = VaultStore(openbao.url, auth=AppRoleAuth(creds.role_id, creds.secret_id))
    store.seed(allowed, old, HOST)
    record = new_record(store, allowed, new, mode="emergency")
    store.stage(allowed, record, new, HOST)
    store.promote(allowed, record)
    store.finish(allowed, record)
    assert store.read_current(allowed).key_pair() == new

    with pytest.raises(StoreAccessDeniedError) as caught:
        store.read_current(denied)
    assert old.secret_key.get_secret_value() not in caught.value.message
    with pytest.raises(StoreAccessDeniedError):
        store.stage(denied, new_record(root, denied, new, mode="emergency"), new, HOST)


def test_approle_relogin_after_token_revoked(openbao: OpenBaoServer, store_path: str) -> None:
    loc = SecretLocation(path=f"{store_path}/proj-a")
    creds = openbao.enable_approle(f"role-{uuid.uuid4().hex[:8]}", store_path)
    store = VaultStore(openbao.url, auth=AppRoleAuth(creds.role_id, creds.secret_id))
    store.seed(loc, KeyPair.generate(), HOST)
    openbao.client().auth.token.revoke(store._client.token)  # the lease ends under our feet

    assert store.read_current(loc).version == 1


def test_bad_approle_credentials_are_denied(openbao: OpenBaoServer, store_path: str) -> None:
    creds = openbao.enable_approle(f"role-{uuid.uuid4().hex[:8]}", store_path)
    bogus = SecretStr(str(uuid.uuid4()))
    store = VaultStore(openbao.url, auth=AppRoleAuth(creds.role_id, bogus))
    with pytest.raises(StoreAccessDeniedError, match="invalid role or secret ID") as caught:
        store.describe(SecretLocation(path=f"{store_path}/proj-a"))
    assert bogus.get_secret_value() not in caught.value.message


def test_bad_token_is_denied(openbao: OpenBaoServer, loc: SecretLocation) -> None:
    store = VaultStore(openbao.url, auth=TokenAuth(SecretStr("s.not-a-real-token")))
    with pytest.raises(StoreAccessDeniedError) as caught:
        store.read_current(loc)
    assert "s.not-a-real-token" not in caught.value.message


def test_sealed_vault_is_unavailable(openbao: OpenBaoServer, vault_store: VaultStore, loc: SecretLocation) -> None:
    vault_store.seed(loc, KeyPair.generate(), HOST)
    openbao.seal()
    try:
        with pytest.raises(StoreUnavailableError, match=f"Vault at {openbao.url} is sealed"):
            vault_store.read_current(loc)
        with pytest.raises(StoreUnavailableError, match="sealed"):
            vault_store.describe(loc)
    finally:
        openbao.unseal()
    assert vault_store.read_current(loc).version == 1


def test_unreachable_vault_is_unavailable(loc: SecretLocation) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    store = VaultStore(url, auth=TokenAuth(SecretStr("s.whatever")), timeout_s=2)
    with pytest.raises(StoreUnavailableError, match="unreachable") as caught:
        store.describe(loc)
    assert caught.value.__cause__ is None


def test_wrong_mount_is_reported(openbao: OpenBaoServer, loc: SecretLocation) -> None:
    store = VaultStore(openbao.url, auth=TokenAuth(SecretStr(openbao.root_token)), mount="nomount")
    with pytest.raises(StoreNotFoundError, match="nomount"):
        store.read_current(loc)


def test_read_version_of_a_pruned_or_deleted_version(
    openbao: OpenBaoServer, vault_store: VaultStore, loc: SecretLocation
) -> None:
    vault_store.seed(loc, KeyPair.generate(), HOST)
    openbao.client().secrets.kv.v2.delete_latest_version_of_secret(path=loc.path)
    with pytest.raises(StoreNotFoundError):
        vault_store.read_version(loc, 1)
    with pytest.raises(StoreNotFoundError):
        vault_store.read_current(loc)
    assert not vault_store.describe(loc).exists


def test_crash_inside_rollback_is_reported_and_continued(
    openbao: OpenBaoServer, vault_store: VaultStore, loc: SecretLocation
) -> None:
    """rollback() restores the old pair, then destroys staging; a crash between is resumable."""
    old, new = KeyPair.generate(), KeyPair.generate()
    vault_store.seed(loc, old, HOST)
    record = new_record(vault_store, loc, new, mode="emergency")
    vault_store.stage(loc, record, new, HOST)
    vault_store.promote(loc, record)
    old_data = openbao.client().secrets.kv.v2.read_secret_version(
        path=loc.path, version=1, raise_on_deleted_version=True
    )["data"]["data"]
    openbao.client().secrets.kv.v2.create_or_update_secret(path=loc.path, secret=old_data, cas=2)

    desc = vault_store.describe(loc)
    assert desc.pending == record and not desc.pending_promoted

    assert vault_store.rollback(loc, record) == 3
    assert vault_store.describe(loc).pending is None
    assert vault_store.read_current(loc).key_pair() == old


def test_refuses_a_secret_that_keeps_one_version(
    openbao: OpenBaoServer, vault_store: VaultStore, loc: SecretLocation
) -> None:
    old, new = KeyPair.generate(), KeyPair.generate()
    vault_store.seed(loc, old, HOST)
    kv = openbao.client().secrets.kv.v2
    kv.update_metadata(path=loc.path, max_versions=1)
    record = new_record(vault_store, loc, new, mode="emergency")
    with pytest.raises(StoreRefusedError, match="max_versions"):
        vault_store.stage(loc, record, new, HOST)
    assert vault_store.read_staged(loc) is None

    kv.update_metadata(path=loc.path, max_versions=2)
    vault_store.stage(loc, record, new, HOST)
    vault_store.promote(loc, record)
    assert vault_store.read_version(loc, 1).key_pair() == old


def test_describe_sees_a_version_another_client_wrote(
    openbao: OpenBaoServer, vault_store: VaultStore, loc: SecretLocation
) -> None:
    """A store knows the public key of versions it read or wrote; another writer's version is read."""
    vault_store.seed(loc, KeyPair.generate(), HOST)
    assert vault_store.describe(loc).current_version == 1
    theirs = KeyPair.generate()
    openbao.client().secrets.kv.v2.create_or_update_secret(
        path=loc.path, secret={"LANGFUSE_PUBLIC_KEY": theirs.public_key, "LANGFUSE_SECRET_KEY": "sk-x"}
    )
    desc = vault_store.describe(loc)
    assert (desc.current_version, desc.current_public_key) == (2, theirs.public_key)


def test_describe_after_the_path_is_destroyed_and_written_again(
    openbao: OpenBaoServer, vault_store: VaultStore, loc: SecretLocation
) -> None:
    """Version 1 of a path written again is not the version 1 the store saw before."""
    vault_store.seed(loc, KeyPair.generate(), HOST)
    assert vault_store.describe(loc).current_version == 1
    kv = openbao.client().secrets.kv.v2
    kv.delete_metadata_and_all_versions(path=loc.path)
    theirs = KeyPair.generate()
    kv.create_or_update_secret(
        path=loc.path, secret={"LANGFUSE_PUBLIC_KEY": theirs.public_key, "LANGFUSE_SECRET_KEY": "sk-x"}
    )
    desc = vault_store.describe(loc)
    assert (desc.current_version, desc.current_public_key) == (1, theirs.public_key)


def test_finish_refuses_when_another_client_replaced_the_promoted_pair(
    openbao: OpenBaoServer, vault_store: VaultStore, loc: SecretLocation
) -> None:
    old, new = KeyPair.generate(), KeyPair.generate()
    vault_store.seed(loc, old, HOST)
    record = new_record(vault_store, loc, new, mode="emergency")
    vault_store.stage(loc, record, new, HOST)
    vault_store.promote(loc, record)
    openbao.client().secrets.kv.v2.create_or_update_secret(
        path=loc.path, secret={"LANGFUSE_PUBLIC_KEY": old.public_key, "LANGFUSE_SECRET_KEY": "sk-x"}
    )
    with pytest.raises(StoreConflictError, match="not current"):
        vault_store.finish(loc, record)
    assert vault_store.describe(loc).pending == record
