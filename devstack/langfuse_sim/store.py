"""The simulated Postgres: org, projects and API-key rows, plus JSON persistence.

Persistence (`--state FILE`) stores only secret *hashes*. The secrets of the bootstrap keys live in a
separate file next to it (`<stem>.bootstrap.json`, mode 0600) so that a restarted simulator can print
them in its bootstrap line again; delete that file and the simulator still starts, printing `null`
for every secret it no longer knows.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.langfuse_sim.model import (
    ApiKey,
    Organization,
    Project,
    User,
    display_secret,
    generate_key_pair,
    hash_secret,
    new_cuid,
)


@dataclass
class Store:
    org: Organization
    salt: str
    projects: dict[str, Project] = field(default_factory=dict)
    keys: dict[str, ApiKey] = field(default_factory=dict)
    users: dict[str, User] = field(default_factory=dict)
    #: user id -> role in the organization
    org_members: dict[str, str] = field(default_factory=dict)
    #: project id -> user id -> role in that project (only org members may have one)
    project_members: dict[str, dict[str, str]] = field(default_factory=dict)

    # -- lookups ---------------------------------------------------------------------------------
    def key_by_hash(self, secret_hash: str) -> ApiKey | None:
        return next((k for k in self.keys.values() if k.secret_hash == secret_hash), None)

    def key_by_public(self, public_key: str) -> ApiKey | None:
        return next((k for k in self.keys.values() if k.public_key == public_key), None)

    def project_keys(self, project_id: str) -> list[ApiKey]:
        """`where {projectId, scope: PROJECT}` ordered by `createdAt asc` (insertion order breaks ties)."""
        found = [k for k in self.keys.values() if k.project_id == project_id and k.scope == "PROJECT"]
        return sorted(found, key=lambda k: k.created_at)

    def org_keys(self) -> list[ApiKey]:
        found = [k for k in self.keys.values() if k.scope == "ORGANIZATION"]
        return sorted(found, key=lambda k: k.created_at)

    def live_projects(self) -> list[Project]:
        live = [p for p in self.projects.values() if p.deleted_at is None]
        return sorted(live, key=lambda p: p.created_at)

    # -- mutations ---------------------------------------------------------------------------------
    def add_key(
        self,
        *,
        scope: str,
        project_id: str | None,
        note: str | None,
        public_key: str,
        secret_key: str,
        created_by: str | None = None,
    ) -> ApiKey:
        key = ApiKey(
            id=new_cuid(),
            public_key=public_key,
            secret_hash=hash_secret(secret_key, self.salt),
            display_secret_key=display_secret(secret_key),
            scope=scope,
            org_id=self.org.id,
            project_id=project_id,
            note=note,
            created_at=time.time(),
            created_by_api_key_id=created_by,
        )
        self.keys[key.id] = key
        return key

    def add_project(self, name: str, metadata: dict[str, Any], retention: int | None) -> Project:
        now = time.time()
        project = Project(
            id=new_cuid(),
            name=name,
            org_id=self.org.id,
            created_at=now,
            updated_at=now,
            metadata=metadata,
            retention_days=retention,
        )
        self.projects[project.id] = project
        return project

    def add_user(self, email: str, name: str) -> User:
        user = User(id=new_cuid(), email=email, name=name)
        self.users[user.id] = user
        return user

    def remove_org_member(self, user_id: str) -> None:
        """Prisma cascades: a user's project memberships go with the organization membership."""
        self.org_members.pop(user_id, None)
        for members in self.project_members.values():
            members.pop(user_id, None)

    # -- serialisation -----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "org": {"id": self.org.id, "name": self.org.name},
            "salt": self.salt,
            "projects": [p.to_json() for p in self.projects.values()],
            "keys": [k.to_json() for k in self.keys.values()],
            "users": [u.to_json() for u in self.users.values()],
            "org_members": dict(self.org_members),
            "project_members": {pid: dict(members) for pid, members in self.project_members.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Store:
        store = cls(org=Organization(**data["org"]), salt=data["salt"])
        for raw in data["projects"]:
            project = Project.from_json(raw)
            store.projects[project.id] = project
        for raw in data["keys"]:
            key = ApiKey.from_json(raw)
            store.keys[key.id] = key
        for raw in data.get("users", []):  # state files written before memberships have none
            user = User(**raw)
            store.users[user.id] = user
        store.org_members = dict(data.get("org_members", {}))
        store.project_members = {pid: dict(m) for pid, m in data.get("project_members", {}).items()}
        return store

    def clone(self) -> Store:
        return copy.deepcopy(self)


@dataclass
class Bootstrap:
    """The initial state and the secrets of its keys (key id → secret), kept for `/_sim/reset`."""

    store: Store
    secrets: dict[str, str]

    def describe(self, current: Store, url: str, admin_api_key: str | None) -> dict[str, Any]:
        """The one-line bootstrap JSON, for the *current* store.

        A bootstrap key that still exists is printed with its secret. If it was deleted (rotated), the
        oldest remaining key of that project/org is printed with `secret_key: null`: the simulator never
        knew that secret in clear.
        """
        org_key, org_secret = self._pick(current.org_keys())
        projects = []
        for project in current.live_projects():
            key, secret = self._pick(current.project_keys(project.id))
            projects.append(
                {
                    "id": project.id,
                    "name": project.name,
                    "public_key": key.public_key if key else None,
                    "secret_key": secret,
                }
            )
        return {
            "url": url,
            "org_public_key": org_key.public_key if org_key else None,
            "org_secret_key": org_secret,
            "org_id": current.org.id,
            "admin_api_key": admin_api_key,
            "projects": projects,
        }

    def _pick(self, keys: list[ApiKey]) -> tuple[ApiKey | None, str | None]:
        for key in keys:
            secret = self.secrets.get(key.id)
            if secret is not None and hash_secret(secret, self.store.salt) == key.secret_hash:
                return key, secret
        return (keys[0], None) if keys else (None, None)

    def to_json(self) -> dict[str, Any]:
        return {"store": self.store.to_json(), "secrets": self.secrets}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Bootstrap:
        return cls(store=Store.from_json(data["store"]), secrets=dict(data["secrets"]))


def generate_bootstrap(n_projects: int) -> Bootstrap:
    """One organization with one org key, and `n_projects` projects with one project key each."""
    store = Store(org=Organization(id=new_cuid(), name="Simulated Organization"), salt=secrets.token_hex(16))
    known: dict[str, str] = {}
    pk, sk = generate_key_pair()
    org_key = store.add_key(
        scope="ORGANIZATION", project_id=None, note="bootstrap org key", public_key=pk, secret_key=sk
    )
    known[org_key.id] = sk
    for index in range(1, n_projects + 1):
        project = store.add_project(f"sim-project-{index}", {}, None)
        pk, sk = generate_key_pair()
        key = store.add_key(scope="PROJECT", project_id=project.id, note="bootstrap key", public_key=pk, secret_key=sk)
        known[key.id] = sk
    return Bootstrap(store=store, secrets=known)


def bootstrap_path(state_file: Path) -> Path:
    """`state.json` → `state.bootstrap.json` (same directory)."""
    return state_file.with_name(state_file.stem + ".bootstrap.json")


def write_json_atomic(path: Path, data: dict[str, Any], private: bool = False) -> None:
    """Write via a temp file + `os.replace`, so a crash never leaves a half-written state file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        if private:
            os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_or_create(state_file: Path | None, n_projects: int) -> tuple[Store, Bootstrap]:
    """Return (current store, bootstrap). Without a state file everything is fresh and in memory."""
    if state_file is None:
        boot = generate_bootstrap(n_projects)
        return boot.store.clone(), boot
    boot_file = bootstrap_path(state_file)
    if state_file.exists():
        store = Store.from_json(json.loads(state_file.read_text()))
        if boot_file.exists():
            boot = Bootstrap.from_json(json.loads(boot_file.read_text()))
        else:
            boot = Bootstrap(store=store.clone(), secrets={})
        return store, boot
    boot = generate_bootstrap(n_projects)
    write_json_atomic(boot_file, boot.to_json(), private=True)
    store = boot.store.clone()
    write_json_atomic(state_file, store.to_json())
    return store, boot
