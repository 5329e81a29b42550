"""The rotator's own credentials: the org key from a store, Vault AppRole, and what AWS keeps."""

from __future__ import annotations

import boto3
import pytest
from pydantic import SecretStr

from connectors.keypair import KeyPair
from connectors.store import SecretLocation
from devstack.moto_server import MotoServer
from devstack.openbao import OpenBaoServer
from flows.rotation.entry_run import execute
from flows.rotation.runners import DirectRunner
from tests.fixtures.rotation import ENTRY, RotationEnv


def rotate(env: RotationEnv) -> str:
    result = execute("rotate", ENTRY, str(env.write_config()), DirectRunner())
    assert result.status == "rotated", result.error
    return str(result.new_public_key)


def use_org_key_from_store(env: RotationEnv, path: str) -> None:
    config_langfuse = {"host": env.sim.url, "org_key": {"store": "main", "path": path}, "timeout_s": 5}
    env.top_overrides = {"langfuse": config_langfuse}


def test_the_org_key_can_be_read_from_the_store_instead_of_env(rotation_env: RotationEnv) -> None:
    org = KeyPair(public_key=rotation_env.sim.org_public_key, secret_key=SecretStr(rotation_env.sim.org_secret_key))
    rotation_env.store.store.seed(SecretLocation(path=f"{rotation_env.path}-org-admin"), org, rotation_env.sim.url)
    use_org_key_from_store(rotation_env, f"{rotation_env.path}-org-admin")

    config_text = rotation_env.write_config().read_text()
    assert rotation_env.sim.org_secret_key not in config_text
    assert rotate(rotation_env) == rotation_env.current().public_key


def test_a_missing_org_key_in_the_store_fails_cleanly_and_changes_nothing(rotation_env: RotationEnv) -> None:
    before = rotation_env.current()
    use_org_key_from_store(rotation_env, f"{rotation_env.path}-no-such-org-key")

    result = execute("rotate", ENTRY, str(rotation_env.write_config()), DirectRunner())

    assert result.status == "failed" and result.exit_code == 1
    assert (result.error or "").startswith("setup:")
    assert rotation_env.current().version == before.version


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)  # AppRole is a Vault auth method
def test_vault_approle_with_a_secret_id_file_rotates(rotation_env: RotationEnv, openbao: OpenBaoServer) -> None:
    creds = openbao.enable_approle(f"rotator-{rotation_env.tmp.name[-8:]}", rotation_env.path)
    secret_id_file = rotation_env.tmp / "secret-id"
    secret_id_file.write_text(creds.secret_id.get_secret_value())
    store = rotation_env.store.config()
    del store["token"]
    store["approle"] = {"role_id": creds.role_id, "secret_id_file": str(secret_id_file)}
    rotation_env.top_overrides = {"stores": {"main": store}}

    assert rotate(rotation_env) == rotation_env.current().public_key


@pytest.mark.parametrize("any_store", ["aws"], indirect=True)  # staging labels are AWS Secrets Manager's
def test_after_an_aws_rotation_awscurrent_holds_the_new_pair_and_awsprevious_the_old(
    rotation_env: RotationEnv, moto: MotoServer
) -> None:
    old = rotation_env.current()

    new_public_key = rotate(rotation_env)

    client = boto3.client("secretsmanager", endpoint_url=moto.url, region_name="us-east-1")
    stages = client.describe_secret(SecretId=rotation_env.path)["VersionIdsToStages"]
    current = [v for v, labels in stages.items() if "AWSCURRENT" in labels]
    previous = [v for v, labels in stages.items() if "AWSPREVIOUS" in labels]
    assert len(current) == 1 and len(previous) == 1
    assert previous == [old.version]
    assert not [v for v, labels in stages.items() if "AWSPENDING" in labels]
    value = client.get_secret_value(SecretId=rotation_env.path, VersionStage="AWSCURRENT")["SecretString"]
    assert new_public_key in value
