"""``langfuse-rotate status``: the read-only inventory against the real simulator and both stores."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from connectors.keypair import KeyPair
from flows.rotation.entry_run import execute
from flows.rotation.runners import DirectRunner
from tests.fixtures.devstack import HealthStub
from tests.fixtures.inventory import SECOND, InventoryEnv
from tests.fixtures.rotation import ENTRY
from tests.fixtures.stores import new_record

vault_only = pytest.mark.parametrize("any_store", ["vault"], indirect=True)
CONTRACT_FIELDS = [
    "project",
    "public_key",
    "store",
    "path",
    "age_days",
    "last_rotated_at",
    "last_outcome",
    "pending",
    "consumers",
    "langfuse_keys",
    "authenticates",
]


def test_status_lists_every_entry_with_the_contract_fields(inventory_env: InventoryEnv) -> None:
    code, data, _ = inventory_env.run("status")
    assert code == 0
    entries = {e["project"]: e for e in data["entries"]}
    assert list(entries) == [ENTRY, SECOND]
    first = entries[ENTRY]
    assert list(first)[: len(CONTRACT_FIELDS)] == CONTRACT_FIELDS
    assert first["public_key"] == inventory_env.project.public_key
    assert (first["store"], first["path"]) == ("main", inventory_env.path)
    assert (first["age_days"], first["age_source"]) == (0, "langfuse")
    assert (first["last_rotated_at"], first["last_outcome"], first["pending"]) == (None, None, None)
    assert (first["langfuse_keys"], first["authenticates"]) == (1, True)
    assert first["authenticated_project_id"] == inventory_env.project.id
    assert first["store_location"].endswith(inventory_env.path)


@vault_only
def test_age_comes_from_langfuse_created_at_until_the_tool_rotates(inventory_env: InventoryEnv) -> None:
    inventory_env.sim.control.backdate_key(inventory_env.project.public_key, datetime.now(UTC) - timedelta(days=40))
    code, data, _ = inventory_env.run("status", "--project", ENTRY)
    assert code == 0
    [entry] = data["entries"]
    assert (entry["age_days"], entry["age_source"]) == (40, "langfuse")
    config = inventory_env.write_config()
    assert execute("rotate", ENTRY, str(config), DirectRunner()).status == "rotated"
    [entry] = inventory_env.run("status", "--project", ENTRY)[1]["entries"]
    assert (entry["age_days"], entry["age_source"], entry["last_outcome"]) == (0, "rotation", "rotated")
    assert entry["public_key"] != inventory_env.project.public_key
    assert datetime.fromisoformat(entry["last_rotated_at"]) > datetime.now(UTC) - timedelta(minutes=5)
    assert (entry["langfuse_keys"], entry["authenticates"]) == (1, True)


@vault_only
def test_after_an_emergency_the_last_outcome_is_contained(inventory_env: InventoryEnv) -> None:
    assert execute("emergency", ENTRY, str(inventory_env.write_config()), DirectRunner()).status == "contained"
    [entry] = inventory_env.run("status", "--project", ENTRY)[1]["entries"]
    assert (entry["last_outcome"], entry["age_source"], entry["authenticates"]) == ("contained", "rotation", True)


def test_a_rotation_in_flight_is_shown_with_its_start(inventory_env: InventoryEnv) -> None:
    store, loc = inventory_env.store.store, inventory_env.location
    new = KeyPair(public_key=f"pk-lf-{uuid.uuid4()}", secret_key=SecretStr(f"sk-lf-{uuid.uuid4()}"))
    started = datetime.now(UTC) - timedelta(hours=3)
    record = new_record(store, loc, new).model_copy(update={"entry": ENTRY, "started_at": started})
    store.stage(loc, record, new, inventory_env.sim.url)
    code, data, err = inventory_env.run("status", "--project", ENTRY)
    assert code == 0
    pending = data["entries"][0]["pending"]
    assert (pending["rotation_id"], pending["new_public_key"], pending["promoted"]) == (
        record.rotation_id,
        new.public_key,
        False,
    )
    assert 2.9 < pending["hours"] < 3.1 and data["entries"][0]["last_outcome"] == "in_progress"
    assert "IN FLIGHT" in err


@vault_only
def test_consumers_show_the_key_they_report_or_why_not(inventory_env: InventoryEnv, health_stub: HealthStub) -> None:
    health_stub.set(public_key=inventory_env.project.public_key)
    inventory_env.consumers.extend(
        [
            {"name": "api", "health_url": health_stub.health_url},
            {"name": "gone", "health_url": "http://127.0.0.1:9/health", "timeout_s": 1},
        ]
    )
    code, data, _ = inventory_env.run("status", "--project", ENTRY)
    assert code == 0  # an unreachable consumer is shown, not a failure of the inventory
    [entry] = data["entries"]
    assert entry["consumers"] == {"api": inventory_env.project.public_key, "gone": None}
    assert "health check" in entry["consumer_errors"]["gone"]


@vault_only
def test_a_pair_that_no_longer_authenticates_is_shown(inventory_env: InventoryEnv) -> None:
    dead = KeyPair(public_key=f"pk-lf-{uuid.uuid4()}", secret_key=SecretStr(f"sk-lf-{uuid.uuid4()}"))
    path = f"{inventory_env.path}-dead"
    inventory_env.seed(path, dead)
    inventory_env.extra_entries.append(
        {"name": "dead", "project_id": inventory_env.project.id, "store": "main", "path": path}
    )
    [entry] = inventory_env.run("status", "--project", "dead")[1]["entries"]
    assert (entry["public_key"], entry["authenticates"], entry["age_days"]) == (dead.public_key, False, None)


@vault_only
def test_without_json_status_prints_one_block_per_entry(
    inventory_env: InventoryEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli.main import main

    assert main(["status", "--config", str(inventory_env.write_config())]) == 0
    out = capsys.readouterr().out
    assert f"{ENTRY}: {inventory_env.project.public_key}  age 0 d (langfuse)  authenticates yes" in out
    assert f"{SECOND}: " in out and "last rotated never by this tool" in out


@vault_only
def test_status_only_reads(inventory_env: InventoryEnv) -> None:
    before = inventory_env.store.store.describe(inventory_env.location)
    since = inventory_env.sim.requests()["next"]
    assert inventory_env.run("status")[0] == 0
    methods = {r["method"] for r in inventory_env.sim.requests(since)["requests"]}
    assert methods == {"GET"}
    assert inventory_env.store.store.describe(inventory_env.location) == before


@vault_only
def test_an_unknown_project_is_bad_input(inventory_env: InventoryEnv) -> None:
    code, data, err = inventory_env.run("status", "--project", "nope")
    assert code == 2 and "unknown project 'nope'" in data["error"] and "nope" in err


@vault_only
def test_an_unreachable_store_exits_1_and_names_it(inventory_env: InventoryEnv) -> None:
    config = inventory_env.store.config()
    inventory_env.top_overrides["stores"] = {"main": {**config, "url": "http://127.0.0.1:9", "timeout_s": 1}}
    code, data, err = inventory_env.run("status")
    assert code == 1
    assert "store 'main'" in data["error"] and "could not read" in err
    assert [e["error"] is not None for e in data["entries"]] == [True, True]


@vault_only
def test_an_unreadable_store_credential_exits_1_and_names_it(inventory_env: InventoryEnv) -> None:
    config = {k: v for k, v in inventory_env.store.config().items() if k != "token"}
    approle = {"role_id": "r", "secret_id_file": "/nonexistent/secret-id"}
    inventory_env.top_overrides["stores"] = {"main": {**config, "approle": approle}}
    code, data, _ = inventory_env.run("status")
    assert code == 1
    assert "cannot read approle secret_id_file /nonexistent/secret-id" in data["error"]


@vault_only
def test_status_works_without_prefect(inventory_env: InventoryEnv) -> None:
    """No Prefect server (the configured one does not answer) and Prefect never imported."""
    path = inventory_env.write_config()
    code = (
        "import sys; from flows.cli.main import main; rc = main(sys.argv[1:]); "
        "print('PREFECT_LOADED' if 'prefect' in sys.modules else 'NO_PREFECT', file=sys.stderr); sys.exit(rc)"
    )
    env = {**inventory_env.env, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    proc = subprocess.run(
        [sys.executable, "-c", code, "status", "--config", str(path), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr
    assert "NO_PREFECT" in proc.stderr
    assert [e["project"] for e in json.loads(proc.stdout)["entries"]] == [ENTRY, SECOND]


def _store_down(inventory_env: InventoryEnv) -> None:
    config = inventory_env.store.config()
    inventory_env.top_overrides["stores"] = {"main": {**config, "url": "http://127.0.0.1:9", "timeout_s": 1}}


def _langfuse_down(inventory_env: InventoryEnv) -> None:
    inventory_env.top_overrides["langfuse"] = {
        **inventory_env.config_dict()["langfuse"],
        "host": "http://127.0.0.1:9",
        "timeout_s": 1,
    }


@vault_only
def test_with_the_store_unreachable_the_key_is_unknown_not_missing_and_the_problem_is_said_once(
    inventory_env: InventoryEnv,
) -> None:
    _store_down(inventory_env)

    code, out, err = inventory_env.human("status")

    assert code == 1
    assert out.count("key unknown (the store could not be read)") == 2
    assert "no key stored" not in out and "never by this tool" not in out
    assert "error" not in out, "why is said on stderr, once"
    assert err.splitlines() == [
        "langfuse-rotate: error: could not read store 'main': Vault at http://127.0.0.1:9 is unreachable "
        f"(entries {ENTRY}, {SECOND})"
    ]


@vault_only
def test_a_store_that_answers_without_a_pair_says_no_key_stored(inventory_env: InventoryEnv) -> None:
    inventory_env.extra_entries.append(
        {"name": "nothing-here", "project_id": inventory_env.project.id, "store": "main", "path": "langfuse/none"}
    )

    code, out, _ = inventory_env.human("status", "--project", "nothing-here")

    assert code == 0
    assert out.startswith("nothing-here: no key stored  age unknown  authenticates unknown")


@vault_only
def test_with_langfuse_unreachable_status_prints_no_none_and_one_line_per_failed_call(
    inventory_env: InventoryEnv,
) -> None:
    _langfuse_down(inventory_env)

    code, out, err = inventory_env.human("status", "--project", ENTRY)

    assert code == 1
    assert "None" not in out
    assert "Langfuse keys in project: unknown" in out and "authenticates unknown" in out
    lines = err.splitlines()
    assert len(lines) == 2, lines  # the key list and the authentication check: one line each
    assert any(f"Langfuse keys of project {inventory_env.project.id}" in line for line in lines)
    assert any(f"whether {inventory_env.project.public_key} authenticates" in line for line in lines)
    assert all("Langfuse at http://127.0.0.1:9 is unreachable" in line for line in lines)


@vault_only
def test_an_unreachable_langfuse_is_not_retried_and_no_retry_is_shown(inventory_env: InventoryEnv) -> None:
    """Connection refused by a host that never answered: no backoff, and no "retrying" lines."""
    _langfuse_down(inventory_env)
    path = inventory_env.write_config()

    proc = inventory_env.cli("status", "--config", str(path), timeout=60)

    assert proc.returncode == 1
    assert "retrying" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 4, proc.stderr  # 2 key lists + 2 authentication checks


@vault_only
def test_a_store_path_in_a_consumer_urls_query_is_shown_but_its_credentials_are_not(
    inventory_env: InventoryEnv, health_stub: HealthStub
) -> None:
    from flows.redact import scrub

    token = f"tok-{uuid.uuid4().hex}"
    url = f"{health_stub.health_url}?path={inventory_env.path}&token={token}"
    inventory_env.entry_overrides["consumers"] = [{"name": "api", "health_url": url}]

    _, out, _ = inventory_env.human("status", "--project", ENTRY)

    assert f"{inventory_env.store.store.location_label(inventory_env.location)};" in out
    assert "***" not in out.splitlines()[1], out
    assert token not in out and scrub(f"token={token}") == "token=***"
