"""The simulator's key-management responses validate against the real `langfuse-openapi.yml` schemas.

The schema of each response is looked up from the spec's operation (path + method), `$ref`s resolved
against the whole document. Where the server differs from the spec, the simulator
follows the server and the test states the difference explicitly:

* POST /projects/{id}/apiKeys and POST /projects answer 201, the spec documents 200;
* POST /projects omits the `organization` the spec's `Project` requires;
* `ApiKeySummary` optional fields are always present and usually `null` (the spec marks them nullable).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openapi_schema_validator import OAS30Validator, oas30_format_checker

from tests.fixtures.langfuse_sim import SimHandle

# The real OpenAPI document of Langfuse v4.16.0 (web/public/generated/api/openapi.yml), kept with
# the tests so they never depend on where the checkout sits; sha256 896774f9...b64b233.
SPEC_PATH = Path(__file__).resolve().parents[1] / "data" / "langfuse-openapi.yml"
KEYS = "/api/public/projects/{projectId}/apiKeys"


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    if not SPEC_PATH.exists():
        pytest.skip(f"{SPEC_PATH} not available")
    with SPEC_PATH.open() as handle:
        return dict(yaml.load(handle, Loader=yaml.CSafeLoader))


def _documented(spec: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    """`{status: schema}` of the operation's JSON responses (schema-less error statuses omitted)."""
    responses = spec["paths"][path][method]["responses"]
    out = {}
    for status, response in responses.items():
        schema = ((response or {}).get("content") or {}).get("application/json", {}).get("schema")
        if schema:
            out[status] = schema
    return out


def _assert_valid(spec: dict[str, Any], schema: dict[str, Any], body: Any) -> None:
    root = {**schema, "components": spec["components"]}
    OAS30Validator(root, format_checker=oas30_format_checker).validate(body)


def _assert_no_undocumented_fields(spec: dict[str, Any], schema_name: str, item: dict[str, Any]) -> None:
    documented = set(spec["components"]["schemas"][schema_name]["properties"])
    assert set(item) <= documented, set(item) - documented


def _keys_path(sim: SimHandle) -> str:
    return KEYS.replace("{projectId}", sim.projects[0].id)


def response_for(spec: dict[str, Any], path: str, method: str, response: httpx.Response) -> None:
    documented = _documented(spec, path, method)
    assert str(response.status_code) in documented, (response.status_code, sorted(documented))
    _assert_valid(spec, documented[str(response.status_code)], response.json())


def test_list_api_keys_matches_api_key_list(sim: SimHandle, spec: dict[str, Any]) -> None:
    response = sim.http.get(_keys_path(sim), auth=sim.org_auth)
    response_for(spec, KEYS, "get", response)
    for item in response.json()["apiKeys"]:
        _assert_no_undocumented_fields(spec, "ApiKeySummary", item)
        # Server difference: the optional fields are always present (Prisma select), as null here.
        assert item["expiresAt"] is None and item["lastUsedAt"] is None


def test_create_api_key_body_matches_api_key_response_but_status_is_201(sim: SimHandle, spec: dict[str, Any]) -> None:
    response = sim.http.post(_keys_path(sim), json={"note": "spec"}, auth=sim.org_auth)
    # Server difference: `res.status(201)`, while the spec documents only 200.
    assert response.status_code == 201
    assert set(_documented(spec, KEYS, "post")) == {"200"}
    _assert_valid(spec, _documented(spec, KEYS, "post")["200"], response.json())
    _assert_no_undocumented_fields(spec, "ApiKeyResponse", response.json())


def test_delete_api_key_matches_api_key_deletion_response(sim: SimHandle, spec: dict[str, Any]) -> None:
    created = sim.http.post(_keys_path(sim), json={}, auth=sim.org_auth).json()
    response = sim.http.delete(f"{_keys_path(sim)}/{created['id']}", auth=sim.org_auth)
    response_for(spec, KEYS + "/{apiKeyId}", "delete", response)


def test_get_projects_matches_projects(sim: SimHandle, spec: dict[str, Any]) -> None:
    response = sim.http.get("/api/public/projects", auth=sim.project_auth())
    response_for(spec, "/api/public/projects", "get", response)
    _assert_no_undocumented_fields(spec, "Project", response.json()["data"][0])


def test_create_project_is_201_and_omits_the_required_organization(sim: SimHandle, spec: dict[str, Any]) -> None:
    response = sim.http.post("/api/public/projects", json={"name": "spec-project"}, auth=sim.org_auth)
    # Server differences (createProject.ts): status 201 instead of 200, and no `organization` in the body.
    assert response.status_code == 201 and set(_documented(spec, "/api/public/projects", "post")) == {"200"}
    body = response.json()
    assert "organization" not in body
    relaxed = copy.deepcopy(spec["components"]["schemas"]["Project"])
    relaxed["required"].remove("organization")
    _assert_valid(spec, relaxed, body)


def test_update_project_matches_project(sim: SimHandle, spec: dict[str, Any]) -> None:
    project = sim.projects[1]
    response = sim.http.put(f"/api/public/projects/{project.id}", json={"name": "renamed"}, auth=sim.org_auth)
    response_for(spec, "/api/public/projects/{projectId}", "put", response)


def test_delete_project_matches_project_deletion_response(sim: SimHandle, spec: dict[str, Any]) -> None:
    response = sim.http.delete(f"/api/public/projects/{sim.projects[1].id}", auth=sim.org_auth)
    response_for(spec, "/api/public/projects/{projectId}", "delete", response)


def test_org_projects_matches_organization_projects_response(sim: SimHandle, spec: dict[str, Any]) -> None:
    response = sim.http.get("/api/public/organizations/projects", auth=sim.org_auth)
    response_for(spec, "/api/public/organizations/projects", "get", response)
    _assert_no_undocumented_fields(spec, "OrganizationProject", response.json()["projects"][0])


def test_org_api_keys_matches_organization_api_keys_response(sim: SimHandle, spec: dict[str, Any]) -> None:
    response = sim.http.get("/api/public/organizations/apiKeys", auth=sim.org_auth)
    response_for(spec, "/api/public/organizations/apiKeys", "get", response)
    _assert_no_undocumented_fields(spec, "OrganizationApiKey", response.json()["apiKeys"][0])


def test_health_matches_health_response(sim: SimHandle, spec: dict[str, Any]) -> None:
    response = sim.http.get("/api/public/health")
    response_for(spec, "/api/public/health", "get", response)


def test_validator_rejects_a_wrong_shape(spec: dict[str, Any]) -> None:
    """Guard: the validator really checks (a summary missing `displaySecretKey` must fail)."""
    bad = {"apiKeys": [{"id": "x", "createdAt": "2026-08-22T08:00:00.000Z", "publicKey": "pk-lf-x"}]}
    with pytest.raises(Exception, match="displaySecretKey"):
        _assert_valid(spec, _documented(spec, KEYS, "get")["200"], bad)


def test_validator_checks_date_time_format(spec: dict[str, Any]) -> None:
    bad = {"apiKeys": [{"id": "x", "createdAt": "yesterday", "publicKey": "pk", "displaySecretKey": "sk-lf-...x"}]}
    with pytest.raises(Exception, match="date-time"):
        _assert_valid(spec, _documented(spec, KEYS, "get")["200"], bad)
