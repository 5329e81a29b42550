"""AWS Secrets Manager secret store (boto3), driving AWS's own staging-label protocol.

Layout of one entry whose location path is a secret name or ARN:

Secret value
    A JSON object with the three fields named by ``loc.fields`` (other keys are carried over by
    a rotation). Consumers read ``AWSCURRENT``.

Versions and labels
    ``stage``   ``put_secret_value(ClientRequestToken=<rotation version id>, VersionStages=["AWSPENDING"])``.
    ``promote`` moves ``AWSCURRENT`` to that version (``RemoveFromVersionId=record.old_version``);
                AWS moves ``AWSPREVIOUS`` to the old version, which stays readable.
    ``rollback`` moves ``AWSCURRENT`` back to the old version (if ours is current), removes
                ``AWSPENDING`` from ours, and takes ``AWSPREVIOUS`` off ours (so the label never
                points at the key the rollback is about to revoke).
    ``finish``  removes ``AWSPENDING`` from ours.
    ``langfuse-rotate-emergency`` (``EMERGENCY_STAGE``) sits on the staged version of a rotation
                an emergency staged (put together with ``AWSPENDING``, in the same write) or took
                over (``take_over`` moves it there); ``finish`` and ``rollback`` take it off again.
    The rotation version id is ``record.rotation_id`` itself when it is a valid
    ``ClientRequestToken`` (32-64 of ``[A-Za-z0-9-]``, e.g. a UUID), otherwise a UUID5 of it.

Tags (never a secret, never in the secret's name)
    While a rotation is in flight the ``RotationRecord`` lives in ``langfuse-rotate:pending:*``
    tags, written *before* the ``AWSPENDING`` version. A rotation counts as staged only when
    ``AWSPENDING`` sits on the version id derived from the tagged rotation id, so a crash
    between the two writes leaves nothing staged (stale tags are overwritten or removed later).
    The record's mode is not taken from its tag but from ``EMERGENCY_STAGE``: tags may be writable
    by a credential weaker than the rotator's (``TagResource``), and a forged mode must never make
    a scheduled rotation revoke its old key first; moving a staging label takes
    ``UpdateSecretVersionStage``, the right that also moves ``AWSCURRENT``. ``taken-over-by`` and
    ``taken-over-at`` (who took the rotation over, and when) count only with the label.
    After ``finish``: ``langfuse-rotate:rotation-id``, ``:public-key``, ``:rotated-at``,
    ``:state`` and ``:mode``.

IAM actions the rotator needs on the secret: ``secretsmanager:DescribeSecret``, ``GetSecretValue``,
``PutSecretValue``, ``UpdateSecretVersionStage``, ``TagResource``, ``UntagResource`` (and
``CreateSecret`` for ``seed``), plus ``kms:Decrypt``/``kms:GenerateDataKey`` on a customer-managed key.

Every read passes ``VersionStage`` or ``VersionId`` explicitly: without one, moto serves stale
data after a label move (AWS would not), and it means the same on AWS. Secrets with AWS-managed
rotation enabled, or scheduled for deletion, are refused.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
import botocore.exceptions
from botocore.config import Config
from pydantic import ValidationError

from connectors import pacing
from connectors.aws_session import DEFAULT_ROLE_SESSION_NAME, aws_session
from connectors.errors import (
    StoreAccessDeniedError,
    StoreConflictError,
    StoreError,
    StoreNotFoundError,
    StoreRefusedError,
    StoreUnavailableError,
)
from connectors.keypair import KeyPair
from connectors.store import (
    HandoverRequest,
    RotationRecord,
    SecretLocation,
    StoreDescription,
    StoredPair,
    StoreVersion,
    parse_time,
    secret_fields,
    stored_pair,
)

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager.client import SecretsManagerClient
    from mypy_boto3_secretsmanager.type_defs import DescribeSecretResponseTypeDef, TagTypeDef

__all__ = ["EMERGENCY_STAGE", "TAG_PREFIX", "AwsSecretsStore", "rotation_version_id"]

CURRENT = "AWSCURRENT"
PENDING = "AWSPENDING"
PREVIOUS = "AWSPREVIOUS"
EMERGENCY_STAGE = "langfuse-rotate-emergency"
"""The staging label that makes the staged rotation an emergency (see the module's docstring)."""

TAG_PREFIX = "langfuse-rotate:"
_PENDING_TAG = f"{TAG_PREFIX}pending:"
_HANDOVER_TAG = f"{TAG_PREFIX}handover:"
_RECORD_TAGS = {
    "rotation_id": "rotation-id",
    "entry": "entry",
    "mode": "mode",
    "old_public_key": "old-public-key",
    "new_public_key": "new-public-key",
    "old_version": "old-version",
    "started_at": "started-at",
    "flow_run_id": "flow-run-id",
    "taken_over_by": "taken-over-by",
    "taken_over_at": "taken-over-at",
}

_TOKEN = re.compile(r"^[A-Za-z0-9-]{32,64}$")
_TOKEN_NAMESPACE = uuid.UUID("5b7e0c1e-3f7a-4d0e-9a53-6c1f2b8d4e71")
_TAG_SAFE = re.compile(r"[A-Za-z0-9 _.:/+\-@]")
_TAG_ESCAPE = re.compile(r"=([0-9A-F]{2})")

_PACED_WRITES = {"PutSecretValue", "UpdateSecret", "UpdateSecretVersionStage"}
"""The calls AWS limits together at 50 per second per account and region."""

_THROTTLING = {
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "LimitExceededException",
}
_DENIED = {
    "AccessDeniedException",
    "AccessDenied",
    "403",  # moto under IAM enforcement: an XML error body that botocore reports as code "403"
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "InvalidSignatureException",
    "ExpiredTokenException",
    "KMSAccessDeniedException",
}
_KMS_UNAVAILABLE = {
    "DecryptionFailure",
    "EncryptionFailure",
    "KMSDisabledException",
    "KMSInvalidStateException",
    "KMSNotFoundException",
}
_SERVER = {"InternalServiceError", "InternalFailure", "ServiceUnavailable", "ServiceUnavailableException"}

_T = TypeVar("_T")


def rotation_version_id(rotation_id: str) -> str:
    """The ``ClientRequestToken``/``VersionId`` a rotation's staged version gets."""
    if _TOKEN.match(rotation_id):
        return rotation_id
    return str(uuid.uuid5(_TOKEN_NAMESPACE, rotation_id))


@dataclass(frozen=True)
class _Secret:
    """What ``describe_secret`` says, reduced to what the protocol needs."""

    stages: dict[str, list[str]]
    tags: dict[str, str]
    rotation_enabled: bool
    deleted: bool

    def holder(self, stage: str) -> str | None:
        for version, labels in self.stages.items():
            if stage in labels:
                return version
        return None


class AwsSecretsStore:
    """A ``SecretStore`` on AWS Secrets Manager. Credentials come from the standard AWS chain
    (environment, profile, role), or from the ``session`` passed in."""

    kind = "aws"

    def __init__(
        self,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        profile: str | None = None,
        role_arn: str | None = None,
        external_id: str | None = None,
        role_session_name: str = DEFAULT_ROLE_SESSION_NAME,
        timeout_s: float = 10.0,
        max_attempts: int = 5,
        session: boto3.session.Session | None = None,
    ) -> None:
        """Region and credentials as in ``connectors.aws_session``. Retries are botocore's own
        ``adaptive`` mode (backoff with jitter, plus client-side rate limiting after throttling),
        ``max_attempts`` retries after the first attempt (botocore adds one for the first); no second retry
        layer on top."""
        session, region = aws_session(
            region=region,
            profile=profile,
            role_arn=role_arn,
            external_id=external_id,
            role_session_name=role_session_name,
            session=session,
        )
        self._region = region
        self._endpoint = endpoint_url or f"https://secretsmanager.{region}.amazonaws.com"
        self._role_arn = role_arn
        config = Config(
            region_name=region,
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            retries={"mode": "adaptive", "max_attempts": max_attempts},
        )
        self._client: SecretsManagerClient = session.client(
            "secretsmanager", region_name=region, endpoint_url=endpoint_url, config=config
        )
        self._pace_key = pacing.aws_key(region, endpoint_url)
        self._client.meta.events.register("before-call.secrets-manager", self._before_call)
        self._client.meta.events.register("needs-retry.secrets-manager", self._on_attempt)

    def __repr__(self) -> str:
        role = f", role_arn={self._role_arn!r}" if self._role_arn else ""
        return f"AwsSecretsStore(region={self._region!r}, endpoint={self._endpoint!r}{role})"

    # --- SecretStore --------------------------------------------------------------------------

    def location_label(self, loc: SecretLocation) -> str:
        if loc.path.startswith("arn:"):
            return loc.path
        return f"aws:{self._region}:{loc.path}"

    def describe(self, loc: SecretLocation) -> StoreDescription:
        label = self.location_label(loc)
        secret = self._describe(loc, label)
        if secret is None:
            return StoreDescription(kind=self.kind, location=label, exists=False)
        _refuse_unsafe(secret, label)
        current_version: str | None = None
        current_pk: str | None = None
        if secret.holder(CURRENT) is not None:
            value = self._get(loc, label, stage=CURRENT)
            if value is not None:
                current_version, data = value
                public_key = data.get(loc.fields.public_key)
                current_pk = public_key if isinstance(public_key, str) else None
        pending = _pending(secret)
        return StoreDescription(
            kind=self.kind,
            location=label,
            exists=current_version is not None,
            current_version=current_version,
            current_public_key=current_pk,
            previous_version=secret.holder(PREVIOUS),
            pending=pending,
            pending_promoted=pending is not None and secret.holder(CURRENT) == rotation_version_id(pending.rotation_id),
            last_rotation_id=secret.tags.get(f"{TAG_PREFIX}rotation-id") or None,
            last_rotated_at=parse_time(secret.tags.get(f"{TAG_PREFIX}rotated-at")),
            last_mode=secret.tags.get(f"{TAG_PREFIX}mode") or None,
            handover=_handover(secret),
        )

    def read_current(self, loc: SecretLocation) -> StoredPair:
        label = self.location_label(loc)
        value = self._get(loc, label, stage=CURRENT)
        if value is None:
            raise StoreNotFoundError(f"no current secret at {label}")
        return stored_pair(value[1], value[0], loc, label)

    def read_version(self, loc: SecretLocation, version: StoreVersion) -> StoredPair:
        label = self.location_label(loc)
        version_id = str(version)
        if not _TOKEN.match(version_id):
            raise StoreNotFoundError(f"{label} has no version '{version_id[:64]}'")
        value = self._get(loc, label, version_id=version_id)
        if value is None:
            raise StoreNotFoundError(f"{label} has no version {version_id}")
        return stored_pair(value[1], value[0], loc, label)

    def seed(self, loc: SecretLocation, pair: KeyPair, host: str) -> StoreVersion:
        """Create the secret. Repeating it with the same pair returns the current version."""
        label = self.location_label(loc)
        if loc.path.startswith("arn:"):
            found = self._get(loc, label, stage=CURRENT)
            if found is None:
                raise StoreNotFoundError(f"no secret at {label}; create it by name, not by ARN")
            if found[1].get(loc.fields.public_key) == pair.public_key:
                return found[0]
            raise StoreConflictError(f"{label} already exists; not seeding over it")
        value = json.dumps(secret_fields(loc, pair, host))
        token = str(uuid.uuid5(_TOKEN_NAMESPACE, f"seed:{loc.path}:{pair.public_key}"))
        try:
            response = self._call(
                "create",
                label,
                lambda: self._client.create_secret(Name=loc.path, SecretString=value, ClientRequestToken=token),
            )
            return response["VersionId"]
        except StoreConflictError:
            found = self._get(loc, label, stage=CURRENT)
            if found is not None and found[1].get(loc.fields.public_key) == pair.public_key:
                return found[0]
            raise StoreConflictError(f"{label} already exists; not seeding over it") from None

    def stage(self, loc: SecretLocation, record: RotationRecord, pair: KeyPair, host: str) -> None:
        """Tag the record, then put the new pair as the ``AWSPENDING`` version.

        ``record.old_version`` must be the version holding ``AWSCURRENT`` (else
        ``StoreConflictError``); no secret yet: ``StoreNotFoundError`` (seed it first).
        """
        label = self.location_label(loc)
        if record.new_public_key != pair.public_key:
            raise ValueError("record.new_public_key does not match the staged pair")
        version_id = rotation_version_id(record.rotation_id)
        secret = self._describe(loc, label)
        if secret is None:
            raise StoreNotFoundError(f"no secret at {label} to rotate; seed it first")
        _refuse_unsafe(secret, label)

        pending_on = secret.holder(PENDING)
        if pending_on == version_id:  # already staged: a rerun
            staged = self._get(loc, label, version_id=version_id, stage=PENDING)
            if staged is not None and staged[1].get(loc.fields.public_key) != pair.public_key:
                raise StoreConflictError(
                    f"rotation {record.rotation_id} is staged at {label} with a different public key"
                )
            if _pending(secret) is None:  # tags lost (edited by hand): restore them
                self._tag(loc, label, _record_tags(record))
            return
        current = secret.holder(CURRENT)
        other = _pending(secret)
        if other is not None:  # one of ours, staged or already promoted but not finished
            raise StoreConflictError(f"{label} already has rotation {other.rotation_id} staged")
        if pending_on is not None and pending_on != current:
            raise StoreConflictError(f"{label} already has version {pending_on} pending (AWSPENDING) from another tool")
        # AWSPENDING on the current version without our record is how AWS marks a finished
        # rotation; the put below moves the label.
        if current is None:
            raise StoreNotFoundError(f"no current version at {label} to rotate; seed it first")
        if record.old_version is None or str(record.old_version) != current:
            raise StoreConflictError(
                f"{label} is at version {current}, not {record.old_version} as rotation {record.rotation_id} expects"
            )
        found = self._get(loc, label, version_id=current, stage=CURRENT)
        if found is None:
            raise StoreConflictError(f"{label} changed while staging rotation {record.rotation_id}")
        data = dict(found[1])
        data.update(secret_fields(loc, pair, host))

        self._tag(loc, label, _record_tags(record))
        self._call(
            "stage",
            label,
            lambda: self._client.put_secret_value(
                SecretId=loc.path,
                ClientRequestToken=version_id,
                SecretString=json.dumps(data),
                VersionStages=[PENDING, EMERGENCY_STAGE] if record.mode == "emergency" else [PENDING],
            ),
        )
        after = self._describe(loc, label)
        if after is None or after.holder(PENDING) != version_id:
            raise StoreConflictError(f"another rotation was staged at {label} at the same time")
        if _pending(after) is None:  # a concurrent stager re-tagged before losing the label race
            self._tag(loc, label, _record_tags(record))

    def read_staged(self, loc: SecretLocation) -> tuple[RotationRecord, StoredPair] | None:
        label = self.location_label(loc)
        secret = self._describe(loc, label)
        if secret is None:
            return None
        record = _pending(secret)
        if record is None:
            return None
        found = self._get(loc, label, version_id=rotation_version_id(record.rotation_id), stage=PENDING)
        if found is None:
            return None
        return record, stored_pair(found[1], found[0], loc, label)

    def promote(self, loc: SecretLocation, record: RotationRecord) -> StoreVersion:
        """Move ``AWSCURRENT`` to the staged version, fenced on ``record.old_version``."""
        label = self.location_label(loc)
        version_id = rotation_version_id(record.rotation_id)
        secret = self._require(loc, label)
        _refuse_unsafe(secret, label)
        if secret.holder(CURRENT) == version_id:
            return version_id
        if secret.holder(PENDING) != version_id:
            raise StoreConflictError(f"rotation {record.rotation_id} is not staged at {label}")
        current = secret.holder(CURRENT)
        if record.old_version is None or current != str(record.old_version):
            raise StoreConflictError(
                f"{label} changed after rotation {record.rotation_id} was staged "
                f"(current version {current}, expected {record.old_version})"
            )
        try:
            self._call(
                "promote",
                label,
                lambda: self._client.update_secret_version_stage(
                    SecretId=loc.path,
                    VersionStage=CURRENT,
                    MoveToVersionId=version_id,
                    RemoveFromVersionId=current,
                ),
            )
        except StoreError as exc:
            if _is_transport(exc):
                raise
            again = self._describe(loc, label)
            if again is not None and again.holder(CURRENT) == version_id:
                return version_id
            raise StoreConflictError(f"{label} changed while promoting rotation {record.rotation_id}") from None
        return version_id

    def rollback(self, loc: SecretLocation, record: RotationRecord) -> StoreVersion | None:
        """Make the old version current again if ours is; then clear our labels and tags."""
        label = self.location_label(loc)
        version_id = rotation_version_id(record.rotation_id)
        secret = self._describe(loc, label)
        if secret is None:
            return None
        if secret.holder(CURRENT) == version_id:
            if record.old_version is None:
                raise StoreConflictError(f"rotation {record.rotation_id} at {label} has no old version to restore")
            old = str(record.old_version)
            try:
                self._call(
                    "roll back",
                    label,
                    lambda: self._client.update_secret_version_stage(
                        SecretId=loc.path, VersionStage=CURRENT, MoveToVersionId=old, RemoveFromVersionId=version_id
                    ),
                )
            except StoreError as exc:
                if _is_transport(exc) or self._require(loc, label).holder(CURRENT) == version_id:
                    raise
            secret = self._require(loc, label)
        for stage in (PENDING, PREVIOUS):
            if secret.holder(stage) == version_id:
                self._remove_label(loc, label, stage, version_id)
        if _tagged_rotation(secret) == record.rotation_id:
            self._untag(loc, label, _record_tag_keys())
        if secret.holder(EMERGENCY_STAGE) == version_id:  # last: nothing is staged any more
            self._remove_label(loc, label, EMERGENCY_STAGE, version_id)
        final = self._require(loc, label)
        return final.holder(CURRENT)

    def finish(self, loc: SecretLocation, record: RotationRecord) -> None:
        """Record the facts in tags, then remove ``AWSPENDING`` and the pending tags.

        A crash in between shows in ``describe`` as pending + promoted with
        ``last_rotation_id`` already set; a rerun completes it.
        """
        label = self.location_label(loc)
        version_id = rotation_version_id(record.rotation_id)
        secret = self._require(loc, label)
        if secret.tags.get(f"{TAG_PREFIX}rotation-id") != record.rotation_id:
            if secret.holder(CURRENT) != version_id:
                raise StoreConflictError(f"rotation {record.rotation_id} is not current at {label}; promote it first")
            stored = _pending(secret)
            facts = {
                "rotation-id": record.rotation_id,
                "public-key": record.new_public_key,
                "rotated-at": datetime.now(UTC).isoformat(),
                "state": "rotated",
                "mode": stored.mode if stored is not None and stored.rotation_id == record.rotation_id else record.mode,
            }
            self._tag(loc, label, {f"{TAG_PREFIX}{key}": value for key, value in facts.items()})
        if secret.holder(PENDING) == version_id:
            self._remove_label(loc, label, PENDING, version_id)
        if _tagged_rotation(secret) == record.rotation_id:
            self._untag(loc, label, _record_tag_keys())
        if secret.holder(EMERGENCY_STAGE) == version_id:  # last: nothing is staged any more
            self._remove_label(loc, label, EMERGENCY_STAGE, version_id)

    def take_over(self, loc: SecretLocation, rotation_id: str, emergency_run: str) -> RotationRecord:
        """Tag who took the rotation over and when (informational), then move ``EMERGENCY_STAGE``
        onto the staged version: from that write on the staged record reads as an emergency."""
        label = self.location_label(loc)
        secret = self._require(loc, label)
        _refuse_unsafe(secret, label)
        record = _pending(secret)
        if record is None or record.rotation_id != rotation_id:
            raise StoreConflictError(f"rotation {rotation_id} is not staged at {label}")
        if record.mode == "emergency":
            return record
        version_id = rotation_version_id(rotation_id)
        taken = record.model_copy(
            update={"mode": "emergency", "taken_over_by": emergency_run[:100], "taken_over_at": datetime.now(UTC)}
        )
        values = json.loads(taken.model_dump_json())
        self._tag(
            loc,
            label,
            {
                f"{_PENDING_TAG}{_RECORD_TAGS[field]}": str(values[field])
                for field in ("mode", "taken_over_by", "taken_over_at")
            },
        )
        holder = secret.holder(EMERGENCY_STAGE)  # a label can sit on one version only: take it off the other
        elsewhere = {"RemoveFromVersionId": holder} if holder is not None and holder != version_id else {}
        try:
            self._call(
                "take over",
                label,
                lambda: self._client.update_secret_version_stage(
                    SecretId=loc.path, VersionStage=EMERGENCY_STAGE, MoveToVersionId=version_id, **elsewhere
                ),
            )
        except StoreError as exc:
            if _is_transport(exc):
                raise
            again = _pending(self._require(loc, label))
            if again is None or again.rotation_id != rotation_id or again.mode != "emergency":
                raise StoreConflictError(f"{label} changed while taking over rotation {rotation_id}") from None
            return again
        return taken

    def read_handover(self, loc: SecretLocation) -> HandoverRequest | None:
        """``describe(loc).handover`` for one ``DescribeSecret``."""
        secret = self._describe(loc, self.location_label(loc))
        return _handover(secret) if secret is not None else None

    def request_handover(self, loc: SecretLocation, request: HandoverRequest) -> None:
        """Put the request in ``langfuse-rotate:handover:*`` tags (an absent field as an empty value)."""
        label = self.location_label(loc)
        values = json.loads(request.model_dump_json())
        self._tag(
            loc,
            label,
            {f"{_HANDOVER_TAG}{field}": "" if values[field] is None else str(values[field]) for field in values},
        )

    def clear_handover(self, loc: SecretLocation, emergency_run: str) -> None:
        label = self.location_label(loc)
        secret = self._describe(loc, label)
        if secret is None or secret.tags.get(f"{_HANDOVER_TAG}emergency_run") != emergency_run:
            return
        self._untag(loc, label, [key for key in secret.tags if key.startswith(_HANDOVER_TAG)])

    # --- internals ----------------------------------------------------------------------------

    def _require(self, loc: SecretLocation, label: str) -> _Secret:
        secret = self._describe(loc, label)
        if secret is None:
            raise StoreNotFoundError(f"no secret at {label}")
        return secret

    def _describe(self, loc: SecretLocation, label: str) -> _Secret | None:
        try:
            response: DescribeSecretResponseTypeDef = self._call(
                "describe", label, lambda: self._client.describe_secret(SecretId=loc.path)
            )
        except StoreNotFoundError:
            return None
        return _Secret(
            stages={version: list(labels) for version, labels in response.get("VersionIdsToStages", {}).items()},
            tags={tag.get("Key", ""): _unescape(tag.get("Value", "")) for tag in response.get("Tags", [])},
            rotation_enabled=bool(response.get("RotationEnabled")),
            deleted=response.get("DeletedDate") is not None,
        )

    def _get(
        self, loc: SecretLocation, label: str, *, stage: str | None = None, version_id: str | None = None
    ) -> tuple[str, dict[str, Any]] | None:
        """(VersionId, parsed JSON) of one version, always selected explicitly; None if absent."""
        kwargs: dict[str, str] = {}
        if stage is not None:
            kwargs["VersionStage"] = stage
        if version_id is not None:
            kwargs["VersionId"] = version_id
        if not kwargs:
            raise ValueError("a read must name a VersionStage or a VersionId")
        try:
            response = self._call("read", label, lambda: self._client.get_secret_value(SecretId=loc.path, **kwargs))
        except StoreNotFoundError:
            return None
        try:
            data = json.loads(response.get("SecretString") or "")
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise StoreError(f"{label} version {response['VersionId']} is not a JSON object")
        return response["VersionId"], data

    def _remove_label(self, loc: SecretLocation, label: str, stage: str, version_id: str) -> None:
        try:
            self._call(
                f"remove {stage}",
                label,
                lambda: self._client.update_secret_version_stage(
                    SecretId=loc.path, VersionStage=stage, RemoveFromVersionId=version_id
                ),
            )
        except StoreError as exc:
            if _is_transport(exc) or self._require(loc, label).holder(stage) == version_id:
                raise

    def _tag(self, loc: SecretLocation, label: str, tags: dict[str, str]) -> None:
        pairs: list[TagTypeDef] = [{"Key": key, "Value": _escape(value)} for key, value in tags.items()]
        for key, value in tags.items():
            if len(_escape(value)) > 256:
                raise StoreError(f"{label}: tag {key} would exceed 256 characters")
        self._call("tag", label, lambda: self._client.tag_resource(SecretId=loc.path, Tags=pairs))

    def _untag(self, loc: SecretLocation, label: str, keys: list[str]) -> None:
        self._call("untag", label, lambda: self._client.untag_resource(SecretId=loc.path, TagKeys=keys))

    def _before_call(self, model: Any, **_: Any) -> None:
        """Every API call is counted; the writes AWS limits together (50/s per account and region)
        wait on a fleet run's write gate (``connectors.pacing``)."""
        pacing.before_request(self._pace_key, paced=getattr(model, "name", "") in _PACED_WRITES)

    def _on_attempt(self, response: Any = None, **_: Any) -> None:
        """A throttled attempt (botocore retries it) slows every write of a fleet run down."""
        parsed = response[1] if isinstance(response, tuple) and len(response) == 2 else None
        code = parsed.get("Error", {}).get("Code") if isinstance(parsed, dict) else None
        if code in _THROTTLING:
            pacing.rate_limited(self._pace_key, 1.0)

    def _call(self, action: str, label: str, fn: Callable[[], _T]) -> _T:
        """One API call (botocore retries it); errors become one-line ``StoreError``s."""
        try:
            return fn()
        except botocore.exceptions.ClientError as exc:
            raise _translate_client_error(exc, action, label) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise _translate_botocore_error(exc, action, label, self._endpoint) from None


# --- errors ---------------------------------------------------------------------------------------


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _translate_client_error(exc: botocore.exceptions.ClientError, action: str, label: str) -> StoreError:
    code = _code(exc)
    operation = exc.operation_name
    attempts = int(exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)) + 1
    if operation == "AssumeRole":  # getting the role's credentials, before the secret is touched
        if code in _DENIED or code == "403":
            return StoreAccessDeniedError(f"AWS denied sts:AssumeRole for {label} ({code})")
        return StoreUnavailableError(f"AWS STS failed sts:AssumeRole for {label} ({code})")
    message = " ".join(str(exc.response.get("Error", {}).get("Message", "")).split())[:200]
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code == "ResourceNotFoundException":
        return StoreNotFoundError(f"AWS Secrets Manager found nothing for {action} at {label}")
    if code in _DENIED or status == 403:
        what = "KMS denied the key for" if code == "KMSAccessDeniedException" else "AWS denied"
        return StoreAccessDeniedError(f"{what} secretsmanager:{operation} on {label} ({code})")
    if code in _THROTTLING:
        return StoreUnavailableError(f"AWS Secrets Manager throttled {operation} on {label} after {attempts} attempts")
    if code in _KMS_UNAVAILABLE:
        return StoreUnavailableError(f"KMS failed for secretsmanager:{operation} on {label} ({code})")
    if code in _SERVER or (isinstance(status, int) and status >= 500):
        return StoreUnavailableError(f"AWS Secrets Manager failed {operation} on {label} ({code})")
    if code == "ResourceExistsException":
        return StoreConflictError(f"{label}: {operation} conflicts with an existing secret or version")
    if code == "InvalidRequestException" and "delet" in message.lower():
        return StoreRefusedError(f"{label} is scheduled for deletion; restore it first")
    if code == "ValidationException":  # may quote the offending parameter value
        return StoreError(f"AWS rejected {operation} on {label} (ValidationException)")
    return StoreError(f"AWS rejected {operation} on {label} ({code}): {message}")


def _translate_botocore_error(
    exc: botocore.exceptions.BotoCoreError, action: str, label: str, endpoint: str
) -> StoreError:
    if isinstance(
        exc,
        botocore.exceptions.EndpointConnectionError
        | botocore.exceptions.ConnectTimeoutError
        | botocore.exceptions.ReadTimeoutError
        | botocore.exceptions.ConnectionClosedError
        | botocore.exceptions.HTTPClientError,
    ):
        return StoreUnavailableError(f"AWS Secrets Manager at {endpoint} is unreachable ({type(exc).__name__})")
    if isinstance(
        exc,
        botocore.exceptions.NoCredentialsError
        | botocore.exceptions.PartialCredentialsError
        | botocore.exceptions.CredentialRetrievalError
        | botocore.exceptions.ProfileNotFound,
    ):
        return StoreAccessDeniedError(f"no usable AWS credentials to {action} {label} ({type(exc).__name__})")
    # ParamValidationError and friends may quote parameter values: name the class only.
    return StoreError(f"AWS request to {action} {label} failed: {type(exc).__name__}")


def _is_transport(exc: StoreError) -> bool:
    """Errors that say nothing about the secret's state (retrying later may work)."""
    return isinstance(exc, StoreUnavailableError | StoreAccessDeniedError | StoreRefusedError)


def _refuse_unsafe(secret: _Secret, label: str) -> None:
    if secret.deleted:
        raise StoreRefusedError(f"{label} is scheduled for deletion; restore it before rotating")
    if secret.rotation_enabled:
        raise StoreRefusedError(
            f"{label} has AWS-managed automatic rotation enabled, which would fight this rotation; "
            "disable it (cancel-rotate-secret) first"
        )


# --- values and tags ------------------------------------------------------------------------------


def _record_tags(record: RotationRecord) -> dict[str, str]:
    values = json.loads(record.model_dump_json())
    return {
        f"{_PENDING_TAG}{tag}": "" if values[field] is None else str(values[field])
        for field, tag in _RECORD_TAGS.items()
    }


def _record_tag_keys() -> list[str]:
    return [f"{_PENDING_TAG}{tag}" for tag in _RECORD_TAGS.values()]


def _tagged_rotation(secret: _Secret) -> str | None:
    return secret.tags.get(f"{_PENDING_TAG}rotation-id") or None


def _pending(secret: _Secret) -> RotationRecord | None:
    """The tagged record, if ``AWSPENDING`` sits on its version; otherwise nothing is staged."""
    rotation_id = _tagged_rotation(secret)
    if rotation_id is None or secret.holder(PENDING) != rotation_version_id(rotation_id):
        return None
    values: dict[str, Any] = {}
    for field, tag in _RECORD_TAGS.items():
        raw = secret.tags.get(f"{_PENDING_TAG}{tag}", "")
        values[field] = raw or None
    # The mode is the label's, never the tag's (module docstring); who took it over counts only with it.
    emergency = secret.holder(EMERGENCY_STAGE) == rotation_version_id(rotation_id)
    values["mode"] = "emergency" if emergency else "scheduled"
    taken_over_at = parse_time(values["taken_over_at"]) if emergency else None
    values["taken_over_by"] = values["taken_over_by"] if taken_over_at is not None else None
    values["taken_over_at"] = taken_over_at
    try:
        return RotationRecord.model_validate(values)
    except ValidationError:
        return None


def _escape(value: str) -> str:
    """Tag values allow only letters, digits, spaces and ``_.:/=+-@``; ``=XX`` escapes the rest."""
    out = []
    for char in value:
        if _TAG_SAFE.fullmatch(char):
            out.append(char)
        else:
            out.extend(f"={byte:02X}" for byte in char.encode())
    return "".join(out)


def _unescape(value: str) -> str:
    out = bytearray()
    index = 0
    while index < len(value):
        escaped = _TAG_ESCAPE.match(value, index)
        if escaped:
            out.append(int(escaped.group(1), 16))
            index = escaped.end()
        else:
            out.extend(value[index].encode())
            index += 1
    return out.decode(errors="replace")


def _handover(secret: _Secret) -> HandoverRequest | None:
    values = {
        key.removeprefix(_HANDOVER_TAG): value or None
        for key, value in secret.tags.items()
        if key.startswith(_HANDOVER_TAG)
    }
    if not values:
        return None
    try:
        return HandoverRequest.model_validate(values)
    except ValidationError:
        return None
