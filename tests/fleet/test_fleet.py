"""Fleet rotation (``rotate --all``): every entry concurrently, paced, one summary, partial failure.

A small fleet (a dozen keys of one simulator project, each in its own store path, each with a
consumer in ``devstack.fleet_consumers``) checks behaviour, not speed: the speed figures come from
``benchmarks/fleet.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from connectors import pacing
from connectors.keypair import KeyPair
from connectors.langfuse import LangfuseAdminClient
from connectors.prefect_api import PrefectApi
from connectors.store import SecretLocation
from devstack.fleet_consumers import FleetConsumers
from devstack.prefect_server import PrefectServer
from flows.config.model import parse_config
from flows.fleet.run import FleetResult, fleet_exit_code, run_fleet
from flows.models import ExitCode, RotationResult
from flows.rotation.lock import lock_name
from tests.fixtures.calls import recorded_calls
from tests.fixtures.prefect import slot_taken, state_history, wait_for_paused_run
from tests.fixtures.rotation import RotationEnv

REPO = Path(__file__).resolve().parents[2]
vault_only = pytest.mark.parametrize("any_store", ["vault"], indirect=True)
aws_only = pytest.mark.parametrize("any_store", ["aws"], indirect=True)


@dataclass
class Fleet:
    env: RotationEnv
    consumers: FleetConsumers
    paths: dict[str, str]
    originals: dict[str, str]

    def config_dict(self, **top: Any) -> dict[str, Any]:
        config = self.env.config_dict()
        config["projects"] = [self.entry(name) for name in self.paths]
        config.update(top)
        return config

    def entry(self, name: str) -> dict[str, Any]:
        path = self.paths[name]
        return {
            "name": name,
            "project_id": self.env.project.id,
            "store": "main",
            "path": path,
            "consumers": [
                {
                    "name": "app",
                    "health_url": self.consumers.health_url(path),
                    "restart_url": self.consumers.restart_url(path),
                }
            ],
            "wait_timeout_s": 4,
            "grace_period_s": 0,
            "canary_timeout_s": 5,
            "revoke_recheck_s": 1,
        }

    def write_config(self, **top: Any) -> Path:
        path = self.env.tmp / "fleet.yaml"
        path.write_text(yaml.safe_dump(self.config_dict(**top), sort_keys=False))
        return path

    def config(self, **top: Any) -> Any:
        return parse_config(yaml.safe_dump(self.config_dict(**top), sort_keys=False))

    def current(self, name: str) -> str | None:
        return self.env.store.store.describe(SecretLocation(path=self.paths[name])).current_public_key


def _seed(env: RotationEnv, count: int, consumers: FleetConsumers) -> Fleet:
    paths: dict[str, str] = {}
    originals: dict[str, str] = {}
    with LangfuseAdminClient(env.sim.url, env.sim.org_public_key, SecretStr(env.sim.org_secret_key)) as admin:
        for i in range(count):
            name = f"svc-{i:02d}"
            pair = KeyPair.generate()
            admin.create_api_key(env.project.id, pair, note=f"seed {name}")
            path = f"{env.path}/{name}"
            env.store.store.seed(SecretLocation(path=path), pair, env.sim.url)
            paths[name] = path
            originals[name] = pair.public_key
            assert consumers.key_of(path) == pair.public_key  # the consumer starts on the seeded key
    return Fleet(env=env, consumers=consumers, paths=paths, originals=originals)


@pytest.fixture
def fleet_factory(rotation_env: RotationEnv) -> Iterator[Any]:
    started: list[FleetConsumers] = []

    def make(count: int, *, restart_delay_s: float = 0.0) -> Fleet:
        consumers = FleetConsumers(rotation_env.store.store, restart_delay_s=restart_delay_s).start()
        started.append(consumers)
        return _seed(rotation_env, count, consumers)

    yield make
    for consumers in started:
        consumers.stop()


# --- behaviour ----------------------------------------------------------------------------------


@vault_only
@pytest.mark.slow  # waits for consumers by design
def test_every_entry_is_rotated_concurrently_and_the_waits_for_consumers_overlap(fleet_factory: Any) -> None:
    fleet = fleet_factory(10, restart_delay_s=2.0)

    result = run_fleet(fleet.config(), config_path=None, concurrency=10)

    assert result.status == "rotated", [(e.project, e.status, e.error) for e in result.entries]
    assert result.counts == {"rotated": 10}
    assert result.exit_code == ExitCode.OK
    for name in fleet.paths:
        assert fleet.current(name) not in (None, fleet.originals[name])
    # One after another, no two consumers would ever be rolling out at once (how much sooner the
    # fleet finishes is benchmarks/fleet.py's to measure).
    assert fleet.consumers.most_rolling_out_at_once >= 2, fleet.consumers.most_rolling_out_at_once
    waits = [s.duration_s for e in result.entries for s in e.steps if s.step == "wait_for_restarts"]
    assert len(waits) == 10 and min(waits) >= 1.5


@vault_only
@pytest.mark.slow  # the failing entry waits out its consumer deadline
def test_one_failing_entry_rolls_back_alone_and_the_fleet_sends_one_summary(fleet_factory: Any) -> None:
    fleet = fleet_factory(6)
    fleet.consumers.configure(stuck=[fleet.paths["svc-03"]])

    result = run_fleet(fleet.config(), config_path=None, concurrency=3)

    by_name = {e.project: e for e in result.entries}
    assert by_name["svc-03"].status == "rolled_back"
    assert fleet.current("svc-03") == fleet.originals["svc-03"], "the failed entry keeps its old pair"
    assert all(by_name[n].status == "rotated" for n in fleet.paths if n != "svc-03")
    assert result.status == "partial"
    assert result.counts == {"rolled_back": 1, "rotated": 5}
    assert result.exit_code == ExitCode.FAILED
    # Notifications are sent before run_fleet returns: what the sink holds now is all there is.
    notes = fleet.env.sink.received()
    assert len(notes) == 1, [n.json["title"] for n in notes]
    body = notes[0].json["message"]
    assert "svc-03 (rolled_back)" in body
    assert "rotated 5" in body
    assert "svc-00" not in body, "successes are counted, not listed"


def _result(status: str) -> RotationResult:
    return RotationResult(status=status, project=status)  # type: ignore[arg-type]


def test_the_exit_code_puts_a_person_first_then_failures_then_refusals() -> None:
    assert fleet_exit_code([_result("rotated"), _result("skipped")]) == ExitCode.OK
    assert fleet_exit_code([_result("rotated"), _result("in_progress")]) == ExitCode.IN_PROGRESS
    assert fleet_exit_code([_result("in_progress"), _result("rolled_back")]) == ExitCode.FAILED
    assert fleet_exit_code([_result("failed"), _result("needs_attention"), _result("in_progress")]) == (
        ExitCode.NEEDS_ATTENTION
    )


def _record_langfuse_pacing(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[Any]]:
    """Every pause of a fleet pacer ``(pacer, at, seconds)`` and every request it let through
    ``(pacer, at)``, on ``time.monotonic``."""
    from flows.fleet.pacing import Pacer

    pauses = recorded_calls(monkeypatch, Pacer, "slow_down", lambda pacer, s: (pacer, time.monotonic(), s))
    passed: list[tuple[Pacer, float]] = []
    acquire = Pacer.acquire

    def acquire_and_note(pacer: Pacer) -> None:
        acquire(pacer)
        passed.append((pacer, time.monotonic()))

    monkeypatch.setattr(Pacer, "acquire", acquire_and_note)
    return pauses, passed


def _passed_during(pauses: list[Any], passed: list[Any]) -> list[float]:
    """Seconds into a pause at which a request of the paused pacer went through anyway. A request
    released a moment before the pause began may still be on its way: 0.25 s of grace."""
    return [t - at for pacer, at, seconds in pauses for p, t in passed if p is pacer and at + 0.25 < t < at + seconds]


@vault_only
@pytest.mark.slow  # waits out the Retry-After the storm asks for
def test_a_429_storm_slows_the_whole_fleet_and_no_entry_fails(
    fleet_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = fleet_factory(5)
    fleet.env.sim.configure(rate_limits={"public-api": [12, 3]})
    since = fleet.env.sim.requests()["next"]
    key = pacing.langfuse_key(fleet.env.sim.url)
    counted_before = pacing.requests[f"{key} 429"]
    pauses, passed = _record_langfuse_pacing(monkeypatch)

    result = run_fleet(fleet.config(), config_path=None, concurrency=5)

    assert result.counts == {"rotated": 5}, [(e.project, e.error) for e in result.entries]
    served = [r["status"] for r in fleet.env.sim.requests(since)["requests"]].count(429)
    assert served >= 1, "the simulator's limit was reached"
    assert pacing.requests[f"{key} 429"] - counted_before == served, "the fleet counted every 429 it was served"
    assert len(pauses) == served and all(s >= 1 for _, _, s in pauses), "each 429 paused the fleet for Retry-After"
    assert _passed_during(pauses, passed) == []


@vault_only
@pytest.mark.slow  # waits out the Retry-After the 429 asks for
def test_one_entrys_429_pauses_every_entrys_langfuse_requests(
    fleet_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One 429 (on the first key creation) while the other entries go on to their next Langfuse
    requests: they wait out its Retry-After too, though the server would have answered them."""
    fleet = fleet_factory(5)
    fleet.env.sim.inject_fault(
        f"/api/public/projects/{fleet.env.project.id}/apiKeys", method="POST", status=429, retry_after=3, count=1
    )
    pauses, passed = _record_langfuse_pacing(monkeypatch)

    result = run_fleet(fleet.config(), config_path=None, concurrency=5)

    assert result.counts == {"rotated": 5}, [(e.project, e.error) for e in result.entries]
    ((paused, _, seconds),) = pauses
    assert seconds == 3
    assert len([p for p, _ in passed if p is paused]) > 5, "the other entries had Langfuse requests to make"
    assert _passed_during(pauses, passed) == []


@pytest.mark.slow  # paced to 200 requests a minute: about 8 s of waiting by design
@vault_only
def test_with_max_requests_per_min_below_the_servers_limit_no_request_is_refused(fleet_factory: Any) -> None:
    fleet = fleet_factory(4)
    fleet.env.sim.configure(rate_limits={"public-api": [20, 5], "ingestion": [20, 5]})
    config = fleet.config_dict()
    config["langfuse"]["max_requests_per_min"] = 200  # 16.7 per 5 s window, below 20
    since = fleet.env.sim.requests()["next"]

    result = run_fleet(parse_config(yaml.safe_dump(config)), config_path=None, concurrency=4)

    assert result.counts == {"rotated": 4}
    statuses = [r["status"] for r in fleet.env.sim.requests(since)["requests"]]
    assert 429 not in statuses
    assert len(statuses) >= 4 * 6  # list, create, canary, its read, delete, revocation probe per entry


@aws_only
@pytest.mark.slow  # paced writes: waiting by design
def test_aws_writes_are_paced_to_max_writes_per_s(fleet_factory: Any) -> None:
    fleet = fleet_factory(4)
    config = fleet.config_dict()
    config["stores"]["main"]["max_writes_per_s"] = 4
    key = pacing.aws_key(config["stores"]["main"]["region"], config["stores"]["main"].get("endpoint_url"))
    before = pacing.requests[f"{key} paced"]

    started = time.monotonic()
    result = run_fleet(parse_config(yaml.safe_dump(config)), config_path=None, concurrency=4)
    elapsed = time.monotonic() - started

    assert result.counts == {"rotated": 4}
    writes = pacing.requests[f"{key} paced"] - before
    assert writes >= 8  # PutSecretValue + UpdateSecretVersionStage per entry at the least
    assert elapsed >= (writes - 1) / 4


def test_the_aws_store_paces_writes_at_40_per_second_unless_configured() -> None:
    text = """
langfuse: {host: http://127.0.0.1:1, org_public_key: pk-lf-x, org_secret_key: sk-lf-y}
stores:
  a: {kind: aws, region: us-east-1}
  v: {kind: vault, url: http://127.0.0.1:8200, token: t}
projects: []
"""
    config = parse_config(text)
    assert config.stores["a"].max_writes_per_s == 40
    assert config.stores["v"].max_writes_per_s is None
    assert config.langfuse.max_requests_per_min is None
    assert config.fleet.concurrency == 24 and config.fleet.skip_window_s == 30 * 86400


@vault_only
def test_entries_rotated_within_the_window_are_skipped(fleet_factory: Any) -> None:
    fleet = fleet_factory(3)
    first = run_fleet(fleet.config(), config_path=None, concurrency=3)
    rotated = {n: fleet.current(n) for n in fleet.paths}

    again = run_fleet(fleet.config(), config_path=None, concurrency=3)

    assert first.counts == {"rotated": 3}
    assert again.counts == {"skipped": 3} and again.status == "rotated" and again.exit_code == ExitCode.OK
    assert {n: fleet.current(n) for n in fleet.paths} == rotated, "no key rotated twice"
    off = run_fleet(fleet.config(fleet={"skip_if_rotated_within": 0}), config_path=None, concurrency=3)
    assert off.counts == {"rotated": 3}


@vault_only
def test_a_fleet_where_every_entry_was_skipped_says_nothing_to_rotate_and_sends_only_a_note(
    fleet_factory: Any,
) -> None:
    from flows.cli.fleet import print_fleet

    fleet = fleet_factory(3)
    run_fleet(fleet.config(), config_path=None, concurrency=3)
    fleet.env.sink.wait_for(1, timeout_s=10)
    fleet.env.sink.clear()

    again = run_fleet(fleet.config(), config_path=None, concurrency=3)
    said: list[str] = []
    print_fleet(again, "langfuse-rotate", said.append)

    assert again.nothing_to_rotate and again.counts == {"skipped": 3}
    assert said[-1].startswith("langfuse-rotate rotate --all: nothing to rotate: 3 skipped in ")
    (note,) = fleet.env.sink.wait_for(1, timeout_s=10)
    assert note.json["type"] == "info"
    assert note.json["title"] == "Langfuse fleet rotation: nothing to rotate (3 skipped of 3)"


@vault_only
def test_a_fleet_dry_run_shows_what_would_be_done_for_each_entry(fleet_factory: Any) -> None:
    from flows.cli.fleet import print_fleet

    fleet = fleet_factory(2)

    result = run_fleet(fleet.config(), config_path=None, concurrency=2, dry_run=True)
    said: list[str] = []
    print_fleet(result, "langfuse-rotate", said.append)

    assert result.status == "planned"
    for name, key in fleet.originals.items():
        [row] = [i for i, line in enumerate(said) if line.strip().startswith(name)]
        assert f"current {key} (the rotation creates the new pair)" in said[row]
        assert said[row + 1].strip().startswith("plan: create a new pair in project"), said
        assert "None" not in said[row]


@vault_only
def test_a_fleet_entry_reads_its_state_before_the_lock_once(
    fleet_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The skip check's answer is the state the run compares with once it holds the lock; then the
    plan starts from the state read under the lock, and reconcile reads afresh: three reads."""
    from connectors.vault import VaultStore

    fleet = fleet_factory(2)
    described = recorded_calls(
        monkeypatch,
        VaultStore,
        "describe",
        lambda store, loc: loc.path,
        when=lambda: threading.current_thread().name.startswith("fleet"),  # not the consumers' reloads
    )

    result = run_fleet(fleet.config(), config_path=None, concurrency=2)

    assert result.counts == {"rotated": 2}
    assert sorted(described) == sorted([*fleet.paths.values()] * 3), described


# --- templates ----------------------------------------------------------------------------------


def _template_config(fleet: Fleet, env: RotationEnv) -> Path:
    """A configuration whose only entries come from ``project_template``: every simulator project
    but the second, each project's bootstrap key stored at ``<path>/<project name>``."""
    sim = env.sim
    for project in sim.projects:
        pair = KeyPair(public_key=project.public_key, secret_key=SecretStr(project.secret_key))
        env.store.store.seed(SecretLocation(path=f"{env.path}/{project.name}"), pair, sim.url)
    config = fleet.config_dict()
    config["projects"] = []
    config["project_template"] = {
        "include": ["sim-project-*"],
        "exclude": [sim.projects[1].name],
        "name": "{project_name}",
        "store": "main",
        "path": f"{env.path}/{{project_name}}",
        "consumers": [
            {
                "name": "app",
                "health_url": fleet.consumers.health_url(f"{env.path}/{{project_name}}"),
                "restart_url": fleet.consumers.restart_url(f"{env.path}/{{project_name}}"),
            }
        ],
        "grace_period_s": 0,
        "canary_timeout_s": 5,
    }
    path = env.tmp / "template.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@vault_only
def test_the_template_generates_an_entry_per_matching_project_and_dry_run_lists_them(
    fleet_factory: Any, rotation_env: RotationEnv
) -> None:
    fleet = fleet_factory(0)
    sim = rotation_env.sim
    names = [p.name for p in sim.projects]
    path = _template_config(fleet, rotation_env)

    proc = rotation_env.cli("rotate", "--config", str(path), "--all", "--dry-run", "--json")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == "planned" and out["total"] == 1
    assert [e["project"] for e in out["entries"]] == [names[0]]
    assert out["template"] == [
        {"project": names[0], "project_id": sim.projects[0].id, "entry": names[0], "problem": None}
    ]
    assert "project_template expands to:" in proc.stderr and names[0] in proc.stderr


@vault_only
def test_a_fleet_run_rotates_the_entries_the_template_generates_and_only_those(
    fleet_factory: Any, rotation_env: RotationEnv
) -> None:
    fleet = fleet_factory(0)
    sim = rotation_env.sim
    included, excluded = sim.projects[0], sim.projects[1]
    path = _template_config(fleet, rotation_env)

    result = run_fleet(parse_config(path.read_text()), config_path=str(path))

    out = json.loads(result.to_json_line())
    assert out["status"] == "rotated" and out["counts"] == {"rotated": 1}, out
    (entry,) = out["entries"]
    assert (entry["project"], entry["old_public_key"]) == (included.name, included.public_key)
    stored = rotation_env.store.store.read_current(SecretLocation(path=f"{rotation_env.path}/{included.name}"))
    assert stored.key_pair().public_key == entry["new_public_key"] != included.public_key
    assert rotation_env.works(stored.key_pair()), "the generated entry's new pair works"
    assert not rotation_env.works(KeyPair(public_key=included.public_key, secret_key=SecretStr(included.secret_key)))
    untouched = rotation_env.store.store.read_current(SecretLocation(path=f"{rotation_env.path}/{excluded.name}"))
    assert untouched.key_pair().public_key == excluded.public_key, "the excluded project is left alone"
    assert fleet.consumers.key_of(f"{rotation_env.path}/{included.name}") == entry["new_public_key"]


# --- the entries' locks on a Prefect server (flows.fleet.group_lease) ---------------------------


@pytest.fixture
def slot_requests(monkeypatch: pytest.MonkeyPatch, prefect_server: PrefectServer) -> dict[str, list[Any]]:
    """The slot requests a fleet makes: by group (the names asked for) and one entry at a time.
    The server is named in the environment, as a worker's is: the fleet's threads do not see the
    session's ``temporary_settings``."""
    monkeypatch.setenv("PREFECT_API_URL", prefect_server.api_url)
    return {
        "group": recorded_calls(monkeypatch, PrefectApi, "acquire_all", lambda _api, names, **_: sorted(names)),
        "one": recorded_calls(monkeypatch, PrefectApi, "acquire", lambda _api, name, **_: name),
    }


def _all_slots_free(prefect_server: PrefectServer, entries: Iterable[str]) -> bool:
    with contextlib.closing(PrefectApi(prefect_server.api_url)) as api:
        return not any(slot_taken(api, e) for e in entries)


@vault_only
def test_a_fleet_on_a_prefect_server_takes_its_entries_slots_a_group_at_a_time(
    fleet_factory: Any, prefect_server: PrefectServer, slot_requests: dict[str, list[Any]]
) -> None:
    fleet = fleet_factory(6)
    names = sorted(fleet.paths)
    api = PrefectApi(prefect_server.api_url)
    api.create_lock_limits([lock_name(n) for n in names])  # a server that has seen this fleet before
    api.close()

    result = run_fleet(fleet.config(), config_path=None, concurrency=6, lock_with_prefect=True)

    assert result.counts == {"rotated": 6}, [(e.project, e.status, e.error) for e in result.entries]
    assert sorted(slot_requests["group"]) == [
        [lock_name(n) for n in names[:3]],
        [lock_name(n) for n in names[3:]],
    ], "two requests for six slots (groups of half the concurrency)"
    assert slot_requests["one"] == []
    assert _all_slots_free(prefect_server, names), "every slot given back"
    assert list((fleet.env.tmp / "locks" / "groups").glob("*")) == []


@vault_only
def test_a_servers_first_fleet_rotates_every_entry_and_gives_every_slot_back(
    fleet_factory: Any, prefect_server: PrefectServer, slot_requests: dict[str, list[Any]]
) -> None:
    fleet = fleet_factory(8)  # no limit exists yet: the entries, or the groups' limits made ahead, create them

    result = run_fleet(fleet.config(), config_path=None, concurrency=8, lock_with_prefect=True)

    assert result.counts == {"rotated": 8}, [(e.project, e.status, e.error) for e in result.entries]
    assert _all_slots_free(prefect_server, fleet.paths)
    assert list((fleet.env.tmp / "locks" / "groups").glob("*")) == []


@vault_only
def test_an_entry_held_elsewhere_stops_only_itself_and_its_group_takes_slots_one_by_one(
    fleet_factory: Any, prefect_server: PrefectServer, slot_requests: dict[str, list[Any]]
) -> None:
    fleet = fleet_factory(4)
    names = sorted(fleet.paths)
    api = PrefectApi(prefect_server.api_url)
    api.create_lock_limits([lock_name(n) for n in names])
    elsewhere = api.acquire(lock_name(names[1]), lease_s=60, timeout_s=5)  # a manual rotate on another host
    assert elsewhere is not None
    try:
        result = run_fleet(fleet.config(), config_path=None, concurrency=4, lock_with_prefect=True)
    finally:
        api.release(elsewhere.lease_id)
        api.close()

    by_name = {e.project: e for e in result.entries}
    assert by_name[names[1]].status == "in_progress", by_name[names[1]]
    assert fleet.current(names[1]) == fleet.originals[names[1]]
    assert [by_name[n].status for n in (names[0], *names[2:])] == ["rotated"] * 3
    assert len(slot_requests["group"]) == 2
    assert sorted(set(slot_requests["one"])) == [lock_name(names[0]), lock_name(names[1])], (
        "the group that could not be taken whole: each of its entries asked for its own slot"
    )
    assert _all_slots_free(prefect_server, names)


# --- the command line under Prefect -------------------------------------------------------------


@pytest.fixture
def prefect_fleet(fleet_factory: Any, rotation_env: RotationEnv, prefect_server: PrefectServer) -> Any:
    rotation_env.prefect_env = prefect_server.client_env(rotation_env.env)
    return fleet_factory


@pytest.mark.slow  # the command line through the Prefect server
@vault_only
def test_rotate_all_json_is_one_object_and_each_entry_is_its_own_flow_run(prefect_fleet: Any) -> None:
    fleet = prefect_fleet(3)
    fleet.consumers.configure(stuck=[fleet.paths["svc-01"]])
    path = fleet.write_config()

    proc = fleet.env.cli("rotate", "--config", str(path), "--all", "--concurrency", "3", "--json")

    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(out) == {"status", "total", "counts", "entries", "duration_s", "prefect_flow_run_id"}
    assert out["status"] == "partial" and out["total"] == 3
    assert out["counts"] == {"rolled_back": 1, "rotated": 2}
    assert {e["project"]: e["status"] for e in out["entries"]}["svc-01"] == "rolled_back"
    assert all(e["prefect_flow_run_id"] for e in out["entries"])
    _check_runs_in_prefect(out)


@pytest.mark.slow  # the command line through the Prefect server, paused and resumed
@vault_only
def test_a_fleet_entry_that_requires_approval_pauses_as_its_own_run_while_the_others_rotate(
    prefect_fleet: Any,
) -> None:
    from prefect.flow_runs import resume_flow_run

    fleet = prefect_fleet(3)
    config = fleet.config_dict()
    gated = config["projects"][1]
    gated.update(approval="required", approval_timeout_s=300)
    path = fleet.env.tmp / "fleet-approval.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli.main", "rotate", "--config", str(path), "--all", "--json"],
        env=fleet.env.prefect_env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        paused = wait_for_paused_run(str(path), proc)
        assert paused.parameters["project"] == gated["name"], "the entry that needs approval is the one paused"
        assert fleet.current(gated["name"]) == fleet.originals[gated["name"]], "not promoted while paused"

        resume_flow_run(paused.id, run_input={"approve": True, "approver": "ci", "reason": "fleet test"})
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert proc.returncode == 0, stdout + stderr[-3000:]
    out = json.loads(stdout.strip().splitlines()[-1])
    assert out["status"] == "rotated" and out["counts"] == {"rotated": 3}
    by_name = {e["project"]: e for e in out["entries"]}
    approval = [s for s in by_name[gated["name"]]["steps"] if s["step"] == "approval"]
    assert approval and approval[0]["outcome"] == "done" and "approved by ci" in approval[0]["detail"]
    assert by_name[gated["name"]]["prefect_flow_run_id"] == str(paused.id), "its own rotate flow run"
    for name in fleet.paths:
        assert fleet.current(name) == by_name[name]["new_public_key"] != fleet.originals[name]
    assert "PAUSED" in state_history(paused.id)


def _check_runs_in_prefect(out: dict[str, Any]) -> None:
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        parent = client.read_flow_run(UUID(out["prefect_flow_run_id"]))
        assert parent.state is not None and parent.state.is_failed()
        assert parent.state.message.startswith("failed: fleet partial")
        for entry in out["entries"]:
            run = client.read_flow_run(UUID(entry["prefect_flow_run_id"]))
            assert run.name.startswith(f"rotate-{entry['project']}-")
            assert {f"project:{entry['project']}", "mode:scheduled", f"fleet:{parent.id}"} <= set(run.tags)
            assert run.state is not None
            assert run.state.is_completed() == (entry["status"] == "rotated")
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
            assert any("| step | outcome |" in str(a.data) for a in artifacts)
        fleet_artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[parent.id]))
        )
        kinds = {a.key: a.type for a in fleet_artifacts}
        assert kinds.get("langfuse-fleet-summary") == "table"
        assert kinds.get("langfuse-fleet-progress") == "progress"
        progress = next(a for a in fleet_artifacts if a.key == "langfuse-fleet-progress")
        assert progress.data == 100.0


@pytest.mark.slow
@vault_only
@pytest.mark.parametrize("concurrency", [2, 4], ids=["one-lease-per-entry", "group-leases"])
def test_a_killed_fleet_rerun_resumes_unfinished_entries_and_skips_rotated_ones(
    prefect_fleet: Any, concurrency: int
) -> None:
    """At 4 places the entries' slots are taken two at a time (``flows.fleet.group_lease``): the
    killed fleet's group leases are released through its group files, not waited out."""
    fleet = prefect_fleet(6, restart_delay_s=1.5)
    # An entry killed while its Prefect slot was being granted leaves a slot no lease file names:
    # the rerun waits for that lease to expire (60 s at the least) instead of refusing the entry.
    path = fleet.write_config(lock={"lease_s": 60, "wait_s": 90})
    env = dict(fleet.env.prefect_env or fleet.env.env)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flows.cli.main",
            "rotate",
            "--config",
            str(path),
            "--all",
            "--concurrency",
            str(concurrency),
        ],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def describe(name: str) -> Any:
        return fleet.env.store.store.describe(SecretLocation(path=fleet.paths[name]))

    # Kill it while at least three entries have a new key, one of them has finished and one is
    # mid-rotation (staged, waiting for its consumer's 1.5 s restart).
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        states = {n: describe(n) for n in fleet.paths}
        done = [n for n, d in states.items() if d.pending is None and d.current_public_key != fleet.originals[n]]
        changed = [n for n, d in states.items() if d.current_public_key != fleet.originals[n]]
        if len(changed) >= 3 and done and any(d.pending is not None and d.pending_promoted for d in states.values()):
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert proc.stdout is not None
    proc.stdout.close()
    if concurrency >= 4:
        assert list((fleet.env.tmp / "locks").glob("groups/*.group")), "killed holding a group lease"
    after_kill = {n: describe(n) for n in fleet.paths}
    unfinished = {n: d.pending for n, d in after_kill.items() if d.pending is not None}
    finished = [n for n, d in after_kill.items() if d.pending is None and d.current_public_key != fleet.originals[n]]
    untouched = [n for n in fleet.paths if n not in unfinished and n not in finished]
    assert unfinished and finished, f"killed mid-fleet: unfinished {sorted(unfinished)}, finished {finished}"

    rerun = fleet.env.cli("rotate", "--config", str(path), "--all", "--concurrency", str(concurrency + 1), "--json")

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    out = json.loads(rerun.stdout.strip().splitlines()[-1])
    by_name = {e["project"]: e for e in out["entries"]}
    for name, staged in unfinished.items():
        entry = by_name[name]
        assert entry["status"] == "rotated", entry
        assert (entry["rotation_id"], entry["new_public_key"]) == (staged.rotation_id, staged.new_public_key), (
            f"{name}: the killed run's rotation is resumed (same rotation, same pair), not started again"
        )
    for name in finished:
        assert by_name[name]["status"] == "skipped", by_name[name]
        assert describe(name).current_public_key == after_kill[name].current_public_key, "not rotated again"
    for name in untouched:
        assert by_name[name]["status"] == "rotated", by_name[name]
    for name in fleet.paths:
        assert fleet.current(name) != fleet.originals[name]
        assert describe(name).pending is None
    keys = [k for k in fleet.env.sim.keys() if k.get("projectId") == fleet.env.project.id]  # noqa: SIM118
    ours = [k["publicKey"] for k in keys]
    for name in fleet.paths:
        assert fleet.originals[name] not in ours, f"{name}: its old key is revoked"
        assert fleet.current(name) in ours
    assert list((fleet.env.tmp / "locks").glob("groups/*.group")) == [], "the dead fleet's groups were released"


def test_fleet_result_json_has_the_contract_keys() -> None:
    result = FleetResult(status="rotated", total=0, counts={}, entries=[], duration_s=0.0)
    assert set(json.loads(result.to_json_line())) == {
        "status",
        "total",
        "counts",
        "entries",
        "duration_s",
        "prefect_flow_run_id",
    }


_WORKER = """
import json, sys, time
from flows.fleet.pacing import Pacer, SharedBudget
name, rate, count = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
pacer = Pacer(rate, shared=SharedBudget(name, rate))
stamps = []
for _ in range(count):
    pacer.acquire()
    stamps.append(time.time())
print(json.dumps(stamps))
"""


@pytest.mark.slow  # two processes paced through the Prefect server
def test_two_workers_share_one_budget_through_a_prefect_global_concurrency_limit(
    prefect_server: PrefectServer,
) -> None:
    from flows.fleet.pacing import SharedBudget

    rate, count = 10.0, 25
    budget = SharedBudget(f"langfuse-rotate-pace-test-{os.getpid()}-{time.monotonic_ns()}", rate)
    budget.ensure()
    env = prefect_server.client_env()
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, budget.name, str(rate), str(count)],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    stamps = sorted(t for w in workers for t in json.loads(w.communicate(timeout=120)[0]))

    # Alone, each worker would take (count - 1) / rate = 2.4 s; sharing the budget, both together
    # get `rate` permits per second (plus one batch each at the start).
    assert len(stamps) == 2 * count
    assert stamps[-1] - stamps[0] >= (2 * count - 2 * budget.batch) / rate - 0.5
    for i, start in enumerate(stamps):
        in_one_second = sum(1 for t in stamps[i:] if t < start + 1.0)
        assert in_one_second <= rate + 2 * budget.batch


def test_bad_input_with_all_exits_2_with_one_fleet_object(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli.main", "rotate", "--all", "--config", str(missing), "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 2
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == "failed" and out["total"] == 0 and out["entries"] == []
    assert "cannot read configuration" in out["error"]


def test_concurrency_without_all_is_a_usage_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli.main", "rotate", "--project", "x", "--concurrency", "4"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 2 and "--concurrency goes with --all" in proc.stderr


def test_the_progress_line_counts_done_failed_waiting_and_remaining() -> None:
    from flows.fleet.run import FleetProgress

    progress = FleetProgress(4)
    for name in "abcd":
        progress.start(name)
    progress.wait("c", True)
    progress.finish("a", "rotated")
    progress.finish("b", "rolled_back")

    line = progress.line(width=8)

    assert line.startswith("[####....] 2/4 done, 1 failed, 1 waiting on consumers, 2 remaining, 0:0")
