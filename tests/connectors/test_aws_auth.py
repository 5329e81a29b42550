"""AWS as AWS users expect: the region chain (AWS_REGION, AWS_DEFAULT_REGION, profile) and
assuming a role (``role_arn``, ``external_id``) through moto's STS in server mode."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from connectors.aws_secrets import AwsSecretsStore
from connectors.errors import StoreAccessDeniedError
from connectors.keypair import KeyPair
from connectors.store import SecretLocation
from devstack.moto_server import IamUser, MotoServer
from flows.config.stores import AwsStoreConfig, build_store
from tests.fixtures.stores import AWS_TEST_CREDENTIALS, parse_store_config, store_config_error

HOST = "https://langfuse.example.test"


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Test credentials in the environment, no region anywhere, an empty AWS config file (returned)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_TEST_CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_TEST_CREDENTIALS["aws_secret_access_key"])
    config = tmp_path / "aws-config"
    config.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return config


@pytest.fixture
def loc(store_path: str) -> SecretLocation:
    return SecretLocation(path=f"{store_path}/proj-a")


def aws_config(store: str) -> AwsStoreConfig:
    config = parse_store_config(store)
    assert isinstance(config, AwsStoreConfig)
    return config


config_error = store_config_error


def seeded_in(moto: MotoServer, region: str, loc: SecretLocation, store: Any) -> bool:
    """Did ``store`` write ``loc`` into ``region`` (moto keeps regions apart, as AWS does)?"""
    store.seed(loc, KeyPair.generate(), HOST)
    names = [s["Name"] for s in moto.client("secretsmanager", region=region).list_secrets()["SecretList"]]
    return loc.path in names


# --- the region chain -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variables", "profile_region", "expected"),
    [
        ({"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "us-west-2"}, "ap-south-1", "eu-west-1"),
        ({"AWS_DEFAULT_REGION": "us-west-2"}, "ap-south-1", "us-west-2"),
        ({}, "ap-south-1", "ap-south-1"),
    ],
)
def test_without_region_the_aws_chain_decides(
    aws_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    moto: MotoServer,
    loc: SecretLocation,
    variables: dict[str, str],
    profile_region: str,
    expected: str,
) -> None:
    moto.reset()
    aws_env.write_text(f"[default]\nregion = {profile_region}\n")
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    store = build_store(aws_config(f"{{kind: aws, endpoint_url: {moto.url}}}"))
    assert store.location_label(loc) == f"aws:{expected}:{loc.path}"
    assert seeded_in(moto, expected, loc, store)


def test_a_named_profiles_region_is_used(aws_env: Path, moto: MotoServer, loc: SecretLocation) -> None:
    moto.reset()
    aws_env.write_text("[profile rotation]\nregion = eu-north-1\n")
    (aws_env.parent / "aws-credentials").write_text(
        "[rotation]\naws_access_key_id = testing\naws_secret_access_key = testing\n"
    )
    store = build_store(aws_config(f"{{kind: aws, profile: rotation, endpoint_url: {moto.url}}}"))
    assert seeded_in(moto, "eu-north-1", loc, store)


def test_an_explicit_region_wins(aws_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    store = build_store(aws_config("{kind: aws, region: ca-central-1}"))
    assert store.location_label(SecretLocation(path="x")) == "aws:ca-central-1:x"


def test_no_region_anywhere_is_a_one_line_error_at_load(aws_env: Path) -> None:
    message = config_error("{kind: aws}")
    assert message.startswith("rotation.yaml:")
    assert "stores.main: no AWS region: set region, AWS_REGION or AWS_DEFAULT_REGION" in message


def test_the_connector_refuses_to_guess_a_region(aws_env: Path) -> None:
    with pytest.raises(ValueError, match="no AWS region"):
        AwsSecretsStore()


def test_external_id_without_a_role_is_rejected(aws_env: Path) -> None:
    assert "external_id is only used with role_arn" in config_error("{kind: aws, region: us-east-1, external_id: x1}")


def test_a_malformed_role_arn_is_rejected(aws_env: Path) -> None:
    assert "stores.main.role_arn" in config_error("{kind: aws, region: us-east-1, role_arn: 'rotation-role'}")


# --- assuming a role (moto's STS, IAM enforced) -----------------------------------------------------


@pytest.fixture
def enforcing(moto: MotoServer) -> Any:
    moto.reset()
    yield moto
    moto.disable_iam_enforcement()


def role_and_user(moto: MotoServer, *, external_id: str | None = None) -> tuple[str, IamUser]:
    """A role that may use Secrets Manager, and a user who may only assume roles."""
    suffix = uuid.uuid4().hex[:8]
    user = moto.create_iam_user(f"ci-{suffix}", ["sts:AssumeRole"])
    role_arn = moto.create_role(f"rotation-{suffix}", ["secretsmanager:*"], trusted=user.arn, external_id=external_id)
    return role_arn, user


def test_a_role_is_assumed_for_secrets_manager(enforcing: MotoServer, loc: SecretLocation) -> None:
    role_arn, user = role_and_user(enforcing)
    enforcing.enable_iam_enforcement()

    as_user = AwsSecretsStore(region="us-east-1", endpoint_url=enforcing.url, session=user.session(), max_attempts=1)
    with pytest.raises(StoreAccessDeniedError):
        as_user.describe(loc)

    sts = _sts_endpoint(user.session(), enforcing.url)
    as_role = AwsSecretsStore(region="us-east-1", endpoint_url=enforcing.url, session=sts, role_arn=role_arn)
    pair = KeyPair.generate()
    as_role.seed(loc, pair, HOST)
    assert as_role.read_current(loc).key_pair() == pair
    assert "role_arn" in repr(as_role)


def test_the_external_id_and_session_name_go_into_assume_role(enforcing: MotoServer, loc: SecretLocation) -> None:
    role_arn, user = role_and_user(enforcing, external_id="tenant-42")
    session = _sts_endpoint(user.session(), enforcing.url)
    seen: list[dict[str, Any]] = []
    session.events.register("provide-client-params.sts.AssumeRole", lambda params, **_: seen.append(dict(params)))
    enforcing.enable_iam_enforcement()

    store = AwsSecretsStore(
        region="us-east-1", endpoint_url=enforcing.url, session=session, role_arn=role_arn, external_id="tenant-42"
    )
    store.seed(loc, KeyPair.generate(), HOST)

    assert seen == [{"RoleArn": role_arn, "RoleSessionName": "langfuse-rotate", "ExternalId": "tenant-42"}]


def test_a_role_the_caller_may_not_assume_is_denied_in_one_line(enforcing: MotoServer, loc: SecretLocation) -> None:
    suffix = uuid.uuid4().hex[:8]
    user = enforcing.create_iam_user(f"nobody-{suffix}", ["secretsmanager:ListSecrets"])
    role_arn = enforcing.create_role(f"rotation-{suffix}", ["secretsmanager:*"], trusted=user.arn)
    enforcing.enable_iam_enforcement()

    store = AwsSecretsStore(
        region="us-east-1",
        endpoint_url=enforcing.url,
        session=_sts_endpoint(user.session(), enforcing.url),
        role_arn=role_arn,
        max_attempts=1,
    )
    with pytest.raises(StoreAccessDeniedError, match="sts:AssumeRole") as caught:
        store.describe(loc)
    assert "\n" not in caught.value.message


def test_role_arn_from_the_configuration(
    aws_env: Path, monkeypatch: pytest.MonkeyPatch, enforcing: MotoServer, loc: SecretLocation
) -> None:
    role_arn, user = role_and_user(enforcing, external_id="tenant-7")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", user.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", user.secret_access_key.get_secret_value())
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", enforcing.url)  # botocore's standard per-service endpoint
    enforcing.enable_iam_enforcement()

    config = aws_config(
        f"{{kind: aws, region: us-east-1, endpoint_url: {enforcing.url}, "
        f"role_arn: '{role_arn}', external_id: tenant-7}}"
    )
    store = build_store(config)
    store.seed(loc, KeyPair.generate(), HOST)
    assert store.read_current(loc).version


def _sts_endpoint(session: boto3.session.Session, url: str) -> boto3.session.Session:
    """Point the session's STS at moto (what AWS_ENDPOINT_URL_STS does for env-configured sessions)."""
    original = session.client

    def client(service: str, *args: Any, **kwargs: Any) -> Any:
        if service == "sts" and kwargs.get("endpoint_url") is None:
            kwargs["endpoint_url"] = url
        return original(service, *args, **kwargs)  # type: ignore[call-overload]

    session.client = client  # type: ignore[method-assign]
    return session


def test_a_wrong_external_id_is_denied(enforcing: MotoServer, loc: SecretLocation) -> None:
    role_arn, user = role_and_user(enforcing, external_id="tenant-42")
    enforcing.enable_iam_enforcement()
    store = AwsSecretsStore(
        region="us-east-1",
        endpoint_url=enforcing.url,
        session=_sts_endpoint(user.session(), enforcing.url),
        role_arn=role_arn,
        external_id="tenant-43",
        max_attempts=1,
    )
    with pytest.raises(StoreAccessDeniedError, match="sts:AssumeRole"):
        store.describe(loc)
