"""Vault / OpenBao KV v2 secret store (hvac).

Layout of one entry whose location path is ``<path>`` on the KV v2 mount ``<mount>``:

``<path>``
    The secret consumers read: its latest version holds the three fields named by
    ``loc.fields`` (plus any other fields kept there; a rotation carries them over unchanged).
    Every write is fenced with check-and-set, and earlier versions stay retrievable (within
    the mount's or key's ``max_versions``). After a finished rotation its ``custom_metadata``
    carries ``rotation_id``, ``public_key``, ``rotated_at``, ``state`` and ``mode``; other
    custom metadata and the version settings are preserved. Never a secret.

``<path>/rotation-pending``
    Exists only while a rotation is in flight. Its one version holds the staged pair under the
    same field names plus ``_langfuse_rotate_record``, the ``RotationRecord`` as JSON, so one
    read returns pair and record atomically. The record is mirrored into this path's
    ``custom_metadata`` for operators (only the data counts). Consumers never read it. An
    emergency's ``take_over`` writes it again (``cas``-fenced on its version) with the record's mode
    ``emergency``. ``finish`` and ``rollback`` destroy it entirely (``delete_metadata_and_all_versions``).

Policy the rotator's token needs, for ``<mount>/<path>`` and ``<mount>/<path>/rotation-pending``:
``create``/``read``/``update`` on ``<mount>/data/...`` and ``read``/``update``/``delete`` on
``<mount>/metadata/...`` (``devstack.openbao.OpenBaoServer.enable_approle`` writes such a policy).

Where a crashed rotation stopped is derived, not stored: a staging secret means a rotation is
pending; if the main path's current public key is the staged one, it was promoted.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests
from pydantic import ValidationError
from requests.adapters import HTTPAdapter

from connectors import pacing
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
from connectors.vault_auth import TokenKeeper, VaultAuth
from connectors.vault_http import POOL_SIZE, LeanJSONAdapter, VaultRedirectError

__all__ = ["PENDING_SUFFIX", "RECORD_FIELD", "VaultStore"]

PENDING_SUFFIX = "rotation-pending"
"""The staging secret of ``<path>`` lives at ``<path>/rotation-pending``."""

RECORD_FIELD = "_langfuse_rotate_record"
"""Field of the staging secret that holds the ``RotationRecord`` as JSON."""

_HANDOVER = "handover_"
"""Prefix of the handover request's keys in the main path's ``custom_metadata``."""

_T = TypeVar("_T")


@dataclass(frozen=True)
class _Version:
    """One read of a KV v2 path: ``data`` is None when that version is deleted or destroyed.
    ``created_time`` (as Vault reports it) tells this version apart from an earlier one with the same
    number (a path destroyed and written again starts at version 1)."""

    data: dict[str, Any] | None
    version: int
    created_time: str | None = None


@dataclass(frozen=True)
class _Head:
    """The latest version of a path as ``describe`` needs it: no secret."""

    version: int
    exists: bool
    public_key: str | None


@dataclass(frozen=True)
class _Staged:
    record: RotationRecord
    data: dict[str, Any]
    version: int


_KNOWN_VERSIONS = 8192
"""Public keys of versions a store remembers (``VaultStore._head``); the oldest are forgotten first."""

_MOUNT_CONFIG_TTL_S = 60.0
"""How long a store reuses the mount's ``max_versions`` it read for the history check."""


def _refuse_redirects(response: requests.Response, *_: Any, **__: Any) -> None:
    if response.is_redirect or response.is_permanent_redirect or 300 <= response.status_code < 400:
        raise VaultRedirectError(response.status_code)


def _no_redirect_session(*, verify: bool | str) -> requests.Session:
    """A session that never follows a redirect: hvac sends ``X-Vault-Token`` (and the secret being
    written, or an AppRole secret ID) with every request, and a followed 307 re-sends them to
    whatever host its ``Location`` names. Any 3xx answer fails the call instead. Requests go
    through ``LeanJSONAdapter``'s own pool (``connectors.vault_http``, same rule); this session
    serves what that does not (a proxy)."""
    session = requests.Session()
    session.verify = verify  # hvac takes a given session's verify over its own argument
    # One store serves a whole fleet run's threads: keep as many connections as they use at once
    # (requests keeps 10 and closes the rest after each request, so each costs a new connection).
    for scheme in ("http://", "https://"):
        session.mount(scheme, HTTPAdapter(pool_maxsize=POOL_SIZE))
    session.max_redirects = 0
    session.hooks["response"].append(_refuse_redirects)
    return session


class VaultStore:
    """A ``SecretStore`` on a Vault or OpenBao KV v2 mount.

    Authenticates with ``auth`` (``connectors.vault_auth``: a token, a token file, AppRole or a
    JWT; a login happens on first use, and once more when the server answers 403).
    """

    kind = "vault"

    def __init__(
        self,
        url: str,
        *,
        auth: VaultAuth,
        mount: str = "secret",
        namespace: str | None = None,
        timeout_s: float = 10.0,
        verify_tls: bool | str = True,
        ca_cert: str | None = None,
        on_token: Callable[[str], None] | None = None,
    ) -> None:
        """``on_token`` is told each token the store starts using (a login's, a token file's),
        e.g. to register it for log redaction; never called with anything else."""
        self._auth = auth
        if ca_cert is not None and verify_tls is False:
            raise ValueError("Vault ca_cert is given but verify_tls is off")
        self._url = url.rstrip("/")
        self._mount = mount.strip("/")
        self._client = hvac.Client(
            url=self._url,
            namespace=namespace,
            timeout=timeout_s,
            verify=ca_cert if ca_cert is not None else _resolved_verify(verify_tls),
            allow_redirects=False,
            adapter=LeanJSONAdapter,
            session=_pin_environment(
                _no_redirect_session(verify=ca_cert if ca_cert is not None else _resolved_verify(verify_tls)), self._url
            ),
        )
        self._keeper = TokenKeeper(self._client, self._auth, on_token=on_token)
        self._pace_key = pacing.vault_key(self._url)
        # (path, version, created_time, public-key field) -> that version's public key. A KV v2
        # version never changes once written (only deleted or destroyed, which its metadata shows),
        # so one metadata read says whether a version already seen is still the current one.
        self._known: OrderedDict[tuple[str, int, str, str], str | None] = OrderedDict()
        self._known_lock = threading.Lock()
        self._mount_config: tuple[float, Any] | None = None

    def close(self) -> None:
        """Stop renewing the token in the background (also done when the store is collected)."""
        self._keeper.close()

    def __repr__(self) -> str:
        return f"VaultStore(url={self._url!r}, mount={self._mount!r}, auth={self._auth.method!r})"

    # --- SecretStore --------------------------------------------------------------------------

    def location_label(self, loc: SecretLocation) -> str:
        return f"vault:{self._mount}/{_clean(loc.path)}"

    def describe(self, loc: SecretLocation) -> StoreDescription:
        label = self.location_label(loc)
        path = _clean(loc.path)
        meta = self._read_metadata(path, label)
        current = self._head(path, meta, loc, label)
        current_pk = current.public_key if current is not None else None
        staged = self._read_staged(loc, label)
        custom = _custom_metadata(meta)
        return StoreDescription(
            kind=self.kind,
            location=label,
            exists=current is not None and current.exists,
            current_version=current.version if current is not None else None,
            current_public_key=current_pk,
            previous_version=_previous_version(meta, current.version) if current is not None else None,
            pending=staged.record if staged is not None else None,
            pending_promoted=staged is not None
            and current_pk is not None
            and current_pk == staged.record.new_public_key,
            last_rotation_id=custom.get("rotation_id") or None,
            last_rotated_at=parse_time(custom.get("rotated_at")),
            last_mode=custom.get("mode") or None,
            handover=_handover(custom),
        )

    def read_current(self, loc: SecretLocation) -> StoredPair:
        label = self.location_label(loc)
        path = _clean(loc.path)
        current = self._read(path, None, label)
        if current is None or current.data is None:
            raise StoreNotFoundError(f"no current secret at {label}")
        self._remember(path, current, loc)
        return stored_pair(current.data, current.version, loc, label)

    def read_version(self, loc: SecretLocation, version: StoreVersion) -> StoredPair:
        label = self.location_label(loc)
        number = _as_version(version, label)
        found = self._read(_clean(loc.path), number, label)
        if found is None or found.data is None:
            raise StoreNotFoundError(f"{label} has no readable version {number}")
        return stored_pair(found.data, found.version, loc, label)

    def seed(self, loc: SecretLocation, pair: KeyPair, host: str) -> StoreVersion:
        """Create the secret (``cas=0``). Repeating it with the same pair returns its version."""
        label = self.location_label(loc)
        path = _clean(loc.path)
        data = secret_fields(loc, pair, host)
        try:
            return self._write(path, data, 0, label, remember=loc)
        except StoreConflictError:
            current = self._read(path, None, label)
            if (
                current is not None
                and current.data is not None
                and current.data.get(loc.fields.public_key) == pair.public_key
            ):
                return current.version
            raise StoreConflictError(f"{label} already exists; not seeding over it") from None

    def stage(self, loc: SecretLocation, record: RotationRecord, pair: KeyPair, host: str) -> None:
        """Write the new pair and its record to ``<path>/rotation-pending`` (``cas``-fenced).

        The rotation must start from the current version: ``record.old_version`` has to be the
        main path's current version, otherwise ``StoreConflictError`` (no secret yet:
        ``StoreNotFoundError``; seed it first).
        """
        label = self.location_label(loc)
        path = _clean(loc.path)
        staging = _staging_path(path)
        if record.new_public_key != pair.public_key:
            raise ValueError("record.new_public_key does not match the staged pair")

        existing = self._read(staging, None, label)
        staged = _parse_staged(existing)
        if staged is not None:
            self._check_same_rotation(staged, record, label)
            self._mirror_record(staging, staged.record, label)  # as stored: a takeover may have changed it
            return
        if existing is not None and existing.data is not None:
            raise StoreConflictError(
                f"{label}/{PENDING_SUFFIX} holds data that is not a rotation record; remove it by hand"
            )

        current = self._read(path, None, label)
        if current is None or current.data is None:
            raise StoreNotFoundError(f"no current secret at {label} to rotate; seed it first")
        if record.old_version is None or _as_version(record.old_version, label) != current.version:
            raise StoreConflictError(
                f"{label} is at version {current.version}, not {record.old_version} as rotation "
                f"{record.rotation_id} expects"
            )
        self._require_history(path, label)
        data = dict(current.data)
        data.update(secret_fields(loc, pair, host))
        data[RECORD_FIELD] = record.model_dump_json()
        staging_cas = existing.version if existing is not None else 0
        try:
            self._write(staging, data, staging_cas, label)
        except StoreConflictError:
            # Someone staged between our read and write: fine only if it was this very rotation.
            raced = _parse_staged(self._read(staging, None, label))
            if raced is None:
                raise
            self._check_same_rotation(raced, record, label)
        else:
            if existing is None:  # this write created the path: its metadata is the default one
                self._write_custom_metadata(staging, {}, _record_metadata(record), label)
                return
        self._mirror_record(staging, record, label)

    def read_staged(self, loc: SecretLocation) -> tuple[RotationRecord, StoredPair] | None:
        """The staged record and pair; the pair's ``version`` is the staging secret's own version."""
        label = self.location_label(loc)
        staged = self._read_staged(loc, label)
        if staged is None:
            return None
        return staged.record, stored_pair(staged.data, staged.version, loc, label)

    def promote(self, loc: SecretLocation, record: RotationRecord) -> StoreVersion:
        """Write the staged pair as the main path's new version with ``cas=record.old_version``."""
        label = self.location_label(loc)
        path = _clean(loc.path)
        current = self._read(path, None, label)
        if _holds(current, loc, record.new_public_key):
            assert current is not None
            return current.version

        staged = self._read_staged(loc, label)
        if staged is None or staged.record.rotation_id != record.rotation_id:
            raise StoreConflictError(f"rotation {record.rotation_id} is not staged at {label}")
        old = _as_version(record.old_version, label) if record.old_version is not None else None
        if current is None or current.data is None or current.version != old:
            found = current.version if current is not None else "none"
            raise StoreConflictError(
                f"{label} changed after rotation {record.rotation_id} was staged (version {found}, expected {old})"
            )
        data = {key: value for key, value in staged.data.items() if key != RECORD_FIELD}
        try:
            return self._write(path, data, old, label, remember=loc)
        except StoreConflictError:
            again = self._read(path, None, label)
            if _holds(again, loc, record.new_public_key):
                assert again is not None
                return again.version
            raise

    def rollback(self, loc: SecretLocation, record: RotationRecord) -> StoreVersion | None:
        """If the staged pair is current, re-write ``record.old_version``'s data as a new version
        (``cas=<current>``); then destroy the staging secret if it belongs to this rotation."""
        label = self.location_label(loc)
        path = _clean(loc.path)
        current = self._read(path, None, label)
        result: int | None = current.version if current is not None and current.data is not None else None
        if _holds(current, loc, record.new_public_key):
            assert current is not None
            if record.old_version is None:
                raise StoreConflictError(f"rotation {record.rotation_id} at {label} has no old version to restore")
            old_number = _as_version(record.old_version, label)
            old = self._read(path, old_number, label)
            if old is None or old.data is None:
                raise StoreNotFoundError(
                    f"{label} version {old_number} is deleted or pruned; cannot restore the old pair"
                )
            try:
                result = self._write(path, old.data, current.version, label, remember=loc)
            except StoreConflictError:
                again = self._read(path, None, label)
                if _holds(again, loc, record.new_public_key) or again is None or again.data is None:
                    raise
                result = again.version
        staged = self._read_staged(loc, label)
        if staged is not None and staged.record.rotation_id == record.rotation_id:
            self._destroy(_staging_path(path), label)
        return result

    def finish(self, loc: SecretLocation, record: RotationRecord) -> None:
        """Record the rotation in the main path's ``custom_metadata``, then destroy the staging.

        The order makes a crash in between visible: ``describe`` then shows the rotation still
        pending (and promoted), with ``last_rotation_id`` already set; a rerun completes it.
        """
        label = self.location_label(loc)
        path = _clean(loc.path)
        meta = self._read_metadata(path, label)
        if meta is None:
            raise StoreNotFoundError(f"no secret at {label}")
        staged = self._read_staged(loc, label)
        ours = staged is not None and staged.record.rotation_id == record.rotation_id
        custom = _custom_metadata(meta)
        if custom.get("rotation_id") != record.rotation_id:
            current = self._head(path, meta, loc, label)
            if current is None or not current.exists or current.public_key != record.new_public_key:
                raise StoreConflictError(f"rotation {record.rotation_id} is not current at {label}; promote it first")
            custom.update(
                rotation_id=record.rotation_id,
                public_key=record.new_public_key,
                rotated_at=datetime.now(UTC).isoformat(),
                state="rotated",
                mode=staged.record.mode if staged is not None and ours else record.mode,
            )
            self._write_custom_metadata(path, meta, custom, label)
        if ours:
            self._destroy(_staging_path(path), label)

    def take_over(self, loc: SecretLocation, rotation_id: str, emergency_run: str) -> RotationRecord:
        """Write the staged secret again with the record's mode ``emergency`` (``cas`` on the
        staging secret's version, so a concurrent change of the staging fails it), then mirror
        the record into the staging path's metadata for operators (best effort)."""
        label = self.location_label(loc)
        staging = _staging_path(_clean(loc.path))
        staged = _parse_staged(self._read(staging, None, label))
        if staged is None or staged.record.rotation_id != rotation_id:
            raise StoreConflictError(f"rotation {rotation_id} is not staged at {label}")
        if staged.record.mode == "emergency":
            return staged.record
        record = staged.record.model_copy(
            update={"mode": "emergency", "taken_over_by": emergency_run[:100], "taken_over_at": datetime.now(UTC)}
        )
        data = dict(staged.data)
        data[RECORD_FIELD] = record.model_dump_json()
        try:
            self._write(staging, data, staged.version, label)
        except StoreConflictError:
            raced = _parse_staged(self._read(staging, None, label))
            if raced is None or raced.record.rotation_id != rotation_id or raced.record.mode != "emergency":
                raise
            return raced.record  # another emergency took it over first: its takeover stands
        with contextlib.suppress(StoreError):
            self._mirror_record(staging, record, label)
        return record

    def read_handover(self, loc: SecretLocation) -> HandoverRequest | None:
        """``describe(loc).handover`` for one metadata read."""
        label = self.location_label(loc)
        return _handover(_custom_metadata(self._read_metadata(_clean(loc.path), label)))

    def request_handover(self, loc: SecretLocation, request: HandoverRequest) -> None:
        """Put the request in the main path's ``custom_metadata`` (``handover_*`` keys); the
        other keys and the version settings are kept."""
        label = self.location_label(loc)
        path = _clean(loc.path)
        meta = self._read_metadata(path, label)
        if meta is None:
            raise StoreNotFoundError(f"no secret at {label}")
        custom = {k: v for k, v in _custom_metadata(meta).items() if not k.startswith(_HANDOVER)}
        values = json.loads(request.model_dump_json())
        custom.update({f"{_HANDOVER}{k}": str(v)[:512] for k, v in values.items() if v not in (None, "")})
        self._write_custom_metadata(path, meta, custom, label)

    def clear_handover(self, loc: SecretLocation, emergency_run: str) -> None:
        label = self.location_label(loc)
        path = _clean(loc.path)
        meta = self._read_metadata(path, label)
        custom = _custom_metadata(meta)
        if meta is None or custom.get(f"{_HANDOVER}emergency_run") != emergency_run[:512]:
            return
        kept = {k: v for k, v in custom.items() if not k.startswith(_HANDOVER)}
        self._write_custom_metadata(path, meta, kept, label)

    # --- internals ----------------------------------------------------------------------------

    def _check_same_rotation(self, staged: _Staged, record: RotationRecord, label: str) -> None:
        if staged.record.rotation_id != record.rotation_id:
            raise StoreConflictError(f"{label} already has rotation {staged.record.rotation_id} staged")
        if staged.record.new_public_key != record.new_public_key:
            raise StoreConflictError(f"rotation {record.rotation_id} is staged at {label} with a different public key")

    def _require_history(self, path: str, label: str) -> None:
        """Refuse when only one version is kept: promotion would prune the old pair that rollback
        and revocation checks need. Vault keeps the larger of the key's and the mount's limit
        (0 = unset; both unset = 10). The mount's is read if the token may; if not, a key limit
        of 1 is refused (conservatively)."""
        key_limit = _dig(self._read_metadata(path, label), "max_versions")
        mount_limit = self._mount_max_versions(label)
        limits = [limit for limit in (key_limit, mount_limit) if isinstance(limit, int) and limit > 0]
        if limits and max(limits) == 1:
            raise StoreRefusedError(
                f"{label} keeps only 1 version (max_versions), so promotion would destroy the old pair; "
                "set max_versions to at least 2"
            )

    def _mount_max_versions(self, label: str) -> Any:
        """The mount's ``max_versions`` (None if the token may not read it), read at most once a
        minute: a fleet run stages hundreds of entries on the same mount."""
        cached = self._mount_config
        if cached is not None and time.monotonic() - cached[0] < _MOUNT_CONFIG_TTL_S:
            return cached[1]
        try:
            mount_config = self._call(
                f"read config of {self._mount}",
                label,
                lambda: self._client.secrets.kv.v2.read_configuration(mount_point=self._mount),
            )
            limit = _dig(mount_config, "data", "max_versions")
        except StoreAccessDeniedError:
            limit = None
        self._mount_config = (time.monotonic(), limit)
        return limit

    def _head(self, path: str, meta: dict[str, Any] | None, loc: SecretLocation, label: str) -> _Head | None:
        """The latest version of ``path`` whose metadata ``meta`` is (None: the path does not exist).
        A version this store already read or wrote is known from ``meta`` alone; any other, or one
        that is deleted, destroyed or due for deletion, is read."""
        if meta is None:
            return None
        number = meta.get("current_version")
        info = _dig(meta, "versions", str(number))
        created = info.get("created_time") if isinstance(info, dict) else None
        if (
            isinstance(number, int)
            and isinstance(info, dict)
            and isinstance(created, str)
            and created
            and not info.get("destroyed")
            and not info.get("deletion_time")
        ):
            with self._known_lock:
                key = (path, number, created, loc.fields.public_key)
                if key in self._known:
                    return _Head(version=number, exists=True, public_key=self._known[key])
        current = self._read(path, None, label)
        if current is None:
            return None
        self._remember(path, current, loc)
        value = current.data.get(loc.fields.public_key) if current.data is not None else None
        return _Head(
            version=current.version,
            exists=current.data is not None,
            public_key=value if isinstance(value, str) else None,
        )

    def _remember(self, path: str, found: _Version, loc: SecretLocation) -> None:
        """Note the public key of a version just read or written (never anything secret)."""
        if found.data is None or not found.created_time:
            return
        value = found.data.get(loc.fields.public_key)
        with self._known_lock:
            self._known[(path, found.version, found.created_time, loc.fields.public_key)] = (
                value if isinstance(value, str) else None
            )
            while len(self._known) > _KNOWN_VERSIONS:
                self._known.popitem(last=False)

    def _read_staged(self, loc: SecretLocation, label: str) -> _Staged | None:
        return _parse_staged(self._read(_staging_path(_clean(loc.path)), None, label))

    def _read(self, path: str, version: int | None, label: str) -> _Version | None:
        """A version (latest if None); None if the path does not exist."""

        def call() -> _Version | None:
            try:
                response = self._client.secrets.kv.v2.read_secret_version(
                    path=path, version=version, raise_on_deleted_version=True, mount_point=self._mount
                )
            except hvac.exceptions.InvalidPath as exc:
                # Deleted or destroyed versions come back as 404 with their metadata in the body.
                metadata = _dig(exc.json, "data", "metadata")
                if isinstance(metadata, dict) and isinstance(metadata.get("version"), int):
                    return _Version(data=None, version=metadata["version"])
                if exc.errors:
                    raise
                return None
            data = _dig(response, "data", "data")
            number = _dig(response, "data", "metadata", "version")
            created = _dig(response, "data", "metadata", "created_time")
            if not isinstance(number, int):
                raise StoreError(f"Vault returned a malformed KV v2 response for {label}")
            return _Version(
                data=data if isinstance(data, dict) else None,
                version=number,
                created_time=created if isinstance(created, str) else None,
            )

        return self._call(f"read {label}", label, call)

    def _read_metadata(self, path: str, label: str) -> dict[str, Any] | None:
        def call() -> dict[str, Any] | None:
            try:
                response = self._client.secrets.kv.v2.read_secret_metadata(path=path, mount_point=self._mount)
            except hvac.exceptions.InvalidPath as exc:
                if exc.errors:
                    raise
                return None
            data = _dig(response, "data")
            return data if isinstance(data, dict) else None

        return self._call(f"read metadata of {label}", label, call)

    def _write(
        self, path: str, data: dict[str, Any], cas: int, label: str, *, remember: SecretLocation | None = None
    ) -> int:
        """Write a new version (check-and-set ``cas``); ``remember``: note its public key (``_head``)."""

        def call() -> _Version:
            response = self._client.secrets.kv.v2.create_or_update_secret(
                path=path, secret=data, cas=cas, mount_point=self._mount
            )
            number = _dig(response, "data", "version")
            created = _dig(response, "data", "created_time")
            if not isinstance(number, int):
                raise StoreError(f"Vault returned a malformed KV v2 write response for {label}")
            return _Version(data=data, version=number, created_time=created if isinstance(created, str) else None)

        written = self._call(f"write {label}", label, call)
        if remember is not None:
            self._remember(path, written, remember)
        return written.version

    def _write_custom_metadata(self, path: str, meta: dict[str, Any], custom: dict[str, str], label: str) -> None:
        # hvac resets delete_version_after unless it is passed: carry every setting over.
        max_versions = meta.get("max_versions")
        cas_required = meta.get("cas_required")
        delete_after = meta.get("delete_version_after")
        self._call(
            f"update metadata of {label}",
            label,
            lambda: self._client.secrets.kv.v2.update_metadata(
                path=path,
                max_versions=max_versions if isinstance(max_versions, int) else None,
                cas_required=cas_required if isinstance(cas_required, bool) else None,
                delete_version_after=delete_after if isinstance(delete_after, str) else "0s",
                custom_metadata=custom,
                mount_point=self._mount,
            ),
        )

    def _mirror_record(self, staging: str, record: RotationRecord, label: str) -> None:
        """Show the pending record in the staging secret's custom_metadata (visibility only)."""
        meta = self._read_metadata(staging, label)
        if meta is None:
            return
        wanted = _record_metadata(record)
        if _custom_metadata(meta) == wanted:
            return
        self._write_custom_metadata(staging, meta, wanted, label)

    def _destroy(self, path: str, label: str) -> None:
        self._call(
            f"remove staging of {label}",
            label,
            lambda: self._client.secrets.kv.v2.delete_metadata_and_all_versions(path=path, mount_point=self._mount),
        )

    def _call(self, action: str, label: str, fn: Callable[[], _T]) -> _T:
        """Run one request with a valid token; map errors. After a 403, get a fresh token once
        (log in again, or re-read the token file) and repeat the request. Writes wait on a fleet
        run's write gate (``connectors.pacing``)."""
        pacing.before_request(self._pace_key, paced=action.startswith(_WRITE_ACTIONS))
        try:
            self._keeper.ensure()
            try:
                return fn()
            except hvac.exceptions.Forbidden:
                if not self._keeper.recover():
                    raise
                return fn()
        except (hvac.exceptions.VaultError, requests.exceptions.RequestException) as exc:
            raise _translate(exc, action, label, self._url) from None


# --- helpers --------------------------------------------------------------------------------------


def _pin_environment(session: requests.Session, url: str) -> requests.Session:
    """Read the proxy settings from the environment once, not per request.

    requests otherwise scans ``os.environ`` for proxies on every request (~0.5 ms each with a large
    environment: a third of a fleet entry's CPU). Same proxies, same ``NO_PROXY`` verdict for this
    server; the CA bundle variables are honoured by ``_resolved_verify``.
    """
    session.proxies.update(requests.utils.get_environ_proxies(url))
    session.trust_env = False
    return session


def _resolved_verify(verify_tls: bool | str) -> bool | str:
    """``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` as requests applies them when ``verify`` is True."""
    if verify_tls is True:
        return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    return verify_tls


_WRITE_ACTIONS = ("write ", "update metadata ", "remove staging ")


def _translate(exc: Exception, action: str, label: str, url: str) -> StoreError:
    """One secret-free line per failure. hvac's own ``str()`` carries request URLs; not used."""
    errors = getattr(exc, "errors", None)
    detail = "; ".join(str(e) for e in errors)[:200] if isinstance(errors, list) and errors else ""
    if isinstance(exc, hvac.exceptions.VaultDown):
        if "sealed" in detail.lower():
            return StoreUnavailableError(f"Vault at {url} is sealed")
        return StoreUnavailableError(f"Vault at {url} is unavailable (503) during {action}")
    if isinstance(exc, hvac.exceptions.Forbidden | hvac.exceptions.Unauthorized):
        return StoreAccessDeniedError(f"Vault denied {action}: permission denied")
    if isinstance(exc, hvac.exceptions.InvalidRequest):
        if "check-and-set" in detail:
            return StoreConflictError(f"{label} was changed concurrently (check-and-set failed)")
        return StoreError(f"Vault rejected {action}: {detail or 'invalid request'}")
    if isinstance(exc, hvac.exceptions.InvalidPath):
        if detail:
            return StoreNotFoundError(f"Vault has no such path for {action} (check mount '{label}'): {detail}")
        return StoreNotFoundError(f"nothing found at {label}")
    if isinstance(
        exc,
        hvac.exceptions.RateLimitExceeded
        | hvac.exceptions.InternalServerError
        | hvac.exceptions.BadGateway
        | hvac.exceptions.VaultNotInitialized,
    ):
        return StoreUnavailableError(f"Vault at {url} failed during {action}: {type(exc).__name__}")
    if isinstance(exc, VaultRedirectError):
        return StoreError(
            f"Vault at {url} answered {action} with a redirect (HTTP {exc.status}); redirects are never "
            "followed because they would carry the token elsewhere: configure the address Vault serves on"
        )
    if isinstance(exc, requests.exceptions.SSLError):
        return StoreUnavailableError(f"Vault at {url}: TLS handshake failed")
    if isinstance(exc, requests.exceptions.Timeout):
        return StoreUnavailableError(f"Vault at {url} timed out during {action}")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return StoreUnavailableError(f"Vault at {url} is unreachable")
    return StoreError(f"Vault error during {action}: {type(exc).__name__}")


def _clean(path: str) -> str:
    cleaned = path.strip("/")
    if not cleaned:
        raise ValueError("secret path is empty")
    return cleaned


def _staging_path(path: str) -> str:
    return f"{path}/{PENDING_SUFFIX}"


def _dig(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _as_version(version: StoreVersion, label: str) -> int:
    if isinstance(version, int):
        return version
    if version.isdigit():
        return int(version)
    raise StoreError(f"{label}: '{version}' is not a Vault KV version number")


def _holds(found: _Version | None, loc: SecretLocation, public_key: str) -> bool:
    return found is not None and found.data is not None and found.data.get(loc.fields.public_key) == public_key


def _parse_staged(found: _Version | None) -> _Staged | None:
    if found is None or found.data is None:
        return None
    raw = found.data.get(RECORD_FIELD)
    if not isinstance(raw, str):
        return None
    try:
        record = RotationRecord.model_validate_json(raw)
    except ValidationError:
        return None
    return _Staged(record=record, data=found.data, version=found.version)


def _custom_metadata(meta: dict[str, Any] | None) -> dict[str, str]:
    custom = meta.get("custom_metadata") if meta is not None else None
    if not isinstance(custom, dict):
        return {}
    return {str(key): str(value) for key, value in custom.items()}


def _record_metadata(record: RotationRecord) -> dict[str, str]:
    # Vault requires 0 < len(value) <= 512: absent fields are left out, long ones truncated.
    values = json.loads(record.model_dump_json())
    return {key: str(value)[:512] for key, value in values.items() if value not in (None, "")}


def _previous_version(meta: dict[str, Any] | None, current: int) -> int | None:
    versions = meta.get("versions") if meta is not None else None
    if not isinstance(versions, dict):
        return None
    readable = [
        int(number)
        for number, info in versions.items()
        if str(number).isdigit()
        and int(number) < current
        and isinstance(info, dict)
        and not info.get("destroyed")
        and not info.get("deletion_time")
    ]
    return max(readable) if readable else None


def _handover(custom: dict[str, str]) -> HandoverRequest | None:
    values = {k.removeprefix(_HANDOVER): v for k, v in custom.items() if k.startswith(_HANDOVER)}
    if not values:
        return None
    try:
        return HandoverRequest.model_validate(values)
    except ValidationError:
        return None
