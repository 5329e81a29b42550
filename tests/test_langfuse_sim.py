"""Behaviour of the Langfuse API simulator, exercised over HTTP against the real subprocess."""

from __future__ import annotations

import httpx

from tests.fixtures.langfuse_sim import SimHandle


def test_project_key_lists_exactly_its_project(sim: SimHandle) -> None:
    project = sim.projects[0]
    response = httpx.get(f"{sim.url}/api/public/projects", auth=(project.public_key, project.secret_key))
    assert response.status_code == 200
    (only,) = response.json()["data"]
    assert only["id"] == project.id
    assert only["organization"]["id"] == sim.org_id


def test_create_then_delete_project_key_rejects_it(sim: SimHandle) -> None:
    org = (sim.org_public_key, sim.org_secret_key)
    project = sim.projects[0]
    created = httpx.post(f"{sim.url}/api/public/projects/{project.id}/apiKeys", json={}, auth=org)
    assert created.status_code == 201
    new = created.json()
    assert httpx.get(f"{sim.url}/api/public/projects", auth=(new["publicKey"], new["secretKey"])).status_code == 200
    deleted = httpx.delete(f"{sim.url}/api/public/projects/{project.id}/apiKeys/{new['id']}", auth=org)
    assert deleted.json() == {"success": True}
    after = httpx.get(f"{sim.url}/api/public/projects", auth=(new["publicKey"], new["secretKey"]))
    assert after.status_code == 401
