"""Test doubles shared by several test modules."""

from __future__ import annotations

from datetime import UTC, datetime

from connectors.errors import StoreConflictError, StoreNotFoundError
from connectors.keypair import KeyPair
from connectors.store import (
    HandoverRequest,
    RotationRecord,
    SecretLocation,
    StoreDescription,
    StoredPair,
    StoreVersion,
    secret_fields,
    stored_pair,
)


class FakeClock:
    """A monotonic clock that moves only when the code under test sleeps, so waits and
    backoff can be asserted exactly and tests never really sleep."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class MemoryStore:
    """A ``SecretStore`` (connectors.store) held in memory, for fast unit tests of the steps.

    It keeps the protocol's promises the real stores keep (tests/connectors/test_store_contract.py): versions
    are kept, staging is invisible to ``read_current``, promotion is fenced on the record's old
    version, and every call repeated after itself changes nothing. ``calls`` lists the writing
    calls made (``stage``, ``promote``, ...), so a test can assert a step wrote nothing.
    """

    kind = "memory"

    def __init__(self) -> None:
        self._versions: dict[str, list[dict[str, str]]] = {}
        self._staged: dict[str, tuple[RotationRecord, dict[str, str]]] = {}
        self._facts: dict[str, dict[str, str]] = {}
        self._handover: dict[str, HandoverRequest] = {}
        self.calls: list[str] = []

    def location_label(self, loc: SecretLocation) -> str:
        return f"memory:{loc.path}"

    def describe(self, loc: SecretLocation) -> StoreDescription:
        versions = self._versions.get(loc.path, [])
        current = versions[-1] if versions else None
        current_pk = current.get(loc.fields.public_key) if current is not None else None
        staged = self._staged.get(loc.path)
        facts = self._facts.get(loc.path, {})
        rotated_at = facts.get("rotated_at")
        return StoreDescription(
            kind=self.kind,
            location=self.location_label(loc),
            exists=current is not None,
            current_version=len(versions) or None,
            current_public_key=current_pk,
            previous_version=len(versions) - 1 if len(versions) > 1 else None,
            pending=staged[0] if staged is not None else None,
            pending_promoted=staged is not None and current_pk == staged[0].new_public_key,
            last_rotation_id=facts.get("rotation_id"),
            last_rotated_at=datetime.fromisoformat(rotated_at) if rotated_at else None,
            last_mode=facts.get("mode"),
            handover=self._handover.get(loc.path),
        )

    def read_current(self, loc: SecretLocation) -> StoredPair:
        versions = self._versions.get(loc.path)
        if not versions:
            raise StoreNotFoundError(f"no current secret at {self.location_label(loc)}")
        return stored_pair(versions[-1], len(versions), loc, self.location_label(loc))

    def read_version(self, loc: SecretLocation, version: StoreVersion) -> StoredPair:
        versions = self._versions.get(loc.path, [])
        if not isinstance(version, int) or not 1 <= version <= len(versions):
            raise StoreNotFoundError(f"{self.location_label(loc)} has no version {version}")
        return stored_pair(versions[version - 1], version, loc, self.location_label(loc))

    def seed(self, loc: SecretLocation, pair: KeyPair, host: str) -> StoreVersion:
        versions = self._versions.setdefault(loc.path, [])
        if versions:
            if versions[-1].get(loc.fields.public_key) == pair.public_key:
                return len(versions)
            raise StoreConflictError(f"{self.location_label(loc)} already exists; not seeding over it")
        self.calls.append("seed")
        versions.append(secret_fields(loc, pair, host))
        return 1

    def stage(self, loc: SecretLocation, record: RotationRecord, pair: KeyPair, host: str) -> None:
        staged = self._staged.get(loc.path)
        if staged is not None:
            if staged[0].rotation_id != record.rotation_id or staged[0].new_public_key != record.new_public_key:
                raise StoreConflictError(f"{self.location_label(loc)} already has rotation {staged[0].rotation_id}")
            return
        versions = self._versions.get(loc.path)
        if not versions:
            raise StoreNotFoundError(f"no current secret at {self.location_label(loc)} to rotate; seed it first")
        if record.old_version != len(versions):
            raise StoreConflictError(f"{self.location_label(loc)} is at version {len(versions)}")
        self.calls.append("stage")
        self._staged[loc.path] = (record, {**versions[-1], **secret_fields(loc, pair, host)})

    def read_staged(self, loc: SecretLocation) -> tuple[RotationRecord, StoredPair] | None:
        staged = self._staged.get(loc.path)
        if staged is None:
            return None
        return staged[0], stored_pair(staged[1], 0, loc, self.location_label(loc))

    def promote(self, loc: SecretLocation, record: RotationRecord) -> StoreVersion:
        versions = self._versions.get(loc.path, [])
        if versions and versions[-1].get(loc.fields.public_key) == record.new_public_key:
            return len(versions)
        staged = self._staged.get(loc.path)
        if staged is None or staged[0].rotation_id != record.rotation_id:
            raise StoreConflictError(f"rotation {record.rotation_id} is not staged at {self.location_label(loc)}")
        if record.old_version != len(versions):
            raise StoreConflictError(f"{self.location_label(loc)} changed after rotation {record.rotation_id}")
        self.calls.append("promote")
        versions.append(dict(staged[1]))
        return len(versions)

    def rollback(self, loc: SecretLocation, record: RotationRecord) -> StoreVersion | None:
        versions = self._versions.get(loc.path, [])
        if versions and versions[-1].get(loc.fields.public_key) == record.new_public_key:
            if not isinstance(record.old_version, int):
                raise StoreConflictError(f"rotation {record.rotation_id} has no old version to restore")
            self.calls.append("rollback")
            versions.append(dict(versions[record.old_version - 1]))
        staged = self._staged.get(loc.path)
        if staged is not None and staged[0].rotation_id == record.rotation_id:
            self.calls.append("clear_staging")
            del self._staged[loc.path]
        return len(versions) or None

    def finish(self, loc: SecretLocation, record: RotationRecord) -> None:
        versions = self._versions.get(loc.path)
        if not versions:
            raise StoreNotFoundError(f"no secret at {self.location_label(loc)}")
        facts = self._facts.setdefault(loc.path, {})
        staged = self._staged.get(loc.path)
        stored = staged[0] if staged is not None and staged[0].rotation_id == record.rotation_id else record
        if facts.get("rotation_id") != record.rotation_id:
            if versions[-1].get(loc.fields.public_key) != record.new_public_key:
                raise StoreConflictError(f"rotation {record.rotation_id} is not current; promote it first")
            self.calls.append("finish")
            facts.update(rotation_id=record.rotation_id, rotated_at=datetime.now(UTC).isoformat(), mode=stored.mode)
        if staged is not None and staged[0].rotation_id == record.rotation_id:
            self.calls.append("clear_staging")
            del self._staged[loc.path]

    def take_over(self, loc: SecretLocation, rotation_id: str, emergency_run: str) -> RotationRecord:
        staged = self._staged.get(loc.path)
        if staged is None or staged[0].rotation_id != rotation_id:
            raise StoreConflictError(f"rotation {rotation_id} is not staged at {self.location_label(loc)}")
        if staged[0].mode == "emergency":
            return staged[0]
        self.calls.append("take_over")
        record = staged[0].model_copy(
            update={"mode": "emergency", "taken_over_by": emergency_run[:100], "taken_over_at": datetime.now(UTC)}
        )
        self._staged[loc.path] = (record, staged[1])
        return record

    def read_handover(self, loc: SecretLocation) -> HandoverRequest | None:
        return self._handover.get(loc.path)

    def request_handover(self, loc: SecretLocation, request: HandoverRequest) -> None:
        if not self._versions.get(loc.path):
            raise StoreNotFoundError(f"no secret at {self.location_label(loc)}")
        self._handover[loc.path] = request

    def clear_handover(self, loc: SecretLocation, emergency_run: str) -> None:
        request = self._handover.get(loc.path)
        if request is not None and request.emergency_run == emergency_run:
            del self._handover[loc.path]

    def external_write(self, loc: SecretLocation, data: dict[str, str]) -> StoreVersion:
        """Another writer changing the secret (as ``StoreUnderTest.external_write``)."""
        versions = self._versions.setdefault(loc.path, [])
        versions.append(dict(data))
        return len(versions)

    def external_metadata(self, loc: SecretLocation, values: dict[str, str]) -> None:
        """Rotation facts written behind the store's back (``StoreUnderTest.external_metadata``;
        the keys as in Vault's ``custom_metadata``: ``rotated_at``, ``rotation_id``, ``mode``)."""
        self._facts.setdefault(loc.path, {}).update(values)

    def external_read(self, loc: SecretLocation) -> dict[str, str]:
        """Every field of the current secret, as a consumer reads it (``StoreUnderTest.external_read``)."""
        return dict(self._versions[loc.path][-1])
