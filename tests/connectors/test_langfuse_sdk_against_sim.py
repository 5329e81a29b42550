"""The real `langfuse` SDK 5.x against the simulator: its pydantic models must parse every response.

A wrong response shape would surface here as `pydantic_core.ValidationError`.
Every test uses freshly created keys, so the SDK's per-public-key client singletons never collide.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from langfuse import Langfuse
from langfuse.api import Error as BadRequestError
from langfuse.api import LangfuseAPI, UnauthorizedError
from langfuse.api.core.api_error import ApiError
from langfuse.api.projects.types.api_key_response import ApiKeyResponse
from opentelemetry.sdk.trace import TracerProvider

from tests.fixtures.langfuse_sim import SimHandle

INVALID_CREDENTIALS = "Invalid credentials. Confirm that you've configured the correct host."


@pytest.fixture
def org_api(sim: SimHandle) -> Iterator[LangfuseAPI]:
    yield LangfuseAPI(base_url=sim.url, username=sim.org_public_key, password=sim.org_secret_key, timeout=10)


def _predefined() -> tuple[str, str]:
    return f"pk-lf-{uuid.uuid4()}", f"sk-lf-{uuid.uuid4()}"


def _new_key(org_api: LangfuseAPI, project_id: str) -> ApiKeyResponse:
    public_key, secret_key = _predefined()
    created: ApiKeyResponse = org_api.projects.create_api_key(project_id, public_key=public_key, secret_key=secret_key)
    return created


def test_sdk_lists_organization_projects(sim: SimHandle, org_api: LangfuseAPI) -> None:
    projects = org_api.organizations.get_organization_projects().projects
    assert [p.id for p in projects] == [p.id for p in sim.projects]


def test_sdk_lists_organization_api_keys(sim: SimHandle, org_api: LangfuseAPI) -> None:
    (key,) = org_api.organizations.get_organization_api_keys().api_keys
    assert key.public_key == sim.org_public_key and key.last_used_at is None


def test_sdk_creates_lists_and_deletes_a_predefined_project_key(sim: SimHandle, org_api: LangfuseAPI) -> None:
    project_id = sim.projects[0].id
    public_key, secret_key = _predefined()
    created = org_api.projects.create_api_key(project_id, note="rotation", public_key=public_key, secret_key=secret_key)
    assert (created.public_key, created.secret_key, created.note) == (public_key, secret_key, "rotation")
    listed = org_api.projects.get_api_keys(project_id).api_keys
    assert public_key in [k.public_key for k in listed]
    assert all(k.last_used_at is None and k.expires_at is None for k in listed)
    assert org_api.projects.delete_api_key(project_id, created.id).success is True
    assert public_key not in [k.public_key for k in org_api.projects.get_api_keys(project_id).api_keys]


def test_sdk_create_without_note_parses_a_null_note(sim: SimHandle, org_api: LangfuseAPI) -> None:
    created = _new_key(org_api, sim.projects[1].id)
    assert created.note is None and created.display_secret_key.startswith("sk-lf-...")


def test_sdk_create_with_no_fields_is_400_because_the_body_is_empty_text(sim: SimHandle, org_api: LangfuseAPI) -> None:
    """The SDK then sends no body and no Content-Type; Next.js hands the handler `""`, which zod rejects.

    A client must pass at least one field (e.g. a note), or POST `{}` itself.
    """
    with pytest.raises(BadRequestError) as caught:
        org_api.projects.create_api_key(sim.projects[1].id)
    assert caught.value.body == {
        "message": "Invalid request body",
        "details": {"_errors": ["Expected object, received string"]},
    }


def test_sdk_health_parses(org_api: LangfuseAPI) -> None:
    health = org_api.health.health()
    assert (health.status, health.version) == ("OK", "4.16.0")


def test_sdk_project_key_passes_auth_check(sim: SimHandle, org_api: LangfuseAPI) -> None:
    key = _new_key(org_api, sim.projects[0].id)
    client = Langfuse(
        public_key=key.public_key, secret_key=key.secret_key, base_url=sim.url, tracer_provider=TracerProvider()
    )
    try:
        assert client.auth_check() is True
    finally:
        client.shutdown()


def test_sdk_trace_via_otel_is_readable_through_v2_observations(sim: SimHandle, org_api: LangfuseAPI) -> None:
    key = _new_key(org_api, sim.projects[0].id)
    client = Langfuse(
        public_key=key.public_key, secret_key=key.secret_key, base_url=sim.url, tracer_provider=TracerProvider()
    )
    try:
        with client.start_as_current_observation(name="rotation-canary") as span:
            trace_id = span.trace_id
        client.flush()
    finally:
        client.shutdown()
    exports = [r for r in sim.requests()["requests"] if r["path"] == "/api/public/otel/v1/traces"]
    assert [(r["status"], r["public_key"]) for r in exports] == [(200, key.public_key)]
    reader = LangfuseAPI(base_url=sim.url, username=key.public_key, password=key.secret_key, timeout=10)
    deadline = time.monotonic() + 5
    observations = reader.observations.get_many(trace_id=trace_id).data
    while not observations and time.monotonic() < deadline:
        time.sleep(0.05)
        observations = reader.observations.get_many(trace_id=trace_id).data
    (observation,) = observations
    assert (observation.name, observation.trace_id, observation.project_id) == (
        "rotation-canary",
        trace_id,
        sim.projects[0].id,
    )


def test_sdk_deleted_key_gets_the_exact_401_message(sim: SimHandle, org_api: LangfuseAPI) -> None:
    key = _new_key(org_api, sim.projects[0].id)
    org_api.projects.delete_api_key(sim.projects[0].id, key.id)
    revoked = LangfuseAPI(base_url=sim.url, username=key.public_key, password=key.secret_key, timeout=10)
    with pytest.raises(UnauthorizedError) as caught:
        revoked.projects.get()
    assert caught.value.status_code == 401
    assert caught.value.body == {"message": INVALID_CREDENTIALS}


def test_sdk_spans_from_a_revoked_key_are_rejected_with_401(sim: SimHandle, org_api: LangfuseAPI) -> None:
    key = _new_key(org_api, sim.projects[0].id)
    client = Langfuse(
        public_key=key.public_key, secret_key=key.secret_key, base_url=sim.url, tracer_provider=TracerProvider()
    )
    try:
        org_api.projects.delete_api_key(sim.projects[0].id, key.id)
        with client.start_as_current_observation(name="after-revocation"):
            pass
        client.flush()  # never raises: the exporter only logs the 401
    finally:
        client.shutdown()
    exports = [r for r in sim.requests()["requests"] if r["path"] == "/api/public/otel/v1/traces"]
    assert exports and all((r["status"], r["public_key"]) == (401, None) for r in exports)


def test_sdk_retries_an_injected_503_and_creates_exactly_one_key(sim: SimHandle, org_api: LangfuseAPI) -> None:
    project_id = sim.projects[0].id
    sim.inject_fault(f"/api/public/projects/{project_id}/apiKeys", method="POST", status=503, retry_after=1)
    created = org_api.projects.create_api_key(project_id, note="after-retry")
    notes = [k.note for k in org_api.projects.get_api_keys(project_id).api_keys]
    assert notes.count("after-retry") == 1 and created.note == "after-retry"


def test_sdk_retry_of_an_ambiguous_create_hits_409(sim: SimHandle, org_api: LangfuseAPI) -> None:
    """The key is created but the client sees 503; the SDK's own retry then collides with it."""
    project_id = sim.projects[0].id
    public_key, secret_key = _predefined()
    sim.inject_fault(f"/api/public/projects/{project_id}/apiKeys", method="POST", status=503, retry_after=1, after=True)
    with pytest.raises(ApiError) as caught:
        org_api.projects.create_api_key(
            project_id, public_key=public_key, secret_key=secret_key, request_options={"max_retries": 1}
        )
    assert caught.value.status_code == 409
    assert public_key in [k.public_key for k in org_api.projects.get_api_keys(project_id).api_keys]
