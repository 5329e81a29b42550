"""AWS-specific behaviour of ``AwsSecretsStore`` against a moto server.

Where moto cannot act like AWS (throttling, KMS failures) a botocore event hook injects the
error AWS would return; what moto cannot express at all is skipped with the reason.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions
import pytest

from connectors.aws_secrets import EMERGENCY_STAGE, TAG_PREFIX, AwsSecretsStore, rotation_version_id
from connectors.errors import (
    StoreAccessDeniedError,
    StoreConflictError,
    StoreNotFoundError,
    StoreRefusedError,
    StoreUnavailableError,
)
from connectors.keypair import KeyPair
from connectors.store import SecretLocation
from devstack.moto_server import MotoServer
from devstack.net import free_port
from tests.fixtures.stores import AWS_REGION, AWS_TEST_CREDENTIALS, new_record, throttle_on_the_wire

HOST = "https://langfuse.example.test"


@pytest.fixture
def sm(moto: MotoServer) -> Any:
    return moto.client("secretsmanager", region=AWS_REGION)


@pytest.fixture
def loc(store_path: str) -> SecretLocation:
    return SecretLocation(path=f"{store_path}/proj-a")


@pytest.fixture
def old() -> KeyPair:
    return KeyPair.generate()


@pytest.fixture
def seeded(aws_store: AwsSecretsStore, loc: SecretLocation, old: KeyPair) -> AwsSecretsStore:
    aws_store.seed(loc, old, HOST)
    return aws_store


def stages(sm: Any, loc: SecretLocation) -> dict[str, list[str]]:
    result: dict[str, list[str]] = sm.describe_secret(SecretId=loc.path)["VersionIdsToStages"]
    return {version: sorted(labels) for version, labels in result.items() if labels}


def fresh_session() -> boto3.session.Session:
    """A session of the test's own, so it can hook botocore events without leaking them.
    Hooks are copied into clients created later: build the store after registering them."""
    return boto3.session.Session(region_name=AWS_REGION, **AWS_TEST_CREDENTIALS)


# --- labels -------------------------------------------------------------------------------------


def test_labels_follow_the_aws_protocol(seeded: AwsSecretsStore, sm: Any, loc: SecretLocation, old: KeyPair) -> None:
    new = KeyPair.generate()
    record = new_record(seeded, loc, new)
    old_id = str(record.old_version)
    new_id = rotation_version_id(record.rotation_id)
    assert new_id == record.rotation_id  # a UUID rotation id is the version id itself

    seeded.stage(loc, record, new, HOST)
    assert stages(sm, loc) == {old_id: ["AWSCURRENT"], new_id: ["AWSPENDING"]}

    assert seeded.promote(loc, record) == new_id
    assert stages(sm, loc) == {old_id: ["AWSPREVIOUS"], new_id: ["AWSCURRENT", "AWSPENDING"]}
    previous = sm.get_secret_value(SecretId=loc.path, VersionStage="AWSPREVIOUS")
    assert json.loads(previous["SecretString"])["LANGFUSE_PUBLIC_KEY"] == old.public_key

    seeded.finish(loc, record)
    assert stages(sm, loc) == {old_id: ["AWSPREVIOUS"], new_id: ["AWSCURRENT"]}
    tags = {t["Key"]: t["Value"] for t in sm.describe_secret(SecretId=loc.path)["Tags"]}
    assert tags[f"{TAG_PREFIX}rotation-id"] == record.rotation_id
    assert tags[f"{TAG_PREFIX}public-key"] == new.public_key
    assert tags[f"{TAG_PREFIX}state"] == "rotated"
    assert not any(key.startswith(f"{TAG_PREFIX}pending:") for key in tags)


def test_rollback_after_promote_restores_labels(seeded: AwsSecretsStore, sm: Any, loc: SecretLocation) -> None:
    new = KeyPair.generate()
    record = new_record(seeded, loc, new)
    seeded.stage(loc, record, new, HOST)
    seeded.promote(loc, record)

    assert seeded.rollback(loc, record) == record.old_version

    # AWSPREVIOUS must not point at the key the rollback is about to revoke.
    assert stages(sm, loc) == {str(record.old_version): ["AWSCURRENT"]}
    tags = sm.describe_secret(SecretId=loc.path).get("Tags", [])
    assert not any(t["Key"].startswith(TAG_PREFIX) for t in tags)


def test_only_the_emergency_label_makes_a_staged_record_an_emergency(
    seeded: AwsSecretsStore, sm: Any, loc: SecretLocation
) -> None:
    """The record's other fields live in tags, which a credential weaker than the rotator's may
    write: a forged mode tag changes nothing. What says an emergency staged or took over the
    rotation is a staging label on its version (``UpdateSecretVersionStage``, the rotator's own right)."""
    new = KeyPair.generate()
    record = new_record(seeded, loc, new)
    version_id = rotation_version_id(record.rotation_id)
    seeded.stage(loc, record, new, HOST)
    sm.tag_resource(SecretId=loc.path, Tags=[{"Key": f"{TAG_PREFIX}pending:mode", "Value": "emergency"}])
    assert seeded.describe(loc).pending == record

    taken = seeded.take_over(loc, record.rotation_id, "emergency-run-1")

    assert stages(sm, loc)[version_id] == sorted(["AWSPENDING", EMERGENCY_STAGE])
    assert seeded.describe(loc).pending == taken and taken.mode == "emergency"
    seeded.promote(loc, taken)
    seeded.finish(loc, taken)
    assert stages(sm, loc) == {str(record.old_version): ["AWSPREVIOUS"], version_id: ["AWSCURRENT"]}


def test_an_emergency_stages_its_pair_and_its_label_in_one_write(
    seeded: AwsSecretsStore, sm: Any, loc: SecretLocation
) -> None:
    new = KeyPair.generate()
    record = new_record(seeded, loc, new, mode="emergency")

    seeded.stage(loc, record, new, HOST)

    assert stages(sm, loc)[rotation_version_id(record.rotation_id)] == sorted(["AWSPENDING", EMERGENCY_STAGE])
    assert seeded.describe(loc).pending == record
    seeded.rollback(loc, record)
    assert stages(sm, loc) == {str(record.old_version): ["AWSCURRENT"]}


def test_short_rotation_ids_get_a_derived_version_id(seeded: AwsSecretsStore, sm: Any, loc: SecretLocation) -> None:
    new = KeyPair.generate()
    record = new_record(seeded, loc, new, rotation_id="rot-2024-q3")
    version_id = rotation_version_id("rot-2024-q3")
    assert version_id != "rot-2024-q3" and version_id == rotation_version_id("rot-2024-q3")

    seeded.stage(loc, record, new, HOST)
    assert stages(sm, loc)[version_id] == ["AWSPENDING"]
    assert seeded.describe(loc).pending == record
    assert seeded.promote(loc, record) == version_id


def test_tag_values_are_escaped_and_round_trip(seeded: AwsSecretsStore, sm: Any, loc: SecretLocation) -> None:
    new = KeyPair.generate()
    record = new_record(seeded, loc, new).model_copy(update={"entry": "Projekt Ü {a=b}, #1"})
    seeded.stage(loc, record, new, HOST)

    tags = {t["Key"]: t["Value"] for t in sm.describe_secret(SecretId=loc.path)["Tags"]}
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _.:/=+-@")
    assert all(set(value) <= allowed for value in tags.values())
    assert seeded.describe(loc).pending == record


def test_crash_between_tagging_and_put_leaves_nothing_staged(
    seeded: AwsSecretsStore, sm: Any, loc: SecretLocation
) -> None:
    new = KeyPair.generate()
    record = new_record(seeded, loc, new)
    sm.tag_resource(
        SecretId=loc.path,
        Tags=[{"Key": f"{TAG_PREFIX}pending:rotation-id", "Value": record.rotation_id}],
    )

    assert seeded.describe(loc).pending is None and seeded.read_staged(loc) is None
    seeded.stage(loc, record, new, HOST)  # the rerun stages cleanly
    assert seeded.describe(loc).pending == record


def test_foreign_pending_version_blocks_staging(seeded: AwsSecretsStore, sm: Any, loc: SecretLocation) -> None:
    sm.put_secret_value(
        SecretId=loc.path,
        SecretString='{"other": "tool"}',
        VersionStages=["AWSPENDING"],
        ClientRequestToken=str(uuid.uuid4()),
    )
    new = KeyPair.generate()
    assert seeded.read_staged(loc) is None
    with pytest.raises(StoreConflictError, match="pending"):
        seeded.stage(loc, new_record(seeded, loc, new), new, HOST)


def test_leftover_pending_label_on_current_does_not_block(
    seeded: AwsSecretsStore, sm: Any, loc: SecretLocation
) -> None:
    """AWS calls a rotation complete when AWSPENDING sits on the AWSCURRENT version."""
    current = seeded.describe(loc).current_version
    sm.update_secret_version_stage(SecretId=loc.path, VersionStage="AWSPENDING", MoveToVersionId=current)
    new = KeyPair.generate()
    record = new_record(seeded, loc, new)
    seeded.stage(loc, record, new, HOST)
    assert seeded.describe(loc).pending == record


def test_secret_addressed_by_arn(seeded: AwsSecretsStore, sm: Any, loc: SecretLocation, old: KeyPair) -> None:
    arn = sm.describe_secret(SecretId=loc.path)["ARN"]
    by_arn = SecretLocation(path=arn)
    assert seeded.location_label(by_arn) == arn
    assert seeded.read_current(by_arn).key_pair() == old
    assert seeded.seed(by_arn, old, HOST) == seeded.read_current(loc).version
    with pytest.raises(StoreNotFoundError):
        seeded.seed(SecretLocation(path=arn.replace("proj-a", "nope")), old, HOST)


def test_no_secret_in_tags_or_description(seeded: AwsSecretsStore, sm: Any, loc: SecretLocation, old: KeyPair) -> None:
    new = KeyPair.generate()
    record = new_record(seeded, loc, new)
    seeded.stage(loc, record, new, HOST)
    seeded.promote(loc, record)
    blob = json.dumps(sm.describe_secret(SecretId=loc.path), default=str)
    assert new.secret_key.get_secret_value() not in blob and old.secret_key.get_secret_value() not in blob
    seeded.finish(loc, record)
    blob = json.dumps(sm.describe_secret(SecretId=loc.path), default=str)
    assert new.secret_key.get_secret_value() not in blob and old.secret_key.get_secret_value() not in blob


# --- reads always name a stage ------------------------------------------------------------------


def test_every_read_names_a_stage_or_version(moto: MotoServer, loc: SecretLocation) -> None:
    moto.reset()
    session = fresh_session()
    reads: list[dict[str, Any]] = []
    session.events.register(
        "provide-client-params.secrets-manager.GetSecretValue",
        lambda params, **_: reads.append(dict(params)),
    )
    store = AwsSecretsStore(region=AWS_REGION, endpoint_url=moto.url, session=session)
    old, new = KeyPair.generate(), KeyPair.generate()
    store.seed(loc, old, HOST)
    record = new_record(store, loc, new)
    store.stage(loc, record, new, HOST)
    store.read_staged(loc)
    store.promote(loc, record)
    store.describe(loc)
    store.read_current(loc)
    store.read_version(loc, str(record.old_version))
    store.rollback(loc, record)
    store.read_current(loc)

    assert len(reads) >= 6
    for params in reads:
        assert params.get("VersionStage") or params.get("VersionId"), params


# --- refusals -----------------------------------------------------------------------------------


def test_refuses_a_secret_with_aws_managed_rotation(seeded: AwsSecretsStore, sm: Any, loc: SecretLocation) -> None:
    new = KeyPair.generate()
    record = new_record(seeded, loc, new)
    seeded.stage(loc, record, new, HOST)
    # moto has no Lambda to run, but it turns rotation on before it looks the Lambda up and fails
    # (moto 5.2, pinned in pyproject.toml for this): the secret ends up as AWS shows one whose
    # rotation is configured.
    with pytest.raises(botocore.exceptions.ClientError, match="Resource not found for ARN"):
        sm.rotate_secret(
            SecretId=loc.path,
            RotationLambdaARN="arn:aws:lambda:us-east-1:123456789012:function:absent",
            RotationRules={"AutomaticallyAfterDays": 30},
        )
    assert sm.describe_secret(SecretId=loc.path).get("RotationEnabled"), "moto no longer enables rotation this way"

    for attempt in (
        lambda: seeded.describe(loc),
        lambda: seeded.stage(loc, record, new, HOST),
        lambda: seeded.promote(loc, record),
    ):
        with pytest.raises(StoreRefusedError, match="automatic rotation"):
            attempt()


def test_refuses_a_secret_scheduled_for_deletion(seeded: AwsSecretsStore, sm: Any, loc: SecretLocation) -> None:
    new = KeyPair.generate()
    record = new_record(seeded, loc, new)
    seeded.stage(loc, record, new, HOST)
    sm.delete_secret(SecretId=loc.path, RecoveryWindowInDays=7)

    for attempt in (
        lambda: seeded.describe(loc),
        lambda: seeded.stage(loc, record, new, HOST),
        lambda: seeded.promote(loc, record),
        lambda: seeded.read_current(loc),
    ):
        with pytest.raises(StoreRefusedError, match="scheduled for deletion"):
            attempt()


# --- access, throttling, KMS, reachability ------------------------------------------------------


@pytest.fixture
def enforcing(moto: MotoServer) -> Iterator[MotoServer]:
    try:
        yield moto
    finally:
        moto.disable_iam_enforcement()


def test_access_denied_by_iam(
    enforcing: MotoServer, seeded: AwsSecretsStore, loc: SecretLocation, old: KeyPair
) -> None:
    user = enforcing.create_iam_user(f"reader-{uuid.uuid4().hex[:6]}", ["secretsmanager:DescribeSecret"])
    enforcing.enable_iam_enforcement()
    store = AwsSecretsStore(region=AWS_REGION, endpoint_url=enforcing.url, session=user.session())

    with pytest.raises(StoreAccessDeniedError, match="GetSecretValue") as caught:
        store.read_current(loc)
    assert old.secret_key.get_secret_value() not in caught.value.message
    assert "<" not in caught.value.message  # moto's XML body stays out of the message
    with pytest.raises(StoreAccessDeniedError):
        store.describe(loc)

    stranger = AwsSecretsStore(
        region=AWS_REGION,
        endpoint_url=enforcing.url,
        session=boto3.session.Session(
            region_name=AWS_REGION, aws_access_key_id="AKIAUNKNOWN", aws_secret_access_key="nope"
        ),
    )
    with pytest.raises(StoreAccessDeniedError):
        stranger.describe(loc)


def _inject(session: boto3.session.Session, code: str, times: int, operation: str = "GetSecretValue") -> list[int]:
    """Make the next ``times`` calls of ``operation`` fail with ``code`` before reaching moto."""
    calls: list[int] = []

    def hook(**_: Any) -> None:
        calls.append(1)
        if len(calls) <= times:
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": code, "Message": "injected"}, "ResponseMetadata": {"HTTPStatusCode": 400}},
                operation,
            )

    session.events.register(f"before-call.secrets-manager.{operation}", hook)
    return calls


@pytest.mark.slow  # botocore's real adaptive backoff
def test_throttling_is_ridden_out_by_botocores_adaptive_retries(moto: MotoServer, loc: SecretLocation) -> None:
    moto.reset()
    session = fresh_session()
    calls = throttle_on_the_wire(session.events, "GetSecretValue", times=1)
    store = AwsSecretsStore(region=AWS_REGION, endpoint_url=moto.url, session=session)
    old = KeyPair.generate()
    store.seed(loc, old, HOST)

    assert store.read_current(loc).key_pair() == old
    assert len(calls) == 2
    assert store._client.meta.config.retries["mode"] == "adaptive"


@pytest.mark.slow  # botocore's real backoff
def test_a_throttling_storm_is_unavailable_after_botocores_attempts_only(moto: MotoServer, loc: SecretLocation) -> None:
    moto.reset()
    session = fresh_session()
    calls = throttle_on_the_wire(session.events, "GetSecretValue", times=1000)
    store = AwsSecretsStore(region=AWS_REGION, endpoint_url=moto.url, session=session, max_attempts=1)
    store.seed(loc, KeyPair.generate(), HOST)

    with pytest.raises(StoreUnavailableError, match=r"throttled GetSecretValue .* after 2 attempts"):
        store.read_current(loc)
    assert len(calls) == 2  # one retry layer: botocore's, no second loop on top


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("KMSAccessDeniedException", StoreAccessDeniedError),
        ("DecryptionFailure", StoreUnavailableError),
        ("AccessDeniedException", StoreAccessDeniedError),
        ("InternalServiceError", StoreUnavailableError),
    ],
)
def test_aws_error_codes_map_to_store_errors(
    moto: MotoServer, loc: SecretLocation, code: str, error: type[Exception]
) -> None:
    moto.reset()
    session = fresh_session()
    _inject(session, code, times=1000)
    store = AwsSecretsStore(region=AWS_REGION, endpoint_url=moto.url, session=session, max_attempts=1)
    with pytest.raises(error) as caught:
        store.read_current(loc)
    assert "\n" not in str(caught.value)


def test_unreachable_endpoint_is_unavailable(loc: SecretLocation) -> None:
    store = AwsSecretsStore(
        region=AWS_REGION,
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        session=fresh_session(),
        timeout_s=1,
        max_attempts=1,
    )
    with pytest.raises(StoreUnavailableError, match="unreachable") as caught:
        store.describe(loc)
    assert caught.value.__cause__ is None


def test_missing_credentials_are_denied(monkeypatch: pytest.MonkeyPatch, moto: MotoServer, loc: SecretLocation) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = AwsSecretsStore(region=AWS_REGION, endpoint_url=moto.url, max_attempts=1, timeout_s=1)
    with pytest.raises(StoreAccessDeniedError, match="credentials"):
        store.describe(loc)


def test_unknown_profile_is_denied() -> None:
    with pytest.raises(StoreAccessDeniedError, match="profile"):
        AwsSecretsStore(region=AWS_REGION, profile=f"no-such-profile-{uuid.uuid4().hex[:6]}")


def test_read_version_of_an_unknown_version(seeded: AwsSecretsStore, loc: SecretLocation) -> None:
    with pytest.raises(StoreNotFoundError):
        seeded.read_version(loc, str(uuid.uuid4()))
    with pytest.raises(StoreNotFoundError):
        seeded.read_version(loc, 3)


# --- crashes inside a step ----------------------------------------------------------------------


def test_crash_inside_finish_is_reported_and_continued(seeded: AwsSecretsStore, sm: Any, loc: SecretLocation) -> None:
    """finish() tags the facts, then drops AWSPENDING and the pending tags; a crash between is resumable."""
    new = KeyPair.generate()
    record = new_record(seeded, loc, new)
    seeded.stage(loc, record, new, HOST)
    seeded.promote(loc, record)
    sm.tag_resource(SecretId=loc.path, Tags=[{"Key": f"{TAG_PREFIX}rotation-id", "Value": record.rotation_id}])

    desc = seeded.describe(loc)
    assert desc.pending == record and desc.pending_promoted and desc.last_rotation_id == record.rotation_id

    seeded.finish(loc, record)
    assert seeded.describe(loc).pending is None
    assert "AWSPENDING" not in stages(sm, loc)[record.rotation_id]


def test_crash_inside_rollback_is_reported_and_continued(
    seeded: AwsSecretsStore, sm: Any, loc: SecretLocation, old: KeyPair
) -> None:
    """rollback() moves AWSCURRENT back, then drops AWSPENDING; a crash between is resumable."""
    new = KeyPair.generate()
    record = new_record(seeded, loc, new)
    seeded.stage(loc, record, new, HOST)
    seeded.promote(loc, record)
    sm.update_secret_version_stage(
        SecretId=loc.path,
        VersionStage="AWSCURRENT",
        MoveToVersionId=str(record.old_version),
        RemoveFromVersionId=record.rotation_id,
    )
    sm.update_secret_version_stage(SecretId=loc.path, VersionStage="AWSPENDING", MoveToVersionId=record.rotation_id)

    desc = seeded.describe(loc)
    assert desc.pending == record and not desc.pending_promoted

    assert seeded.rollback(loc, record) == record.old_version
    assert seeded.describe(loc).pending is None
    assert seeded.read_current(loc).key_pair() == old
