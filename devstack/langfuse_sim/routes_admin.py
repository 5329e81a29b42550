"""Project and API-key management.

Routes: `/api/public/projects*`, `/api/public/organizations/*`, `/api/admin/api-keys`.

Error bodies deliberately mix `message` and `error` keys exactly like the server does.
"""

from __future__ import annotations

import json
import time
from typing import Any

from devstack.langfuse_sim.model import ApiKey, Project, generate_key_pair, hash_secret, iso_ms
from devstack.langfuse_sim.state import Scope, SimState
from devstack.langfuse_sim.wire import BodyError, Request, Response, invalid_json, js_type

ORG_KEY_REQUIRED = "Invalid API key. Organization-scoped API key required for this operation."
NOT_ON_PLAN = "This feature is not available on your current plan."
PROJECT_NOT_FOUND = "Project not found or you don't have access to it"


# ---------------------------------------------------------------------------------------------
# shared prologues
# ---------------------------------------------------------------------------------------------
def _org_auth(state: SimState, req: Request, body_key: str) -> Scope | Response:
    """The server's check order for organization routes: 401 → org scope 403 (`message`) →
    entitlement 403 (always `error`)."""
    auth = state.authenticate(req.header("authorization"))
    if auth.scope is None:
        return Response(401, {body_key: auth.error})
    req.public_key = auth.scope.key.public_key
    if auth.scope.access_level != "organization":
        return Response(403, {body_key: ORG_KEY_REQUIRED})
    if not state.config.admin_api_entitlement:
        return Response(403, {"error": NOT_ON_PLAN})
    return auth.scope


def _project_prologue(
    state: SimState, req: Request, project_id: str, invalid_msg: str
) -> tuple[Scope, Project] | Response:
    """The server's full check order after the method check: auth, scope, entitlement, 429, projectId, project."""
    scope = _org_auth(state, req, "message")
    if isinstance(scope, Response):
        return scope
    limited = state.rate_limit(scope.key.org_id, "public-api")
    if limited is not None:
        return limited
    if not project_id.strip():
        return Response(400, {"message": invalid_msg})
    with state.lock:
        # Like the server, this lookup ignores `deletedAt`: a soft-deleted project is still found.
        project = state.store.projects.get(project_id)
    if project is None or project.org_id != scope.key.org_id:
        return Response(404, {"message": PROJECT_NOT_FOUND})
    return scope, project


def _project_json(state: SimState, project: Project, with_org: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"id": project.id, "name": project.name}
    if with_org:
        out["organization"] = {"id": state.store.org.id, "name": state.store.org.name}
    out["metadata"] = project.metadata
    if project.retention_days:
        out["retentionDays"] = project.retention_days
    return out


# ---------------------------------------------------------------------------------------------
# /api/public/projects/{projectId}/apiKeys[/{apiKeyId}]
# ---------------------------------------------------------------------------------------------
def get_api_keys(state: SimState, req: Request, params: dict[str, str]) -> Response:
    pro = _project_prologue(state, req, params["project_id"], "Invalid project ID")
    if isinstance(pro, Response):
        return pro
    _, project = pro
    with state.lock:
        keys = state.store.project_keys(project.id)
    return Response(200, {"apiKeys": [k.summary() for k in keys]})


def create_api_key(state: SimState, req: Request, params: dict[str, str]) -> Response:
    pro = _project_prologue(state, req, params["project_id"], "Invalid project ID")
    if isinstance(pro, Response):
        return pro
    scope, project = pro
    try:
        body = req.next_body()
    except BodyError:
        return invalid_json()
    honour = state.config.honour_predefined_keys
    details = _create_body_errors(body, honour)
    if details is not None:
        return Response(400, {"message": "Invalid request body", "details": details})
    note = body.get("note")
    public_key, secret_key = (body.get("publicKey"), body.get("secretKey")) if honour else (None, None)
    problem = _predefined_problem(public_key, secret_key)
    if problem:
        return Response(400, {"message": problem})
    if not public_key:
        public_key, secret_key = generate_key_pair()
    assert isinstance(secret_key, str)
    with state.lock:
        store = state.store
        taken = store.key_by_public(public_key) or store.key_by_hash(hash_secret(secret_key, store.salt))
        if taken is not None:
            return Response(409, {"message": "API key with the provided publicKey or secretKey already exists"})
        key = store.add_key(
            scope="PROJECT",
            project_id=project.id,
            note=note,
            public_key=public_key,
            secret_key=secret_key,
            created_by=scope.key.id,
        )
        state.persist()
    return Response(
        201,
        {
            "id": key.id,
            "createdAt": iso_ms(key.created_at),
            "note": key.note,
            "publicKey": key.public_key,
            "secretKey": secret_key,
            "displaySecretKey": key.display_secret_key,
        },
    )


def _create_body_errors(body: Any, honour_predefined: bool) -> dict[str, Any] | None:
    """zod `formatError()` tree for `{note?, publicKey?, secretKey?}` (all `z.string().optional()`).

    `null` is not "optional" for zod, so `{"note": null}` fails — the SDK must omit the field.
    A server older than v3.121.0 only knows `note` and strips the other two (non-strict object).
    """
    if not isinstance(body, dict):
        return {"_errors": [f"Expected object, received {js_type(body)}"]}
    names = ("note", "publicKey", "secretKey") if honour_predefined else ("note",)
    tree: dict[str, Any] = {"_errors": []}
    for name in names:
        if name in body and not isinstance(body[name], str):
            tree[name] = {"_errors": [f"Expected string, received {js_type(body[name])}"]}
    return tree if len(tree) > 1 else None


def _predefined_problem(public_key: str | None, secret_key: str | None) -> str | None:
    if bool(public_key) != bool(secret_key):
        return "Both publicKey and secretKey must be provided together when specifying predefined keys"
    if public_key and not public_key.startswith("pk-lf-"):
        return "publicKey must start with 'pk-lf-'"
    if secret_key and not secret_key.startswith("sk-lf-"):
        return "secretKey must start with 'sk-lf-'"
    return None


def delete_api_key(state: SimState, req: Request, params: dict[str, str]) -> Response:
    pro = _project_prologue(state, req, params["project_id"], "Invalid request parameters")
    if isinstance(pro, Response):
        return pro
    _, project = pro
    with state.lock:
        key = state.store.keys.get(params["api_key_id"])
    if key is None or key.project_id != project.id or key.scope != "PROJECT":
        return Response(404, {"message": "API key not found"})
    if not state.delete_key(key.id):
        return Response(404, {"message": "API key not found"})
    return Response(200, {"success": True})


# ---------------------------------------------------------------------------------------------
# /api/public/projects and /api/public/projects/{projectId}
# ---------------------------------------------------------------------------------------------
def get_projects(state: SimState, req: Request, params: dict[str, str]) -> Response:
    """What `Langfuse.auth_check()` calls. Never rate-limited (cheapest "does this key work" probe)."""
    auth = state.authenticate(req.header("authorization"))
    if auth.scope is None:
        return Response(401, {"message": auth.error})
    req.public_key = auth.scope.key.public_key
    if auth.scope.access_level != "project" or auth.scope.key.project_id is None:
        return Response(403, {"message": "Invalid API key. Are you using an organization key?"})
    with state.lock:
        project = state.store.projects.get(auth.scope.key.project_id)
        data = [_project_json(state, project)] if project is not None else []
    return Response(200, {"data": data})


def create_project(state: SimState, req: Request, params: dict[str, str]) -> Response:
    """201 with `{id, name, metadata, retentionDays?}` — the server omits `organization` here."""
    scope = _org_auth(state, req, "message")
    if isinstance(scope, Response):
        return scope
    parsed = _project_body(req)
    if isinstance(parsed, Response):
        return parsed
    name, metadata, retention = parsed
    with state.lock:
        if any(p.name == name for p in state.store.live_projects()):
            return Response(409, {"message": "A project with this name already exists in your organization"})
        project = state.store.add_project(name, metadata or {}, retention or None)
        state.persist()
        return Response(201, _project_json(state, project, with_org=False))


def _project_body(req: Request) -> tuple[str, dict[str, Any] | None, int | None] | Response:
    try:
        body = req.next_body()
    except BodyError:
        return invalid_json()
    if not isinstance(body, dict):
        return Response(400, {"message": "Invalid request body"})
    name = body.get("name")
    if not isinstance(name, str) or not 3 <= len(name.strip()) <= 60:
        return Response(400, {"message": "Invalid project name. Should be between 3 and 60 characters."})
    metadata = body.get("metadata")
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except ValueError:
            metadata = ...
    if metadata is not None and not isinstance(metadata, dict):
        return Response(400, {"message": "Invalid metadata. Should be a valid JSON object."})
    retention = body.get("retention")
    if retention is not None and (
        not isinstance(retention, int) or isinstance(retention, bool) or (retention != 0 and retention < 3)
    ):
        return Response(400, {"message": "Invalid retention value. Must be 0 or at least 3 days."})
    return name.strip(), metadata, retention


def update_project(state: SimState, req: Request, params: dict[str, str]) -> Response:
    found = _project_by_id_prologue(state, req, params["project_id"])
    if isinstance(found, Response):
        return found
    parsed = _project_body(req)
    if isinstance(parsed, Response):
        return parsed
    name, metadata, retention = parsed
    with state.lock:
        if any(p.name == name and p.id != found.id for p in state.store.live_projects()):
            return Response(409, {"message": "A project with this name already exists in your organization"})
        found.name = name
        if metadata is not None:
            found.metadata = metadata
        if retention is not None:
            found.retention_days = retention or None
        found.updated_at = time.time()
        state.persist()
        return Response(200, _project_json(state, found))


def delete_project(state: SimState, req: Request, params: dict[str, str]) -> Response:
    """Invalidate (from rows, so it works) → delete the project's keys → soft-delete → 202."""
    found = _project_by_id_prologue(state, req, params["project_id"])
    if isinstance(found, Response):
        return found
    with state.lock:
        keys = state.store.project_keys(found.id)
        state.cache.evict([k.secret_hash for k in keys])
        for key in keys:
            state.store.keys.pop(key.id, None)
        found.deleted_at = time.time()
        state.persist()
    return Response(
        202,
        {
            "success": True,
            "message": "Project deletion has been initiated and is being processed asynchronously",
        },
    )


def _project_by_id_prologue(state: SimState, req: Request, project_id: str) -> Project | Response:
    scope = _org_auth(state, req, "message")
    if isinstance(scope, Response):
        return scope
    with state.lock:
        project = state.store.projects.get(project_id)
    if project is None or project.org_id != scope.key.org_id or project.deleted_at is not None:
        return Response(404, {"message": "Project not found"})
    return project


# ---------------------------------------------------------------------------------------------
# /api/public/organizations/*  (every error uses the `error` key)
# ---------------------------------------------------------------------------------------------
def _org_prologue(state: SimState, req: Request) -> Scope | Response:
    scope = _org_auth(state, req, "error")
    if isinstance(scope, Response):
        return scope
    limited = state.rate_limit(scope.key.org_id, "public-api")
    return limited if limited is not None else scope


def get_org_projects(state: SimState, req: Request, params: dict[str, str]) -> Response:
    scope = _org_prologue(state, req)
    if isinstance(scope, Response):
        return scope
    with state.lock:
        projects = state.store.live_projects()
        data = [
            {
                "id": p.id,
                "name": p.name,
                "metadata": p.metadata,
                "createdAt": iso_ms(p.created_at),
                "updatedAt": iso_ms(p.updated_at),
            }
            for p in projects
        ]
    return Response(200, {"projects": data})


def get_org_api_keys(state: SimState, req: Request, params: dict[str, str]) -> Response:
    scope = _org_prologue(state, req)
    if isinstance(scope, Response):
        return scope
    with state.lock:
        keys = state.store.org_keys()
    return Response(200, {"apiKeys": [k.summary() for k in keys]})


# ---------------------------------------------------------------------------------------------
# POST /api/admin/api-keys (self-hosted, Bearer ADMIN_API_KEY)
# ---------------------------------------------------------------------------------------------
def admin_api_keys(state: SimState, req: Request, params: dict[str, str]) -> Response:
    denied = _admin_auth(state, req.header("authorization"))
    if denied is not None:
        return denied
    try:
        body = req.next_body()
    except BodyError:
        return invalid_json()
    action = body.get("action") if isinstance(body, dict) else None
    if action == "invalidate-all":
        with state.lock:
            count = state.cache.clear()
        return Response(200, {"message": "All cached API keys invalidated", "invalidatedCount": count})
    project_ids = body.get("projectIds") if isinstance(body, dict) else None
    valid_ids = isinstance(project_ids, list) and all(isinstance(p, str) for p in project_ids)
    if action not in ("delete", "invalidate") or not valid_ids:
        return Response(400, {"error": _zod_error(action, project_ids)})
    assert isinstance(project_ids, list)
    with state.lock:
        keys: list[ApiKey] = [k for pid in project_ids for k in state.store.project_keys(pid)]
        if action == "delete":
            for key in keys:
                state.store.keys.pop(key.id, None)
            state.persist()
        state.invalidate_keys(keys)
    message = "API keys deleted" if action == "delete" else "API keys invalidated"
    return Response(200, {"message": message})


def _admin_auth(state: SimState, header: str | None) -> Response | None:
    """`AdminApiAuthService.handleAdminAuth`: errors starting with "Unauthorized" are 401, others 403."""
    if not header:
        return Response(401, {"error": "Unauthorized: No authorization header provided"})
    if not state.admin_api_key:
        return Response(403, {"error": "ADMIN_API_KEY is not set"})
    scheme, _, token = header.partition(" ")
    if scheme != "Bearer" or token != state.admin_api_key:
        return Response(401, {"error": "Unauthorized: Invalid token"})
    return None


def _zod_error(action: Any, project_ids: Any) -> dict[str, Any]:
    """Serialised ZodError (`res.status(400).json({error: body.error})`)."""
    if action not in ("delete", "invalidate", "invalidate-all"):
        issue = {
            "code": "invalid_union_discriminator",
            "options": ["delete", "invalidate", "invalidate-all"],
            "path": ["action"],
            "message": "Invalid discriminator value. Expected 'delete' | 'invalidate' | 'invalidate-all'",
        }
    else:
        issue = {
            "code": "invalid_type",
            "expected": "array",
            "received": "undefined" if project_ids is None else js_type(project_ids),
            "path": ["projectIds"],
            "message": "Required" if project_ids is None else "Expected array of strings",
        }
    return {"issues": [issue], "name": "ZodError"}
