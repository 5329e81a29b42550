"""Langfuse simulator: auth, admin check order, API-key CRUD, projects, admin API.

Every test talks HTTP to the real simulator subprocess (`sim` fixture) and checks the exact status,
body keys and strings the real server answers with.
"""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.fixtures.langfuse_sim import SimHandle

CONFIRM = ". Confirm that you've configured the correct host."
INVALID_CREDENTIALS = "Invalid credentials" + CONFIRM
ORG_KEY_REQUIRED = "Invalid API key. Organization-scoped API key required for this operation."
NOT_ON_PLAN = "This feature is not available on your current plan."


def _keys_url(sim: SimHandle, index: int = 0) -> str:
    return f"/api/public/projects/{sim.projects[index].id}/apiKeys"


def _create_key(sim: SimHandle, index: int = 0, **body: str) -> dict[str, str]:
    response = sim.http.post(_keys_url(sim, index), json=body, auth=sim.org_auth)
    assert response.status_code == 201, response.text
    return dict(response.json())


def _projects(sim: SimHandle, auth: tuple[str, str] | None = None, **headers: str) -> httpx.Response:
    return sim.http.get("/api/public/projects", auth=auth, headers=headers)


# -- authentication -----------------------------------------------------------------------------
def test_missing_authorization_header_is_401_no_authorization_header(sim: SimHandle) -> None:
    response = _projects(sim)
    assert (response.status_code, response.json()) == (401, {"message": "No authorization header"})


def test_unknown_auth_scheme_is_401_invalid_authorization_header(sim: SimHandle) -> None:
    response = _projects(sim, Authorization="Token abc")
    assert (response.status_code, response.json()) == (401, {"message": "Invalid authorization header"})


def test_basic_value_without_colon_gets_confirm_host_suffix(sim: SimHandle) -> None:
    bad = base64.b64encode(b"no-colon-here").decode()
    response = _projects(sim, Authorization=f"Basic {bad}")
    assert response.json() == {"message": "Invalid authorization header" + CONFIRM}


def test_unknown_key_pair_is_401_invalid_credentials(sim: SimHandle) -> None:
    response = _projects(sim, ("pk-lf-nope", "sk-lf-nope"))
    assert (response.status_code, response.json()) == (401, {"message": INVALID_CREDENTIALS})


def test_wrong_secret_for_existing_public_key_is_401_invalid_credentials(sim: SimHandle) -> None:
    response = _projects(sim, (sim.projects[0].public_key, "sk-lf-wrong"))
    assert (response.status_code, response.json()) == (401, {"message": INVALID_CREDENTIALS})


def test_public_key_mismatch_is_accepted_and_attributed_to_the_secret_owner(sim: SimHandle) -> None:
    owner = sim.projects[0]
    response = _projects(sim, ("pk-lf-somebody-else", owner.secret_key))
    assert response.status_code == 200
    assert response.json()["data"][0]["id"] == owner.id
    assert sim.requests()["requests"][-1]["public_key"] == owner.public_key


def test_strict_public_key_rejects_a_mismatched_pair(sim: SimHandle) -> None:
    sim.configure(strict_public_key=True)
    response = _projects(sim, ("pk-lf-somebody-else", sim.projects[0].secret_key))
    assert (response.status_code, response.json()) == (401, {"message": INVALID_CREDENTIALS})


def test_bearer_with_unknown_public_key_is_401_invalid_public_key(sim: SimHandle) -> None:
    response = _projects(sim, Authorization="Bearer pk-lf-unknown")
    assert response.json() == {"message": "Invalid public key" + CONFIRM}


def test_bearer_with_org_key_is_401_cannot_use_org_key(sim: SimHandle) -> None:
    response = _projects(sim, Authorization=f"Bearer {sim.org_public_key}")
    assert (response.status_code, response.json()) == (
        401,
        {"message": "Unauthorized: Cannot use organization key with bearer auth" + CONFIRM},
    )


def test_bearer_public_key_cannot_list_projects(sim: SimHandle) -> None:
    response = _projects(sim, Authorization=f"Bearer {sim.projects[0].public_key}")
    assert (response.status_code, response.json()) == (
        403,
        {"message": "Invalid API key. Are you using an organization key?"},
    )


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/api/public/projects", {"message": INVALID_CREDENTIALS}),
        ("GET", "/api/public/v2/observations", {"message": INVALID_CREDENTIALS}),
        ("POST", "/api/public/otel/v1/traces", {"message": INVALID_CREDENTIALS}),
        ("POST", "/api/public/ingestion", {"error": "UnauthorizedError", "message": INVALID_CREDENTIALS}),
        ("GET", "/api/public/organizations/projects", {"error": INVALID_CREDENTIALS}),
        ("GET", "/api/public/organizations/apiKeys", {"error": INVALID_CREDENTIALS}),
    ],
)
def test_auth_error_body_key_depends_on_route_family(
    sim: SimHandle, method: str, path: str, expected: dict[str, str]
) -> None:
    response = sim.http.request(method, path, auth=("pk-lf-x", "sk-lf-x"), json={"batch": []})
    assert (response.status_code, response.json()) == (401, expected)


def test_org_key_cannot_list_projects_via_project_endpoint(sim: SimHandle) -> None:
    response = _projects(sim, sim.org_auth)
    assert (response.status_code, response.json()) == (
        403,
        {"message": "Invalid API key. Are you using an organization key?"},
    )


def test_org_key_is_denied_on_project_data_routes(sim: SimHandle) -> None:
    response = sim.http.get("/api/public/v2/observations", auth=sim.org_auth)
    assert (response.status_code, response.json()) == (
        403,
        {"message": "Access denied - insufficient permissions for this endpoint"},
    )


def test_org_key_on_ingestion_is_401_missing_project_id(sim: SimHandle) -> None:
    response = sim.http.post("/api/public/ingestion", json={"batch": []}, auth=sim.org_auth)
    assert (response.status_code, response.json()) == (
        401,
        {"error": "UnauthorizedError", "message": "Missing projectId in scope. Are you using an organization key?"},
    )


# -- admin endpoint check order ----------------------------------------------------------------
def test_admin_method_check_comes_before_auth(sim: SimHandle) -> None:
    response = sim.http.put(_keys_url(sim))
    assert (response.status_code, response.json()) == (405, {"message": "Method Not Allowed"})


def test_admin_auth_failure_is_401_message(sim: SimHandle) -> None:
    response = sim.http.get(_keys_url(sim))
    assert (response.status_code, response.json()) == (401, {"message": "No authorization header"})


def test_admin_project_key_gets_org_scope_403_message(sim: SimHandle) -> None:
    response = sim.http.get(_keys_url(sim), auth=sim.project_auth())
    assert (response.status_code, response.json()) == (403, {"message": ORG_KEY_REQUIRED})


def test_admin_org_scope_check_comes_before_entitlement(sim: SimHandle) -> None:
    sim.configure(admin_api_entitlement=False)
    response = sim.http.get(_keys_url(sim), auth=sim.project_auth())
    assert response.json() == {"message": ORG_KEY_REQUIRED}


def test_admin_missing_entitlement_is_403_with_error_key(sim: SimHandle) -> None:
    sim.configure(admin_api_entitlement=False)
    response = sim.http.get(_keys_url(sim), auth=sim.org_auth)
    assert (response.status_code, response.json()) == (403, {"error": NOT_ON_PLAN})


def test_admin_rate_limit_comes_before_project_lookup(sim: SimHandle) -> None:
    sim.configure(rate_limits={"public-api": [1, 60]})
    url = "/api/public/projects/does-not-exist/apiKeys"
    assert sim.http.get(url, auth=sim.org_auth).status_code == 404
    assert sim.http.get(url, auth=sim.org_auth).status_code == 429


@pytest.mark.parametrize(
    ("method", "path", "message"),
    [
        ("GET", "/api/public/projects/%20/apiKeys", "Invalid project ID"),
        ("DELETE", "/api/public/projects/%20/apiKeys/abc", "Invalid request parameters"),
    ],
)
def test_admin_blank_project_id_is_400(sim: SimHandle, method: str, path: str, message: str) -> None:
    response = sim.http.request(method, path, auth=sim.org_auth)
    assert (response.status_code, response.json()) == (400, {"message": message})


def test_admin_unknown_project_is_404(sim: SimHandle) -> None:
    response = sim.http.get("/api/public/projects/nope/apiKeys", auth=sim.org_auth)
    assert (response.status_code, response.json()) == (
        404,
        {"message": "Project not found or you don't have access to it"},
    )


# -- create / list / delete project keys ---------------------------------------------------------
def test_create_key_returns_201_with_secret_and_display_secret(sim: SimHandle) -> None:
    created = _create_key(sim, note="rotation 2026-11")
    assert set(created) == {"id", "createdAt", "note", "publicKey", "secretKey", "displaySecretKey"}
    assert created["publicKey"].startswith("pk-lf-") and len(created["publicKey"]) == 42
    assert created["secretKey"].startswith("sk-lf-") and len(created["secretKey"]) == 42
    assert created["displaySecretKey"] == created["secretKey"][:6] + "..." + created["secretKey"][-4:]
    assert created["note"] == "rotation 2026-11"


def test_created_key_works_immediately(sim: SimHandle) -> None:
    created = _create_key(sim)
    assert _projects(sim, (created["publicKey"], created["secretKey"])).status_code == 200


def test_create_without_note_returns_null_note(sim: SimHandle) -> None:
    assert _create_key(sim)["note"] is None


def test_create_records_created_by_api_key_id(sim: SimHandle) -> None:
    created = _create_key(sim)
    listed = sim.keys()
    rows = {row["id"]: row for row in listed}
    org_key_id = next(r["id"] for r in rows.values() if r["scope"] == "ORGANIZATION")
    assert rows[created["id"]]["createdByApiKeyId"] == org_key_id


def test_list_keys_has_null_last_used_and_expiry_even_after_use(sim: SimHandle) -> None:
    for _ in range(3):
        assert _projects(sim, sim.project_auth()).status_code == 200
    response = sim.http.get(_keys_url(sim), auth=sim.org_auth)
    (key,) = response.json()["apiKeys"]
    assert key["publicKey"] == sim.projects[0].public_key
    assert key["lastUsedAt"] is None and key["expiresAt"] is None
    assert set(key) == {"id", "createdAt", "expiresAt", "lastUsedAt", "note", "publicKey", "displaySecretKey"}


def test_list_keys_is_ordered_by_creation(sim: SimHandle) -> None:
    first, second = _create_key(sim, note="a"), _create_key(sim, note="b")
    listed = sim.http.get(_keys_url(sim), auth=sim.org_auth).json()["apiKeys"]
    assert [k["id"] for k in listed][-2:] == [first["id"], second["id"]]


def test_create_with_predefined_keys_uses_them(sim: SimHandle) -> None:
    created = _create_key(sim, publicKey="pk-lf-predefined-1", secretKey="sk-lf-predefined-secret-1")
    assert (created["publicKey"], created["secretKey"]) == ("pk-lf-predefined-1", "sk-lf-predefined-secret-1")
    assert _projects(sim, ("pk-lf-predefined-1", "sk-lf-predefined-secret-1")).status_code == 200


@pytest.mark.parametrize("body", [{"publicKey": "pk-lf-only"}, {"secretKey": "sk-lf-only"}])
def test_predefined_key_without_its_pair_is_400(sim: SimHandle, body: dict[str, str]) -> None:
    response = sim.http.post(_keys_url(sim), json=body, auth=sim.org_auth)
    assert (response.status_code, response.json()) == (
        400,
        {"message": "Both publicKey and secretKey must be provided together when specifying predefined keys"},
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"publicKey": "pk-xx-1", "secretKey": "sk-lf-1"}, "publicKey must start with 'pk-lf-'"),
        ({"publicKey": "pk-lf-1", "secretKey": "sk-xx-1"}, "secretKey must start with 'sk-lf-'"),
    ],
)
def test_predefined_key_with_wrong_prefix_is_400(sim: SimHandle, body: dict[str, str], message: str) -> None:
    response = sim.http.post(_keys_url(sim), json=body, auth=sim.org_auth)
    assert (response.status_code, response.json()) == (400, {"message": message})


@pytest.mark.parametrize(
    "second",
    [
        {"publicKey": "pk-lf-dup", "secretKey": "sk-lf-other"},
        {"publicKey": "pk-lf-other", "secretKey": "sk-lf-dup"},
    ],
)
def test_duplicate_predefined_public_or_secret_key_is_409(sim: SimHandle, second: dict[str, str]) -> None:
    _create_key(sim, publicKey="pk-lf-dup", secretKey="sk-lf-dup")
    response = sim.http.post(_keys_url(sim, 1), json=second, auth=sim.org_auth)
    assert (response.status_code, response.json()) == (
        409,
        {"message": "API key with the provided publicKey or secretKey already exists"},
    )


def test_null_note_is_400_invalid_request_body_with_details(sim: SimHandle) -> None:
    response = sim.http.post(_keys_url(sim), json={"note": None}, auth=sim.org_auth)
    assert response.status_code == 400
    body = response.json()
    assert body["message"] == "Invalid request body"
    assert body["details"]["note"]["_errors"] == ["Expected string, received null"]


def test_old_server_ignores_predefined_keys(sim: SimHandle) -> None:
    sim.configure(honour_predefined_keys=False)
    created = _create_key(sim, publicKey="pk-lf-mine", secretKey="sk-lf-mine")
    assert created["publicKey"] != "pk-lf-mine" and created["secretKey"] != "sk-lf-mine"


def test_negative_cache_keeps_rejecting_a_predefined_key_tried_before_creation(sim: SimHandle) -> None:
    early = ("pk-lf-early", "sk-lf-early")
    assert _projects(sim, early).status_code == 401  # writes "api-key-non-existent"
    _create_key(sim, publicKey=early[0], secretKey=early[1])
    assert _projects(sim, early).status_code == 401
    sim.control.flush_cache()
    assert _projects(sim, early).status_code == 200


def test_delete_key_is_hard_and_second_delete_is_404(sim: SimHandle) -> None:
    created = _create_key(sim)
    url = f"{_keys_url(sim)}/{created['id']}"
    assert sim.http.delete(url, auth=sim.org_auth).json() == {"success": True}
    remaining = sim.keys()
    assert created["id"] not in {row["id"] for row in remaining}
    again = sim.http.delete(url, auth=sim.org_auth)
    assert (again.status_code, again.json()) == (404, {"message": "API key not found"})


def test_deleted_key_gets_invalid_credentials(sim: SimHandle) -> None:
    created = _create_key(sim)
    sim.http.delete(f"{_keys_url(sim)}/{created['id']}", auth=sim.org_auth)
    response = _projects(sim, (created["publicKey"], created["secretKey"]))
    assert (response.status_code, response.json()) == (401, {"message": INVALID_CREDENTIALS})


def test_delete_key_of_another_project_is_404(sim: SimHandle) -> None:
    created = _create_key(sim, 1)
    response = sim.http.delete(f"{_keys_url(sim, 0)}/{created['id']}", auth=sim.org_auth)
    assert (response.status_code, response.json()) == (404, {"message": "API key not found"})


def test_org_key_cannot_be_deleted_through_project_route(sim: SimHandle) -> None:
    listed = sim.keys()
    org_key_id = next(r["id"] for r in listed if r["scope"] == "ORGANIZATION")
    response = sim.http.delete(f"{_keys_url(sim)}/{org_key_id}", auth=sim.org_auth)
    assert response.status_code == 404


# -- projects & organization endpoints -----------------------------------------------------------
def test_org_projects_lists_every_project(sim: SimHandle) -> None:
    response = sim.http.get("/api/public/organizations/projects", auth=sim.org_auth)
    projects = response.json()["projects"]
    assert [p["id"] for p in projects] == [p.id for p in sim.projects]
    assert set(projects[0]) == {"id", "name", "metadata", "createdAt", "updatedAt"}


def test_org_endpoints_use_error_key_for_project_key(sim: SimHandle) -> None:
    response = sim.http.get("/api/public/organizations/projects", auth=sim.project_auth())
    assert (response.status_code, response.json()) == (403, {"error": ORG_KEY_REQUIRED})


def test_org_api_keys_lists_only_org_keys(sim: SimHandle) -> None:
    response = sim.http.get("/api/public/organizations/apiKeys", auth=sim.org_auth)
    (key,) = response.json()["apiKeys"]
    assert key["publicKey"] == sim.org_public_key and key["lastUsedAt"] is None


def test_create_project_is_201_without_organization(sim: SimHandle) -> None:
    response = sim.http.post("/api/public/projects", json={"name": "new-project"}, auth=sim.org_auth)
    assert response.status_code == 201
    assert set(response.json()) == {"id", "name", "metadata"}


def test_create_project_with_taken_name_is_409(sim: SimHandle) -> None:
    response = sim.http.post("/api/public/projects", json={"name": sim.projects[0].name}, auth=sim.org_auth)
    assert (response.status_code, response.json()) == (
        409,
        {"message": "A project with this name already exists in your organization"},
    )


def test_create_project_with_short_name_is_400(sim: SimHandle) -> None:
    response = sim.http.post("/api/public/projects", json={"name": "ab"}, auth=sim.org_auth)
    assert response.json() == {"message": "Invalid project name. Should be between 3 and 60 characters."}


def test_delete_project_revokes_its_keys_and_returns_202(sim: SimHandle) -> None:
    project = sim.projects[1]
    response = sim.http.delete(f"/api/public/projects/{project.id}", auth=sim.org_auth)
    assert (response.status_code, response.json()["success"]) == (202, True)
    assert _projects(sim, sim.project_auth(1)).status_code == 401


# -- self-hosted admin API --------------------------------------------------------------------------
def test_admin_api_without_header_is_401(sim: SimHandle) -> None:
    response = sim.http.post("/api/admin/api-keys", json={"action": "invalidate-all"})
    assert (response.status_code, response.json()) == (401, {"error": "Unauthorized: No authorization header provided"})


def test_admin_api_with_wrong_token_is_401_invalid_token(sim: SimHandle) -> None:
    response = sim.http.post(
        "/api/admin/api-keys", json={"action": "invalidate-all"}, headers={"Authorization": "Bearer nope"}
    )
    assert (response.status_code, response.json()) == (401, {"error": "Unauthorized: Invalid token"})


def test_admin_api_get_is_405(sim: SimHandle) -> None:
    response = sim.http.get("/api/admin/api-keys")
    assert (response.status_code, response.json()) == (405, {"error": "Method Not Allowed"})


def test_admin_api_unknown_action_is_400_zod_error(sim: SimHandle) -> None:
    response = sim.http.post(
        "/api/admin/api-keys",
        json={"action": "explode"},
        headers={"Authorization": f"Bearer {sim.admin_api_key}"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["name"] == "ZodError"


def test_admin_api_delete_action_removes_the_projects_keys(sim: SimHandle) -> None:
    response = sim.http.post(
        "/api/admin/api-keys",
        json={"action": "delete", "projectIds": [sim.projects[0].id]},
        headers={"Authorization": f"Bearer {sim.admin_api_key}"},
    )
    assert response.json() == {"message": "API keys deleted"}
    assert _projects(sim, sim.project_auth(0)).status_code == 401
    assert _projects(sim, sim.project_auth(1)).status_code == 200
