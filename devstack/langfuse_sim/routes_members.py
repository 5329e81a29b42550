"""Organization and project memberships (`/api/public/organizations/memberships`,
`/api/public/projects/{projectId}/memberships`), as the v4.16 server handles them.

Every body uses the `error` key. Check order, organization route: method → auth (401) → org scope
(403) → `admin-api` entitlement (403) → `public-api` rate limit → handler. Project route: method →
auth → org scope → `rbac-project-roles` entitlement → `admin-api` entitlement → project of the
key's organization and not deleted (404) → handler; it is not rate-limited.
"""

from __future__ import annotations

from typing import Any

from devstack.langfuse_sim.model import ROLES, User
from devstack.langfuse_sim.routes_admin import NOT_ON_PLAN, ORG_KEY_REQUIRED
from devstack.langfuse_sim.state import Scope, SimState
from devstack.langfuse_sim.wire import BodyError, Request, Response, invalid_json, js_type

NO_PROJECT_ROLES = "Your plan does not include project role management."
PROJECT_NOT_IN_ORG = "Project not found or does not belong to this organization"


def _auth(state: SimState, req: Request) -> Scope | Response:
    auth = state.authenticate(req.header("authorization"))
    if auth.scope is None:
        return Response(401, {"error": auth.error})
    req.public_key = auth.scope.key.public_key
    if auth.scope.access_level != "organization":
        return Response(403, {"error": ORG_KEY_REQUIRED})
    return auth.scope


def _member_json(user: User, role: str) -> dict[str, Any]:
    return {"userId": user.id, "role": role, "email": user.email, "name": user.name}


def _issues(body: Any, *, with_role: bool) -> list[dict[str, Any]]:
    """zod issues for `{userId: string, role: enum(Role)}` (or `{userId}` on DELETE)."""
    if not isinstance(body, dict):
        return [{"code": "invalid_type", "expected": "object", "path": [], "message": "Invalid input"}]
    issues: list[dict[str, Any]] = []
    if not isinstance(body.get("userId"), str):
        received = "undefined" if "userId" not in body else js_type(body["userId"])
        issues.append(
            {
                "code": "invalid_type",
                "expected": "string",
                "path": ["userId"],
                "message": f"Invalid input: expected string, received {received}",
            }
        )
    if with_role and body.get("role") not in ROLES:
        issues.append(
            {
                "code": "invalid_value",
                "values": list(ROLES),
                "path": ["role"],
                "message": "Invalid option: expected one of " + "|".join(f'"{r}"' for r in ROLES),
            }
        )
    return issues


def _body(req: Request, *, with_role: bool) -> dict[str, Any] | Response:
    try:
        body = req.next_body()
    except BodyError:
        return invalid_json()
    issues = _issues(body, with_role=with_role)
    if issues:
        return Response(400, {"error": "Invalid request body", "details": issues})
    assert isinstance(body, dict)
    return body


# --- /api/public/organizations/memberships ------------------------------------------------------
def _org_prologue(state: SimState, req: Request) -> Scope | Response:
    scope = _auth(state, req)
    if isinstance(scope, Response):
        return scope
    if not state.config.admin_api_entitlement:
        return Response(403, {"error": NOT_ON_PLAN})
    limited = state.rate_limit(scope.key.org_id, "public-api")
    return limited if limited is not None else scope


def get_org_memberships(state: SimState, req: Request, params: dict[str, str]) -> Response:
    scope = _org_prologue(state, req)
    if isinstance(scope, Response):
        return scope
    with state.lock:
        store = state.store
        rows = [_member_json(store.users[uid], role) for uid, role in store.org_members.items()]
    return Response(200, {"memberships": rows})


def put_org_membership(state: SimState, req: Request, params: dict[str, str]) -> Response:
    scope = _org_prologue(state, req)
    if isinstance(scope, Response):
        return scope
    body = _body(req, with_role=True)
    if isinstance(body, Response):
        return body
    with state.lock:
        user = state.store.users.get(body["userId"])
        if user is None:
            return Response(404, {"error": "User not found"})
        state.store.org_members[user.id] = body["role"]
        state.persist()
        return Response(200, _member_json(user, body["role"]))


def delete_org_membership(state: SimState, req: Request, params: dict[str, str]) -> Response:
    scope = _org_prologue(state, req)
    if isinstance(scope, Response):
        return scope
    body = _body(req, with_role=False)
    if isinstance(body, Response):
        return body
    with state.lock:  # deleteMany: no error when there is nothing to delete
        state.store.remove_org_member(body["userId"])
        state.persist()
    return Response(200, {"message": "Membership deleted successfully", "userId": body["userId"]})


# --- /api/public/projects/{projectId}/memberships -----------------------------------------------
def _project_prologue(state: SimState, req: Request, project_id: str) -> str | Response:
    if not project_id:
        return Response(400, {"error": "projectId is required"})
    scope = _auth(state, req)
    if isinstance(scope, Response):
        return scope
    if not state.config.project_roles_entitlement:
        return Response(403, {"error": NO_PROJECT_ROLES})
    if not state.config.admin_api_entitlement:
        return Response(403, {"error": NOT_ON_PLAN})
    with state.lock:
        project = state.store.projects.get(project_id)
    if project is None or project.org_id != scope.key.org_id or project.deleted_at is not None:
        return Response(404, {"error": PROJECT_NOT_IN_ORG})
    return project.id


def get_project_memberships(state: SimState, req: Request, params: dict[str, str]) -> Response:
    project_id = _project_prologue(state, req, params["project_id"])
    if isinstance(project_id, Response):
        return project_id
    with state.lock:
        store = state.store
        members = store.project_members.get(project_id, {})
        rows = [_member_json(store.users[uid], role) for uid, role in members.items()]
    return Response(200, {"memberships": rows})


def put_project_membership(state: SimState, req: Request, params: dict[str, str]) -> Response:
    project_id = _project_prologue(state, req, params["project_id"])
    if isinstance(project_id, Response):
        return project_id
    body = _body(req, with_role=True)
    if isinstance(body, Response):
        return body
    with state.lock:
        store = state.store
        if body["userId"] not in store.org_members:
            return Response(404, {"error": "User is not a member of this organization"})
        user = store.users[body["userId"]]
        store.project_members.setdefault(project_id, {})[user.id] = body["role"]
        state.persist()
        return Response(200, _member_json(user, body["role"]))


def delete_project_membership(state: SimState, req: Request, params: dict[str, str]) -> Response:
    project_id = _project_prologue(state, req, params["project_id"])
    if isinstance(project_id, Response):
        return project_id
    body = _body(req, with_role=False)
    if isinstance(body, Response):
        return body
    with state.lock:
        members = state.store.project_members.get(project_id, {})
        if body["userId"] not in members:
            return Response(404, {"error": "Project membership not found"})
        del members[body["userId"]]
        state.persist()
    return Response(200, {"message": "Project membership deleted successfully", "userId": body["userId"]})
