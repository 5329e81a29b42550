"""The secret-store interface every store implements (Vault KV v2, AWS Secrets Manager, ...).

A store holds, per configured entry, one *current* secret that consumers read (public key,
secret key, host under configurable field names) and at most one *staged* rotation: the new
pair written ahead, together with a non-secret ``RotationRecord``, before the key exists in
Langfuse. Every method is idempotent, so a rerun after a crash can call it again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, SecretStr

from connectors.errors import StoreNotFoundError
from connectors.keypair import KeyPair

StoreVersion = int | str
"""Vault KV version (int) or AWS ``VersionId`` (str)."""


class FieldNames(BaseModel):
    """Names of the fields consumers read inside the secret."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    public_key: str = "LANGFUSE_PUBLIC_KEY"
    secret_key: str = "LANGFUSE_SECRET_KEY"
    host: str = "LANGFUSE_HOST"


class SecretLocation(BaseModel):
    """Where one entry's secret lives inside a store."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    fields: FieldNames = FieldNames()


def secret_fields(loc: SecretLocation, pair: KeyPair, host: str) -> dict[str, str]:
    """The secret's fields as consumers read them, under the location's field names."""
    return {
        loc.fields.public_key: pair.public_key,
        loc.fields.secret_key: pair.secret_key.get_secret_value(),
        loc.fields.host: host,
    }


def stored_pair(data: dict[str, Any], version: StoreVersion, loc: SecretLocation, label: str) -> StoredPair:
    """Read a pair back from a secret's fields; a secret without them is treated as absent."""
    public_key = data.get(loc.fields.public_key)
    secret_key = data.get(loc.fields.secret_key)
    if not isinstance(public_key, str) or not isinstance(secret_key, str):
        raise StoreNotFoundError(
            f"{label} version {version} lacks the fields '{loc.fields.public_key}' and '{loc.fields.secret_key}'"
        )
    host = data.get(loc.fields.host)
    return StoredPair(
        public_key=public_key,
        secret_key=SecretStr(secret_key),
        host=host if isinstance(host, str) else None,
        version=version,
    )


class StoredPair(BaseModel):
    """A pair read back from the store, with the version it was read from."""

    model_config = ConfigDict(frozen=True)

    public_key: str
    secret_key: SecretStr
    host: str | None = None
    version: StoreVersion

    def key_pair(self) -> KeyPair:
        return KeyPair(public_key=self.public_key, secret_key=self.secret_key)


class RotationRecord(BaseModel):
    """Non-secret facts of one in-flight rotation, durable in the store.

    ``old_version`` is the store version that was current when the rotation was staged;
    promotion is fenced on it (check-and-set), rollback restores it.

    ``mode`` is ``emergency`` for a rotation an emergency staged, and for a scheduled one an
    emergency took over (``SecretStore.take_over``: ``taken_over_by`` names that emergency run,
    ``taken_over_at`` says when). Such a rotation is only ever carried on as an emergency, never
    rolled back: its old key leaked. Only the rotator writes the record (the staged secret itself
    on Vault; on AWS the mode is a staging label on the staged version), so metadata that a weaker
    credential may be able to write (a handover request) can never make a rotation an emergency.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    rotation_id: str
    entry: str
    mode: Literal["scheduled", "emergency"]
    old_public_key: str | None
    new_public_key: str
    old_version: StoreVersion | None
    started_at: datetime
    flow_run_id: str | None = None
    taken_over_by: str | None = None
    taken_over_at: datetime | None = None


class HandoverRequest(BaseModel):
    """An emergency asking whoever holds the entry's lock to hand the entry over to it.

    Kept in the store (Vault ``custom_metadata``, AWS tags) so a run on any host sees it. The
    waiting emergency rewrites it with a fresh ``nonce`` about once a second; a scheduled rotation
    that sees a nonce it did not see when it started stops and lets go, if the request comes from
    a live emergency (fresh, renewed while it watches, or ``flow_run_id`` names a running
    emergency flow run; README "Safety guarantees"). The emergency removes the request when it
    ends. Metadata may be writable by weaker credentials than the rotator's: a request never makes
    a rotation an emergency (the staged record does, ``RotationRecord.mode``).
    """

    model_config = ConfigDict(frozen=True)

    emergency_run: str
    nonce: str
    requested_at: datetime
    flow_run_id: str | None = None


class StoreDescription(BaseModel):
    """What a store says about one location, without secrets."""

    model_config = ConfigDict(frozen=True)

    kind: str
    location: str
    exists: bool
    current_version: StoreVersion | None = None
    current_public_key: str | None = None
    previous_version: StoreVersion | None = None
    pending: RotationRecord | None = None
    pending_promoted: bool = False
    last_rotation_id: str | None = None
    last_rotated_at: datetime | None = None
    last_mode: str | None = None
    """``scheduled`` or ``emergency``: how the last finished rotation ran."""
    handover: HandoverRequest | None = None


@runtime_checkable
class SecretStore(Protocol):
    """One secret store connection. Methods take the entry's location; all are idempotent."""

    kind: str

    def location_label(self, loc: SecretLocation) -> str:
        """A human-readable, secret-free name of the location (``vault:secret/langfuse/x``, an ARN)."""
        ...

    def describe(self, loc: SecretLocation) -> StoreDescription:
        """Current version and public key, and the staged rotation if one is in flight."""
        ...

    def read_current(self, loc: SecretLocation) -> StoredPair:
        """The pair consumers read now. Raises ``StoreNotFoundError`` if there is none."""
        ...

    def read_version(self, loc: SecretLocation, version: StoreVersion) -> StoredPair:
        """A specific earlier version (for rollback checks)."""
        ...

    def seed(self, loc: SecretLocation, pair: KeyPair, host: str) -> StoreVersion:
        """Create the secret with its first pair. Raises ``StoreConflictError`` if it already exists."""
        ...

    def stage(self, loc: SecretLocation, record: RotationRecord, pair: KeyPair, host: str) -> None:
        """Write the new pair ahead, beside the current one, with its record.

        Atomic as seen by ``read_staged``. Repeating it with the same ``rotation_id`` is a no-op;
        a different rotation already staged raises ``StoreConflictError``.
        """
        ...

    def read_staged(self, loc: SecretLocation) -> tuple[RotationRecord, StoredPair] | None:
        """The staged rotation and its pair, or None."""
        ...

    def promote(self, loc: SecretLocation, record: RotationRecord) -> StoreVersion:
        """Make the staged pair current, fenced on ``record.old_version`` (check-and-set).

        Returns the new current version. Already promoted: returns that version unchanged.
        The old version stays retrievable. A concurrent writer raises ``StoreConflictError``.
        """
        ...

    def rollback(self, loc: SecretLocation, record: RotationRecord) -> StoreVersion | None:
        """Undo the rotation: if the staged pair is current, make the old pair current again;
        then clear the staging. Returns the current version afterwards (None if nothing exists).
        """
        ...

    def finish(self, loc: SecretLocation, record: RotationRecord) -> None:
        """Clear the staging and record the completed rotation's facts (rotation id, public key,
        rotated-at, mode) as non-secret metadata on the current secret. The mode is the staged
        record's (an emergency's takeover counts even if ``record`` was read before it)."""
        ...

    def take_over(self, loc: SecretLocation, rotation_id: str, emergency_run: str) -> RotationRecord:
        """An emergency takes over the staged rotation ``rotation_id``: its record's mode becomes
        ``emergency``, with ``taken_over_by`` (``emergency_run``, a secret-free name of at most 100
        characters) and ``taken_over_at``, written in the staged record itself, fenced like
        ``stage`` (check-and-set on the staged record). Nothing consumers read changes. Returns the
        record now staged. Already an emergency (staged by one, or taken over before): returns it
        unchanged, the first takeover is kept. ``rotation_id`` not staged: ``StoreConflictError``."""
        ...

    def read_handover(self, loc: SecretLocation) -> HandoverRequest | None:
        """What ``describe(loc).handover`` says, for less: a rotation that holds the entry's lock asks
        before every step and every second it waits. Store trouble raises as ``describe`` does."""
        ...

    def request_handover(self, loc: SecretLocation, request: HandoverRequest) -> None:
        """Write (or refresh) the handover request on the secret's metadata; ``describe`` returns it."""
        ...

    def clear_handover(self, loc: SecretLocation, emergency_run: str) -> None:
        """Remove the handover request if it is ``emergency_run``'s (another one's is left alone)."""
        ...


def parse_time(value: str | None) -> datetime | None:
    """A timestamp a store kept as ISO 8601 text (metadata, tags), or None if absent or unreadable."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
