"""Organization and project memberships, read and changed with the organization key.

``GET|PUT|DELETE /api/public/organizations/memberships`` and
``GET|PUT|DELETE /api/public/projects/{projectId}/memberships`` need an organization-scoped key
and the ``admin-api`` entitlement (project roles also ``rbac-project-roles``); without it the
server answers 403, raised as ``LangfuseForbiddenError``.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import quote

from connectors.langfuse._errors import Action, parse_json, parse_model, server_message
from connectors.langfuse.admin import LangfuseAdminClient
from connectors.langfuse.models import ApiModel

Role = Literal["OWNER", "ADMIN", "MEMBER", "VIEWER", "NONE"]
ROLE_RANK: dict[str, int] = {"NONE": 0, "VIEWER": 1, "MEMBER": 2, "ADMIN": 3, "OWNER": 4}
"""Roles from least to most privileged; an unknown role counts as the most privileged."""

_HINT = (
    "memberships need an organization-scoped API key on a plan with the admin API "
    "(Cloud Team/Enterprise or self-hosted Enterprise)"
)
_ORG_PATH = "/api/public/organizations/memberships"


class Membership(ApiModel):
    """One person's role in the organization or in a project."""

    user_id: str
    role: str
    email: str | None = None
    name: str | None = None


class _Memberships(ApiModel):
    memberships: list[Membership]


def _project_path(project_id: str) -> str:
    return f"/api/public/projects/{quote(project_id, safe='')}/memberships"


class LangfuseMemberships:
    """Membership calls through an ``LangfuseAdminClient``'s connection (same key, same retries)."""

    def __init__(self, admin: LangfuseAdminClient) -> None:
        self._admin = admin

    def _action(self, doing: str, missing: str | None = None) -> Action:
        return Action(
            doing=doing,
            credential=f"organization key {self._admin.public_key}",
            forbidden_hint=_HINT,
            missing=missing,
        )

    def _list(self, path: str, action: Action) -> list[Membership]:
        core = self._admin._core
        response = core.call("GET", path, action)
        data = parse_json(response, core.host, "membership list")
        return parse_model(_Memberships, data, core.host, "membership list").memberships

    def _put(self, path: str, user_id: str, role: Role, action: Action) -> Membership:
        core = self._admin._core
        response = core.call("PUT", path, action, json={"userId": user_id, "role": role})
        return parse_model(Membership, parse_json(response, core.host, "membership"), core.host, "membership")

    def organization(self) -> list[Membership]:
        """Everyone in the organization with their organization role."""
        return self._list(_ORG_PATH, self._action("list the organization's memberships"))

    def project(self, project_id: str) -> list[Membership]:
        """Project-level roles (people without one hold their organization role there)."""
        return self._list(
            _project_path(project_id),
            self._action(f"list the memberships of project {project_id}", missing=f"project {project_id}"),
        )

    def set_organization_role(self, user_id: str, role: Role) -> Membership:
        """Upsert; raises ``LangfuseNotFoundError`` for an unknown user."""
        return self._put(_ORG_PATH, user_id, role, self._action(f"set the organization role of user {user_id}"))

    def set_project_role(self, project_id: str, user_id: str, role: Role) -> Membership:
        """Upsert; the user must be an organization member (else ``LangfuseNotFoundError``)."""
        action = self._action(
            f"set the role of user {user_id} in project {project_id}", missing=f"user {user_id} or project"
        )
        return self._put(_project_path(project_id), user_id, role, action)

    def remove_from_organization(self, user_id: str) -> None:
        """Idempotent: removing someone who is not a member succeeds."""
        self._admin._core.call(
            "DELETE", _ORG_PATH, self._action(f"remove user {user_id} from the organization"), json={"userId": user_id}
        )

    def remove_from_project(self, project_id: str, user_id: str) -> bool:
        """``True`` if removed now, ``False`` if the user had no role in the project."""
        core = self._admin._core
        action = self._action(f"remove user {user_id} from project {project_id}", missing=f"project {project_id}")
        response = core.call("DELETE", _project_path(project_id), action, json={"userId": user_id}, accept=(404,))
        if response.status_code != 404:
            return True
        if "membership not found" in server_message(response).lower():
            return False
        raise core.error(response, action)
