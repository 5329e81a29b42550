"""The simulator's membership and organization-project routes, and the key backdating control.

Responses validate against the real OpenAPI document's schemas (``MembershipsResponse``,
``MembershipResponse``, ``MembershipDeletionResponse``, ``OrganizationProjectsResponse``); error
bodies and check order follow the server (error key ``error``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.langfuse_sim.control import SimulatorControl
from tests.devstack.test_sim_openapi import response_for, spec  # noqa: F401  (the spec fixture)
from tests.fixtures.langfuse_sim import SimHandle, start_sim_process, stop_sim_process

ORG = "/api/public/organizations/memberships"
PROJECT = "/api/public/projects/{projectId}/memberships"
NOT_ON_PLAN = {"error": "This feature is not available on your current plan."}


def _project_path(sim: SimHandle, index: int = 0) -> str:
    return PROJECT.replace("{projectId}", sim.projects[index].id)


def _user(sim: SimHandle, email: str = "dev@acme.test") -> dict[str, Any]:
    return sim.control.add_user(email, "Dev")


def test_org_membership_upsert_list_and_delete_match_the_spec(sim: SimHandle, spec: dict[str, Any]) -> None:  # noqa: F811
    user = _user(sim)
    put = sim.http.put(ORG, json={"userId": user["id"], "role": "MEMBER"}, auth=sim.org_auth)
    response_for(spec, ORG, "put", put)
    assert put.json() == {"userId": user["id"], "role": "MEMBER", "email": "dev@acme.test", "name": "Dev"}
    sim.http.put(ORG, json={"userId": user["id"], "role": "ADMIN"}, auth=sim.org_auth)  # upsert
    listed = sim.http.get(ORG, auth=sim.org_auth)
    response_for(spec, ORG, "get", listed)
    assert listed.json()["memberships"] == [
        {"userId": user["id"], "role": "ADMIN", "email": "dev@acme.test", "name": "Dev"}
    ]
    deleted = sim.http.request("DELETE", ORG, json={"userId": user["id"]}, auth=sim.org_auth)
    response_for(spec, ORG, "delete", deleted)
    assert deleted.json() == {"message": "Membership deleted successfully", "userId": user["id"]}
    assert sim.http.get(ORG, auth=sim.org_auth).json() == {"memberships": []}


def test_org_membership_delete_of_a_non_member_succeeds(sim: SimHandle) -> None:
    response = sim.http.request("DELETE", ORG, json={"userId": "nobody"}, auth=sim.org_auth)
    assert response.status_code == 200 and response.json()["userId"] == "nobody"


def test_org_membership_for_an_unknown_user_is_404(sim: SimHandle) -> None:
    response = sim.http.put(ORG, json={"userId": "nobody", "role": "VIEWER"}, auth=sim.org_auth)
    assert (response.status_code, response.json()) == (404, {"error": "User not found"})


def test_membership_body_is_validated(sim: SimHandle) -> None:
    user = _user(sim)
    response = sim.http.put(ORG, json={"userId": user["id"], "role": "GOD"}, auth=sim.org_auth)
    assert response.status_code == 400
    assert response.json()["error"] == "Invalid request body"
    assert response.json()["details"][0]["path"] == ["role"]


def test_project_membership_needs_an_org_member(sim: SimHandle, spec: dict[str, Any]) -> None:  # noqa: F811
    user = _user(sim)
    path = _project_path(sim)
    refused = sim.http.put(path, json={"userId": user["id"], "role": "ADMIN"}, auth=sim.org_auth)
    assert (refused.status_code, refused.json()) == (404, {"error": "User is not a member of this organization"})
    sim.http.put(ORG, json={"userId": user["id"], "role": "VIEWER"}, auth=sim.org_auth)
    put = sim.http.put(path, json={"userId": user["id"], "role": "ADMIN"}, auth=sim.org_auth)
    response_for(spec, PROJECT, "put", put)
    listed = sim.http.get(path, auth=sim.org_auth)
    response_for(spec, PROJECT, "get", listed)
    assert [m["role"] for m in listed.json()["memberships"]] == ["ADMIN"]
    assert sim.http.get(_project_path(sim, 1), auth=sim.org_auth).json() == {"memberships": []}


def test_project_membership_delete_and_missing_membership(sim: SimHandle, spec: dict[str, Any]) -> None:  # noqa: F811
    user = _user(sim)
    path = _project_path(sim)
    sim.http.put(ORG, json={"userId": user["id"], "role": "VIEWER"}, auth=sim.org_auth)
    sim.http.put(path, json={"userId": user["id"], "role": "MEMBER"}, auth=sim.org_auth)
    deleted = sim.http.request("DELETE", path, json={"userId": user["id"]}, auth=sim.org_auth)
    response_for(spec, PROJECT, "delete", deleted)
    assert deleted.json() == {"message": "Project membership deleted successfully", "userId": user["id"]}
    again = sim.http.request("DELETE", path, json={"userId": user["id"]}, auth=sim.org_auth)
    assert (again.status_code, again.json()) == (404, {"error": "Project membership not found"})


def test_removing_an_org_member_removes_their_project_roles(sim: SimHandle) -> None:
    user = _user(sim)
    path = _project_path(sim)
    sim.http.put(ORG, json={"userId": user["id"], "role": "VIEWER"}, auth=sim.org_auth)
    sim.http.put(path, json={"userId": user["id"], "role": "OWNER"}, auth=sim.org_auth)
    sim.http.request("DELETE", ORG, json={"userId": user["id"]}, auth=sim.org_auth)
    assert sim.http.get(path, auth=sim.org_auth).json() == {"memberships": []}


def test_project_memberships_of_an_unknown_project_are_404(sim: SimHandle) -> None:
    response = sim.http.get(PROJECT.replace("{projectId}", "nope"), auth=sim.org_auth)
    assert response.status_code == 404
    assert response.json() == {"error": "Project not found or does not belong to this organization"}


@pytest.mark.parametrize("path", [ORG, "/api/public/organizations/projects", "project"])
def test_without_the_entitlement_the_server_answers_403(sim: SimHandle, path: str) -> None:
    sim.configure(admin_api_entitlement=False)
    url = _project_path(sim) if path == "project" else path
    response = sim.http.get(url, auth=sim.org_auth)
    assert (response.status_code, response.json()) == (403, NOT_ON_PLAN)


def test_project_roles_need_their_own_entitlement(sim: SimHandle) -> None:
    sim.configure(project_roles_entitlement=False)
    response = sim.http.get(_project_path(sim), auth=sim.org_auth)
    assert response.status_code == 403
    assert response.json() == {"error": "Your plan does not include project role management."}
    assert sim.http.get(ORG, auth=sim.org_auth).status_code == 200


def test_memberships_refuse_project_keys_and_bad_credentials(sim: SimHandle) -> None:
    forbidden = sim.http.get(ORG, auth=sim.project_auth(0))
    assert forbidden.status_code == 403 and "Organization-scoped API key required" in forbidden.json()["error"]
    unauthorized = sim.http.get(ORG, auth=(sim.org_public_key, "sk-lf-wrong"))
    assert unauthorized.status_code == 401 and "Invalid credentials" in unauthorized.json()["error"]


def test_memberships_other_methods_are_405(sim: SimHandle) -> None:
    response = sim.http.post(ORG, json={}, auth=sim.org_auth)
    assert (response.status_code, response.json()) == (405, {"error": "Method not allowed"})


def test_organization_projects_match_the_spec(sim: SimHandle, spec: dict[str, Any]) -> None:  # noqa: F811
    response = sim.http.get("/api/public/organizations/projects", auth=sim.org_auth)
    response_for(spec, "/api/public/organizations/projects", "get", response)
    assert {p["id"] for p in response.json()["projects"]} == {p.id for p in sim.projects}


def test_backdating_a_key_changes_its_created_at(sim: SimHandle) -> None:
    when = datetime.now(UTC) - timedelta(days=100)
    sim.control.backdate_key(sim.projects[0].public_key, when)
    keys = sim.http.get(f"/api/public/projects/{sim.projects[0].id}/apiKeys", auth=sim.org_auth).json()["apiKeys"]
    created = datetime.fromisoformat(keys[0]["createdAt"].replace("Z", "+00:00"))
    assert abs((created - when).total_seconds()) < 0.01


def test_users_and_memberships_survive_a_restart_with_a_state_file(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    first = start_sim_process("--state", str(state))
    auth = (str(first.bootstrap["org_public_key"]), str(first.bootstrap["org_secret_key"]))
    try:
        with SimulatorControl(first.url) as control:
            user = control.add_user("kept@acme.test", "Kept")
        assert httpx.put(f"{first.url}{ORG}", json={"userId": user["id"], "role": "OWNER"}, auth=auth).is_success
    finally:
        stop_sim_process(first.proc)
    second = start_sim_process("--state", str(state))
    try:
        listed = httpx.get(f"{second.url}{ORG}", auth=auth).json()["memberships"]
        assert [(m["email"], m["role"]) for m in listed] == [("kept@acme.test", "OWNER")]
    finally:
        stop_sim_process(second.proc)
