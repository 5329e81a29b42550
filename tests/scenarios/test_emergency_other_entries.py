"""An emergency of one entry never deletes a key another configured entry uses.

``emergency --project a --public-key K`` where K is the current or staged key of another entry b
is refused with exit 2 and changes nothing, whatever store b lives in: the same store, another
store name (even one pointing at the same Vault), or a store of another kind.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import SecretStr

from connectors.keypair import KeyPair
from connectors.langfuse import LangfuseAdminClient
from connectors.store import SecretLocation
from tests.fixtures.rotation import ENTRY, RotationEnv
from tests.fixtures.stores import new_record

OTHER = "batch-prod"


def project_key(env: RotationEnv, note: str) -> KeyPair:
    pair = KeyPair.generate()
    with LangfuseAdminClient(env.sim.url, env.sim.org_public_key, SecretStr(env.sim.org_secret_key)) as admin:
        admin.create_api_key(env.project.id, pair, note)
    return pair


def add_other_entry(env: RotationEnv, pair: KeyPair, *, store_name: str) -> SecretLocation:
    """Entry ``batch-prod`` of the same Langfuse project, holding ``pair``, in store ``store_name``
    (a second name for the same server when it is not ``main``)."""
    location = SecretLocation(path=f"{env.path}-batch")
    env.store.store.seed(location, pair, env.sim.url)
    env.extra_entries = [env.entry(name=OTHER, path=location.path, consumers=[], store=store_name)]
    if store_name != "main":
        env.top_overrides = {"stores": {"main": env.store.config(), store_name: env.store.config()}}
    return location


def emergency(env: RotationEnv, public_key: str) -> tuple[int, dict[str, Any], str]:
    proc = env.cli(
        "emergency",
        "--config",
        str(env.write_config()),
        "--project",
        ENTRY,
        "--public-key",
        public_key,
        "--no-prefect",
        "--json",
    )
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout + proc.stderr


def assert_nothing_changed(env: RotationEnv, before_version: Any, *keys: KeyPair) -> None:
    desc = env.store.store.describe(env.location)
    assert desc.current_version == before_version and desc.pending is None
    for pair in keys:
        assert env.works(pair), f"{pair.public_key} must still work"


@pytest.mark.parametrize("store_name", ["main", "second-name-same-server"], ids=["same-store", "other-store-name"])
def test_the_current_key_of_another_entry_is_refused(rotation_env: RotationEnv, store_name: str) -> None:
    env = rotation_env
    theirs = project_key(env, "batch job")
    add_other_entry(env, theirs, store_name=store_name)
    before = env.store.store.describe(env.location)

    code, result, output = emergency(env, theirs.public_key)

    assert code == 2, output
    assert OTHER in result["error"] and theirs.public_key in result["error"]
    assert_nothing_changed(env, before.current_version, theirs, env.current().key_pair())
    assert theirs.public_key in {k["publicKey"] for k in env.project_keys()}


def test_the_staged_key_of_another_entrys_rotation_is_refused(rotation_env: RotationEnv) -> None:
    env = rotation_env
    theirs = project_key(env, "batch job")
    location = add_other_entry(env, theirs, store_name="second-name-same-server")
    staged = KeyPair.generate()
    env.store.store.stage(location, new_record(env.store.store, location, staged), staged, env.sim.url)
    with LangfuseAdminClient(env.sim.url, env.sim.org_public_key, SecretStr(env.sim.org_secret_key)) as admin:
        admin.create_api_key(env.project.id, staged, "staged by batch-prod's rotation")
    before = env.store.store.describe(env.location)

    code, result, output = emergency(env, staged.public_key)

    assert code == 2, output
    assert OTHER in result["error"] and staged.public_key in result["error"]
    assert_nothing_changed(env, before.current_version, theirs, staged)


def test_a_key_no_entry_uses_is_still_contained(rotation_env: RotationEnv) -> None:
    env = rotation_env
    theirs = project_key(env, "batch job")
    add_other_entry(env, theirs, store_name="second-name-same-server")
    stray = project_key(env, "made by hand")

    code, result, output = emergency(env, stray.public_key)

    assert code in (0, 4), output  # 4: its secret is not stored, so its rejection cannot be probed
    assert result["old_public_key"] == stray.public_key
    assert stray.public_key not in {k["publicKey"] for k in env.project_keys()}
    assert env.works(theirs)
