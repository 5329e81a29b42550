"""``langfuse-rotate report``: one seeded case per rule against the real simulator and stores, a clean
configuration with none, and the exit codes (0 none, 4 findings, 1 unreadable, 2 bad input).

Rule cases run on Vault (the rules read the store only through ``describe``/``read_current``,
which the store contract suite covers for both); the clean case and the stuck rotation run on
both stores.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from connectors.keypair import KeyPair
from connectors.langfuse import LangfuseAdminClient, LangfuseMemberships
from tests.fixtures.devstack import HealthStub
from tests.fixtures.inventory import InventoryEnv
from tests.fixtures.rotation import ENTRY
from tests.fixtures.stores import new_record

vault_only = pytest.mark.parametrize("any_store", ["vault"], indirect=True)


def _pair() -> KeyPair:
    return KeyPair(public_key=f"pk-lf-{uuid.uuid4()}", secret_key=SecretStr(f"sk-lf-{uuid.uuid4()}"))


def _admin(inv: InventoryEnv) -> LangfuseAdminClient:
    return LangfuseAdminClient(inv.sim.url, inv.sim.org_public_key, SecretStr(inv.sim.org_secret_key))


def _findings(data: dict[str, Any], rule: str) -> list[dict[str, Any]]:
    return [f for f in data["findings"] if f["rule"] == rule]


def test_a_clean_configuration_has_no_findings_and_exits_0(inventory_env: InventoryEnv) -> None:
    code, data = inventory_env.report()
    assert (code, data["findings"]) == (0, [])
    assert datetime.fromisoformat(data["checked_at"]) <= datetime.now(UTC)


@vault_only
def test_an_old_key_is_overdue_with_high_severity_and_exit_4(inventory_env: InventoryEnv) -> None:
    inventory_env.sim.control.backdate_key(inventory_env.project.public_key, datetime.now(UTC) - timedelta(days=100))
    code, data = inventory_env.report()
    assert code == 4
    assert data["findings"] == [
        {
            "rule": "key-overdue",
            "severity": "high",
            "entry": ENTRY,
            "project": None,
            "public_key": inventory_env.project.public_key,
            "detail": "key is 100 days old (created in Langfuse), over the 90-day limit: "
            f"langfuse-rotate rotate --project {ENTRY}",
        }
    ]


@vault_only
def test_a_key_close_to_the_limit_is_due_soon(inventory_env: InventoryEnv) -> None:
    inventory_env.sim.control.backdate_key(inventory_env.project.public_key, datetime.now(UTC) - timedelta(days=80))
    code, data = inventory_env.report()
    assert code == 4
    [finding] = data["findings"]
    assert (finding["rule"], finding["severity"], finding["entry"]) == ("key-due-soon", "low", ENTRY)
    assert "within 10 days" in finding["detail"]


@vault_only
def test_the_policy_sets_the_age_limits(inventory_env: InventoryEnv) -> None:
    inventory_env.sim.control.backdate_key(inventory_env.project.public_key, datetime.now(UTC) - timedelta(days=100))
    inventory_env.top_overrides["policy"] = {"max_key_age_days": 120, "warn_days": 10}
    assert inventory_env.rules() == []
    inventory_env.top_overrides["policy"] = {"max_key_age_days": 30, "warn_days": 10}
    assert inventory_env.rules() == ["key-overdue"]


@vault_only
def test_a_key_no_entry_stores_is_a_stray_key(inventory_env: InventoryEnv) -> None:
    extra = _pair()
    with _admin(inventory_env) as admin:
        admin.create_api_key(inventory_env.project.id, extra, note="made by hand")
    code, data = inventory_env.report()
    assert code == 4
    [finding] = data["findings"]
    assert (finding["rule"], finding["severity"]) == ("stray-key", "medium")
    assert (finding["entry"], finding["project"], finding["public_key"]) == (
        ENTRY,
        inventory_env.project.id,
        extra.public_key,
    )
    assert "made by hand" in finding["detail"] and "0 days old" in finding["detail"]


@vault_only
def test_keys_of_a_project_no_entry_covers_are_stray(inventory_env: InventoryEnv) -> None:
    created = inventory_env.sim.http.post(
        "/api/public/projects", json={"name": "uncovered"}, auth=inventory_env.sim.org_auth
    ).json()
    extra = _pair()
    with _admin(inventory_env) as admin:
        admin.create_api_key(created["id"], extra, note="someone's")
    [finding] = inventory_env.report()[1]["findings"]
    assert (finding["rule"], finding["severity"], finding["entry"]) == ("stray-key", "low", None)
    assert (finding["project"], finding["public_key"]) == (created["id"], extra.public_key)
    assert "'uncovered'" in finding["detail"]


@vault_only
def test_one_key_stored_for_two_entries_is_shared(inventory_env: InventoryEnv) -> None:
    project = inventory_env.project
    path = f"{inventory_env.path}-staging"
    inventory_env.seed(path, KeyPair(public_key=project.public_key, secret_key=SecretStr(project.secret_key)))
    inventory_env.extra_entries.append(
        {"name": "chatbot-staging", "project_id": project.id, "store": "main", "path": path}
    )
    code, data = inventory_env.report()
    assert code == 4
    shared = _findings(data, "shared-key")
    assert sorted(f["entry"] for f in shared) == sorted(["chatbot-staging", ENTRY])
    assert {f["severity"] for f in shared} == {"high"} and {f["public_key"] for f in shared} == {project.public_key}
    assert [f["rule"] for f in data["findings"]] == ["shared-key", "shared-key"]


@vault_only
def test_a_key_used_by_consumers_of_two_entries_is_shared(inventory_env: InventoryEnv, health_stub: HealthStub) -> None:
    batch_key = inventory_env.sim.projects[1].public_key
    health_stub.set(public_key=batch_key)
    inventory_env.consumers.append({"name": "api", "health_url": health_stub.health_url})
    rules = inventory_env.rules()
    assert rules == ["consumer-drift", "shared-key", "shared-key"]


@vault_only
def test_a_stored_pair_of_another_project_is_wrong_scope(inventory_env: InventoryEnv) -> None:
    misplaced = _pair()
    with _admin(inventory_env) as admin:
        admin.create_api_key(inventory_env.project.id, misplaced, note="meant for batch")
    path = f"{inventory_env.path}-batch-eu"
    inventory_env.seed(path, misplaced)
    other = inventory_env.sim.projects[1].id
    inventory_env.extra_entries.append({"name": "batch-eu", "project_id": other, "store": "main", "path": path})
    code, data = inventory_env.report()
    assert code == 4
    [finding] = data["findings"]
    assert (finding["rule"], finding["severity"], finding["entry"]) == ("wrong-scope", "high", "batch-eu")
    assert finding["public_key"] == misplaced.public_key
    assert f"authenticates to project {inventory_env.project.id}" in finding["detail"]


@vault_only
def test_a_stored_pair_that_does_not_authenticate_is_wrong_scope(inventory_env: InventoryEnv) -> None:
    dead = _pair()
    path = f"{inventory_env.path}-dead"
    inventory_env.seed(path, dead)
    inventory_env.extra_entries.append(
        {"name": "dead", "project_id": inventory_env.project.id, "store": "main", "path": path}
    )
    [finding] = inventory_env.report()[1]["findings"]
    assert (finding["rule"], finding["entry"], finding["public_key"]) == ("wrong-scope", "dead", dead.public_key)
    assert "does not authenticate" in finding["detail"]


@vault_only
def test_an_entry_with_nothing_stored_is_wrong_scope(inventory_env: InventoryEnv) -> None:
    inventory_env.extra_entries.append(
        {"name": "empty", "project_id": inventory_env.project.id, "store": "main", "path": f"{inventory_env.path}-x"}
    )
    [finding] = inventory_env.report()[1]["findings"]
    assert (finding["rule"], finding["entry"], finding["public_key"]) == ("wrong-scope", "empty", None)
    assert "no pair is stored" in finding["detail"]


def test_a_rotation_staged_too_long_is_stuck_and_names_reconcile(inventory_env: InventoryEnv) -> None:
    store, loc = inventory_env.store.store, inventory_env.location
    new = _pair()
    record = new_record(store, loc, new).model_copy(
        update={"entry": ENTRY, "started_at": datetime.now(UTC) - timedelta(hours=30)}
    )
    store.stage(loc, record, new, inventory_env.sim.url)
    code, data = inventory_env.report()
    assert code == 4
    [finding] = data["findings"]
    assert (finding["rule"], finding["severity"], finding["public_key"]) == ("rotation-stuck", "medium", new.public_key)
    assert f"langfuse-rotate reconcile --project {ENTRY}" in finding["detail"]


@vault_only
def test_a_fresh_staged_rotation_is_not_stuck(inventory_env: InventoryEnv) -> None:
    store, loc = inventory_env.store.store, inventory_env.location
    new = _pair()
    store.stage(loc, new_record(store, loc, new), new, inventory_env.sim.url)
    assert inventory_env.rules() == []


@vault_only
def test_a_consumer_on_another_key_drifts(inventory_env: InventoryEnv, health_stub: HealthStub) -> None:
    stale = _pair().public_key
    health_stub.set(public_key=stale)
    inventory_env.consumers.append({"name": "api", "health_url": health_stub.health_url})
    [finding] = inventory_env.report()[1]["findings"]
    assert (finding["rule"], finding["severity"], finding["entry"]) == ("consumer-drift", "medium", ENTRY)
    assert finding["public_key"] == stale and "consumer api" in finding["detail"]


@vault_only
def test_an_unlisted_admin_is_an_access_finding(inventory_env: InventoryEnv) -> None:
    user = inventory_env.sim.control.add_user("intern@acme.test", "Intern")
    with _admin(inventory_env) as admin:
        LangfuseMemberships(admin).set_organization_role(user["id"], "ADMIN")
    code, data = inventory_env.report()
    assert code == 4
    [finding] = data["findings"]
    assert (finding["rule"], finding["severity"], finding["public_key"]) == ("access", "high", None)
    assert "intern@acme.test is ADMIN in the organization" in finding["detail"]


@vault_only
def test_project_roles_and_listed_people_follow_the_policy(inventory_env: InventoryEnv) -> None:
    sim = inventory_env.sim
    lead = sim.control.add_user("lead@acme.test", "Lead")
    dev = sim.control.add_user("dev@acme.test", "Dev")
    with _admin(inventory_env) as admin:
        members = LangfuseMemberships(admin)
        members.set_organization_role(lead["id"], "OWNER")  # listed as owner: fine
        members.set_organization_role(dev["id"], "VIEWER")  # the default role: fine
        members.set_project_role(sim.projects[1].id, dev["id"], "MEMBER")  # above the default, unlisted
    [finding] = inventory_env.report()[1]["findings"]
    assert (finding["rule"], finding["severity"], finding["project"]) == ("access", "medium", sim.projects[1].id)
    assert "dev@acme.test is MEMBER in the project" in finding["detail"]
    inventory_env.top_overrides["policy"]["access"]["projects"] = {"sim-project-2": {"members": ["dev@acme.test"]}}
    assert inventory_env.rules() == []


@vault_only
def test_more_owners_than_allowed_is_an_access_finding(inventory_env: InventoryEnv) -> None:
    sim = inventory_env.sim
    inventory_env.top_overrides["policy"]["access"]["owners"] = ["a@acme.test", "b@acme.test"]
    inventory_env.top_overrides["policy"]["access"]["max_owners"] = 1
    with _admin(inventory_env) as admin:
        for email in ("a@acme.test", "b@acme.test"):
            LangfuseMemberships(admin).set_organization_role(sim.control.add_user(email)["id"], "OWNER")
    [finding] = inventory_env.report()[1]["findings"]
    assert (finding["rule"], finding["severity"]) == ("access", "medium")
    assert "2 owners" in finding["detail"] and "max_owners 1" in finding["detail"]


@vault_only
def test_without_the_admin_api_entitlement_the_report_says_so(inventory_env: InventoryEnv) -> None:
    """The whole admin API is gone then, keys included: the report cannot read what it needs."""
    inventory_env.sim.configure(admin_api_entitlement=False)
    code, data, _ = inventory_env.run("report")
    assert code == 1 and "not available on your current plan" in data["error"]


@vault_only
def test_without_the_project_roles_entitlement_organization_roles_are_still_checked(
    inventory_env: InventoryEnv,
) -> None:
    inventory_env.sim.configure(project_roles_entitlement=False)
    user = inventory_env.sim.control.add_user("intern@acme.test", "Intern")
    with _admin(inventory_env) as admin:
        LangfuseMemberships(admin).set_organization_role(user["id"], "OWNER")
    code, data = inventory_env.report()
    assert code == 4
    by_severity = {f["severity"]: f for f in data["findings"]}
    assert set(by_severity) == {"high", "low"}
    assert "intern@acme.test is OWNER in the organization" in by_severity["high"]["detail"]
    low = by_severity["low"]["detail"]
    assert low.startswith("project memberships could not be checked") and "project role management" in low


@vault_only
def test_without_policy_access_memberships_are_not_read(inventory_env: InventoryEnv) -> None:
    inventory_env.top_overrides["policy"] = {}
    since = inventory_env.sim.requests()["next"]
    assert inventory_env.report()[0] == 0
    paths = [r["path"] for r in inventory_env.sim.requests(since)["requests"]]
    assert not [p for p in paths if p.endswith("/memberships")]


@vault_only
def test_an_unreachable_store_exits_1_naming_it(inventory_env: InventoryEnv) -> None:
    config = inventory_env.store.config()
    inventory_env.top_overrides["stores"] = {"main": {**config, "url": "http://127.0.0.1:9", "timeout_s": 1}}
    code, data, err = inventory_env.run("report")
    assert code == 1
    assert "store 'main'" in data["error"] and "127.0.0.1:9" in data["error"]
    assert "could not read" in err


@pytest.mark.slow  # waits out the client's real retry backoff
@vault_only
def test_an_unreachable_langfuse_exits_1_naming_it(inventory_env: InventoryEnv) -> None:
    inventory_env.top_overrides["langfuse"] = {
        "host": "http://127.0.0.1:9",
        "org_public_key": inventory_env.sim.org_public_key,
        "org_secret_key": "${TEST_LANGFUSE_ORG_SECRET_KEY}",
        "timeout_s": 1,
    }
    code, data, _ = inventory_env.run("report")
    assert code == 1
    assert "Langfuse at http://127.0.0.1:9 is unreachable" in data["error"]


@vault_only
def test_a_bad_policy_is_bad_input(inventory_env: InventoryEnv) -> None:
    inventory_env.top_overrides["policy"] = {"max_key_age_days": 30, "warn_days": 30}
    code, data, err = inventory_env.run("report")
    assert code == 2
    assert "policy" in data["error"] and "warn_days must be smaller" in err


@vault_only
def test_markdown_output_and_no_secret_anywhere(inventory_env: InventoryEnv, tmp_path: Any) -> None:
    inventory_env.sim.control.backdate_key(inventory_env.project.public_key, datetime.now(UTC) - timedelta(days=100))
    target = tmp_path / "report.md"
    code, data, err = inventory_env.run("report", "--markdown", str(target))
    assert code == 4
    markdown = target.read_text()
    assert "| high | key-overdue | chatbot-prod |" in markdown
    secrets = [inventory_env.sim.org_secret_key, *(p.secret_key for p in inventory_env.sim.projects)]
    for text in (markdown, str(data), err):
        assert not [s for s in secrets if s in text]


@vault_only
def test_the_command_line_exits_4_with_one_json_object(inventory_env: InventoryEnv) -> None:
    """The real console entry point in a subprocess: stdout holds only the JSON object."""
    inventory_env.sim.control.backdate_key(inventory_env.project.public_key, datetime.now(UTC) - timedelta(days=100))
    path = inventory_env.write_config()
    proc = inventory_env.cli("report", "--config", str(path), "--json", timeout=60)
    assert proc.returncode == 4, proc.stderr
    data = json.loads(proc.stdout)
    assert [f["rule"] for f in data["findings"]] == ["key-overdue"]
    assert "key-overdue" in proc.stderr


# --- a report that could not read everything says so first, and finds nothing from what is missing ---


@vault_only
def test_with_only_the_store_down_no_entrys_own_key_is_a_stray_and_the_unchecked_rules_come_first(
    inventory_env: InventoryEnv,
) -> None:
    config = inventory_env.store.config()
    inventory_env.top_overrides["stores"] = {"main": {**config, "url": "http://127.0.0.1:9", "timeout_s": 1}}

    code, data, _ = inventory_env.run("report")
    human_code, out, err = inventory_env.human("report")

    assert code == human_code == 1
    assert data["findings"] == [], "an entry's live key is not stray because its store could not be read"
    unchecked = {(tuple(n["rules"]), n["entry"], n["project"]) for n in data["not_checked"]}
    assert (("stray-key",), None, inventory_env.project.id) in unchecked
    assert any(n["entry"] == ENTRY and "key-overdue" in n["rules"] for n in data["not_checked"])
    lines = out.splitlines()
    assert lines[0] == "not checked:"
    assert f"stray-key for project {inventory_env.project.id}: the stored key of entry {ENTRY} could not be read" in out
    assert lines[-1] == "the checks that ran found nothing; the report is incomplete"
    assert "no findings" not in out
    assert err.count("could not read store 'main'") == 1


@vault_only
def test_with_nothing_reachable_the_report_never_says_no_findings(inventory_env: InventoryEnv) -> None:
    config = inventory_env.store.config()
    inventory_env.top_overrides["stores"] = {"main": {**config, "url": "http://127.0.0.1:9", "timeout_s": 1}}
    inventory_env.top_overrides["langfuse"] = {
        **inventory_env.config_dict()["langfuse"],
        "host": "http://127.0.0.1:9",
        "timeout_s": 1,
    }
    target = inventory_env.tmp / "report.md"

    code, out, err = inventory_env.human("report", "--markdown", str(target))

    assert code == 1
    assert out.startswith("not checked:\n")
    assert "no findings" not in out.lower() and "no findings" not in target.read_text().lower()
    assert "stray-key for the organization: the organization's projects could not be read" in out
    assert "## Not checked" in target.read_text() and "the report is incomplete" in target.read_text()
    assert len(err.splitlines()) == len(set(err.splitlines())), "each problem once"


@vault_only
def test_a_consumer_that_does_not_answer_is_named_as_unchecked_drift(
    inventory_env: InventoryEnv, health_stub: HealthStub
) -> None:
    health_stub.set(mode="status500")
    inventory_env.entry_overrides["consumers"] = [{"name": "api", "health_url": health_stub.health_url}]

    code, data = inventory_env.report()

    assert code == 0 and data["findings"] == []
    [missed] = data["not_checked"]
    assert (missed["rules"], missed["entry"]) == (["consumer-drift", "shared-key"], ENTRY)
    assert missed["reason"].startswith("consumer api could not be read")


@vault_only
def test_the_human_report_names_the_key_of_a_stray_key(inventory_env: InventoryEnv) -> None:
    extra = _pair()
    with _admin(inventory_env) as admin:
        admin.create_api_key(inventory_env.project.id, extra, note="made by hand")

    code, out, _ = inventory_env.human("report")

    assert code == 4
    [line] = [line for line in out.splitlines() if "stray-key" in line]
    assert extra.public_key in line
