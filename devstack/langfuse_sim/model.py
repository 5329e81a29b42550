"""Data model of the simulated Langfuse database: organization, projects and API keys."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def iso_ms(ts: float) -> str:
    """Format like JS `Date.toISOString()`: millisecond precision, trailing `Z`.

    Rounded to the nearest millisecond, so a stored `x.123` (not exact in binary) stays `.123`."""
    millis = round(ts * 1000)
    dt = datetime.fromtimestamp(millis // 1000, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis % 1000:03d}Z"


def iso_to_ts(value: str) -> float:
    """Parse an ISO-8601 timestamp (with `Z` or an offset) to epoch seconds."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def new_cuid() -> str:
    """A cuid-like id (25 lowercase base-36 chars, starting with `c`), as Prisma generates."""
    millis = int(time.time() * 1000)
    stamp = ""
    while millis:
        millis, rem = divmod(millis, 36)
        stamp = _B36[rem] + stamp
    tail = "".join(secrets.choice(_B36) for _ in range(24 - len(stamp)))
    return "c" + stamp + tail


def generate_key_pair() -> tuple[str, str]:
    """`pk-lf-<uuid4>` / `sk-lf-<uuid4>` exactly like `generateKeySet`."""
    return f"pk-lf-{uuid.uuid4()}", f"sk-lf-{uuid.uuid4()}"


def hash_secret(secret: str, salt: str) -> str:
    """`fastHashedSecretKey = sha256(secret ‖ hex(sha256(SALT)))`."""
    salt_hex = hashlib.sha256(salt.encode()).hexdigest()
    return hashlib.sha256((secret + salt_hex).encode()).hexdigest()


def display_secret(secret: str) -> str:
    """`sk.slice(0,6) + "..." + sk.slice(-4)` (`getDisplaySecretKey`)."""
    return secret[:6] + "..." + secret[-4:]


@dataclass
class ApiKey:
    """One `ApiKey` row. `lastUsedAt`/`expiresAt` are never written by the real server, so not stored."""

    id: str
    public_key: str
    secret_hash: str
    display_secret_key: str
    scope: str  # "PROJECT" | "ORGANIZATION"
    org_id: str
    project_id: str | None
    note: str | None
    created_at: float
    created_by_api_key_id: str | None = None

    def summary(self) -> dict[str, Any]:
        """`ApiKeySummary` as the server selects it: all optional fields present, usually null."""
        return {
            "id": self.id,
            "createdAt": iso_ms(self.created_at),
            "expiresAt": None,
            "lastUsedAt": None,
            "note": self.note,
            "publicKey": self.public_key,
            "displaySecretKey": self.display_secret_key,
        }

    def control_view(self) -> dict[str, Any]:
        """The `/_sim/keys` view: everything except any secret material (not even the hash)."""
        return {
            "id": self.id,
            "scope": self.scope,
            "projectId": self.project_id,
            "orgId": self.org_id,
            "publicKey": self.public_key,
            "displaySecretKey": self.display_secret_key,
            "note": self.note,
            "createdAt": iso_ms(self.created_at),
            "createdByApiKeyId": self.created_by_api_key_id,
        }

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ApiKey:
        return cls(**data)


@dataclass
class Project:
    id: str
    name: str
    org_id: str
    created_at: float
    updated_at: float
    metadata: dict[str, Any] = field(default_factory=dict)
    retention_days: int | None = None
    deleted_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Project:
        return cls(**data)


@dataclass
class Organization:
    id: str
    name: str


ROLES = ("OWNER", "ADMIN", "MEMBER", "VIEWER", "NONE")
"""Prisma's `Role` enum, which the membership routes validate against (the OpenAPI doc omits `NONE`)."""


@dataclass
class User:
    """A Langfuse user (created through the UI or SCIM on a real server; `/_sim/users` here)."""

    id: str
    email: str
    name: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
