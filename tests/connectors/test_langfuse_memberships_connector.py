"""``LangfuseMemberships`` against the simulator: list, set and remove roles, and the errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from connectors.errors import LangfuseForbiddenError, LangfuseNotFoundError
from connectors.langfuse import LangfuseAdminClient, LangfuseMemberships
from tests.fixtures.langfuse_sim import SimHandle


@pytest.fixture
def members(sim: SimHandle) -> Iterator[LangfuseMemberships]:
    with LangfuseAdminClient(sim.url, sim.org_public_key, SecretStr(sim.org_secret_key), timeout_s=5) as admin:
        yield LangfuseMemberships(admin)


def test_organization_roles_are_set_listed_and_removed(sim: SimHandle, members: LangfuseMemberships) -> None:
    user = sim.control.add_user("ops@acme.test", "Ops")
    assert members.organization() == []
    set_to = members.set_organization_role(user["id"], "ADMIN")
    assert (set_to.user_id, set_to.role, set_to.email, set_to.name) == (user["id"], "ADMIN", "ops@acme.test", "Ops")
    assert [(m.email, m.role) for m in members.organization()] == [("ops@acme.test", "ADMIN")]
    members.remove_from_organization(user["id"])
    members.remove_from_organization(user["id"])  # idempotent
    assert members.organization() == []


def test_project_roles_need_an_organization_member(sim: SimHandle, members: LangfuseMemberships) -> None:
    user = sim.control.add_user("dev@acme.test", "Dev")
    project = sim.projects[0].id
    with pytest.raises(LangfuseNotFoundError, match="not a member of this organization"):
        members.set_project_role(project, user["id"], "MEMBER")
    members.set_organization_role(user["id"], "VIEWER")
    members.set_project_role(project, user["id"], "MEMBER")
    assert [(m.email, m.role) for m in members.project(project)] == [("dev@acme.test", "MEMBER")]
    assert members.remove_from_project(project, user["id"]) is True
    assert members.remove_from_project(project, user["id"]) is False


def test_an_unknown_project_is_not_found(members: LangfuseMemberships) -> None:
    with pytest.raises(LangfuseNotFoundError):
        members.project("no-such-project")


def test_without_the_entitlement_reads_are_forbidden_with_a_clear_message(
    sim: SimHandle, members: LangfuseMemberships
) -> None:
    sim.configure(admin_api_entitlement=False)
    with pytest.raises(LangfuseForbiddenError) as caught:
        members.organization()
    message = str(caught.value)
    assert "not available on your current plan" in message and "admin API" in message
    assert sim.org_secret_key not in message
