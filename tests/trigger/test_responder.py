"""The warm responder (issue 24 item 1, docs/responder.md): ``langfuse-rotate respond`` contains a
key reported by a ``langfuse.key.compromised`` event in its own running process, with the checks
of the event-started emergency run, recorded as a run of the emergency deployment.

Everything runs against the session's real Prefect server on PostgreSQL: the events websocket,
the REST records, the emergency slot and the earlier containments the checks read.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.keypair import KeyPair
from connectors.prefect_api import PrefectApi
from connectors.prefect_events import EventStream, StreamedEvent
from connectors.store import SecretLocation
from devstack.prefect_server import PrefectServer
from flows.config.model import load_config
from flows.trigger.automation import EVENT, compromised_event
from flows.trigger.responder import Handled, Responder
from tests.fixtures.rotation import ENTRY, RotationEnv
from tests.scenarios.test_concurrency import created_keys
from tests.trigger import test_emergency_trigger as trigger_tests
from tests.trigger.test_emergency_trigger import entry_name, final_audit, runs_of, stray_key, wait_for

# The event-started emergency's fixtures: a served deployment with its automation, a uniquely
# named entry, and no earlier emergency runs on the session's server (per-entry hourly counts).
automation = trigger_tests.automation
served_deployment = trigger_tests.served_deployment
trigger_env = trigger_tests.trigger_env
no_earlier_emergency_runs = trigger_tests.no_earlier_emergency_runs

REPO = Path(__file__).resolve().parents[2]
FLOW_NAME = "langfuse-key-emergency"


@pytest.fixture
def rest(prefect_server: PrefectServer) -> Iterator[PrefectApi]:
    api = PrefectApi(prefect_server.api_url)
    yield api
    api.close()


@pytest.fixture
def emergency_deployment(rest: PrefectApi) -> str:
    """A deployment of the emergency flow nobody runs (no automation, no runner): "flow/name"."""
    name = f"emergency-rotation-{uuid.uuid4().hex[:8]}"
    flow_id = rest.flow_id(FLOW_NAME)
    response = rest._post("deployments/", {"name": name, "flow_id": flow_id})
    assert response.status_code in (200, 201), response.text
    return f"{FLOW_NAME}/{name}"


def responder_for(env: RotationEnv, api: PrefectApi, deployment: str) -> Responder:
    path = str(env.write_config())
    return Responder(load_config(path), path, api, deployment=deployment)


def event_for(env: RotationEnv, public_key: str | None, *, project: str | None = None) -> StreamedEvent:
    raw = compromised_event(project or entry_name(env), public_key, source="test scanner")
    return StreamedEvent.model_validate(raw)


def read_run(api: PrefectApi, run_id: str | None) -> dict[str, Any]:
    assert run_id is not None
    run = api.read_flow_run(run_id)
    assert run is not None
    return run


# --- what one event does ------------------------------------------------------------------------


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_a_reported_key_is_contained_and_recorded_as_a_run_of_the_emergency_deployment(
    trigger_env: RotationEnv, rest: PrefectApi, emergency_deployment: str
) -> None:
    env = trigger_env
    old = env.current()
    event = event_for(env, old.public_key)

    handled = responder_for(env, rest, emergency_deployment).handle(event)

    assert handled.outcome == "contained", handled.line()
    assert not env.works(old) and env.current().public_key != old.public_key
    run = read_run(rest, handled.run_id)
    assert run["deployment_id"] == rest.deployment_id(emergency_deployment)
    assert run["state"]["type"] == "COMPLETED" and run["start_time"] is not None
    assert run["parameters"] == {
        "project": entry_name(env),
        "public_key": old.public_key,
        "event_id": event.id,
        "event_source": "test scanner",
    }
    assert {f"project:{entry_name(env)}", "mode:emergency", "trigger:event", "trigger:event-containment"} <= set(
        run["tags"]
    )
    assert run["name"].startswith(f"emergency-{entry_name(env)}-")
    artifacts = rest._post("artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [handled.run_id]}}}).json()
    assert [a["type"] for a in artifacts] == ["markdown"]
    (final,) = final_audit(env)
    assert final["langfuse_rotate"]["outcome"] == "contained"
    assert final["labels"]["run_id"] == handled.run_id
    initiator = final["langfuse_rotate"]["initiator"]
    assert initiator["type"] == "langfuse-rotate-respond" and initiator["event_id"] == event.id
    notes = env.sink.received()
    assert sorted(n.path for n in notes) == ["/hook", "/page"], "one emergency notification, which pages"
    assert all("EMERGENCY" in n.json["title"] for n in notes)


def new_keys(env: RotationEnv) -> int:
    return len([c for c in created_keys(env) if c["status"] in (200, 201)])


def assert_refused_and_nothing_changed(
    env: RotationEnv, rest: PrefectApi, handled: Handled, reason: str, *, keys_before: int = 0
) -> None:
    assert handled.outcome == "refused" and reason in handled.detail, handled.line()
    run = read_run(rest, handled.run_id)
    assert run["state"]["type"] == "COMPLETED" and run["state"]["name"] == "Refused"
    assert reason in run["state"]["message"]
    assert "trigger:event-containment" not in run["tags"], "a refused run counts for no limit"
    final = final_audit(env)[-1]
    assert final["langfuse_rotate"]["outcome"] == "refused" and reason in final["langfuse_rotate"]["reason"]
    notes = env.sink.received()
    assert [n.path for n in notes] == ["/hook"], "a warning, never the pager"
    assert new_keys(env) == keys_before, "no key was created"


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_an_event_naming_a_key_that_is_not_live_contains_nothing(
    trigger_env: RotationEnv, rest: PrefectApi, emergency_deployment: str
) -> None:
    before = trigger_env.current()

    handled = responder_for(trigger_env, rest, emergency_deployment).handle(
        event_for(trigger_env, KeyPair.generate().public_key)
    )

    assert_refused_and_nothing_changed(trigger_env, rest, handled, "is not a live key of Langfuse project")
    assert trigger_env.current().public_key == before.public_key and trigger_env.works(before)


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_an_event_naming_another_entrys_key_contains_nothing(
    trigger_env: RotationEnv, rest: PrefectApi, emergency_deployment: str
) -> None:
    other = stray_key(trigger_env)
    trigger_env.store.store.seed(SecretLocation(path=f"{trigger_env.path}-b"), other, trigger_env.sim.url)
    trigger_env.extra_entries = [
        {"name": "entry-b", "project_id": trigger_env.project.id, "store": "main", "path": f"{trigger_env.path}-b"}
    ]

    keys_before = new_keys(trigger_env)

    handled = responder_for(trigger_env, rest, emergency_deployment).handle(event_for(trigger_env, other.public_key))

    assert_refused_and_nothing_changed(
        trigger_env, rest, handled, "is a key of entry 'entry-b'", keys_before=keys_before
    )
    assert trigger_env.works(other)


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_past_max_per_hour_an_event_contains_nothing(
    trigger_env: RotationEnv, rest: PrefectApi, emergency_deployment: str
) -> None:
    trigger_env.top_overrides["emergency"] = {"max_per_hour": 1}
    first, second = stray_key(trigger_env), stray_key(trigger_env)
    responder = responder_for(trigger_env, rest, emergency_deployment)
    contained = responder.handle(event_for(trigger_env, first.public_key))
    trigger_env.sink.clear()
    keys_before = new_keys(trigger_env)

    handled = responder.handle(event_for(trigger_env, second.public_key))

    assert contained.outcome in {"contained", "needs_attention"}, contained.line()
    assert handled.outcome == "refused" and "a person must run 'langfuse-rotate emergency" in handled.detail
    assert trigger_env.works(second), "past the limit nothing is changed"
    assert new_keys(trigger_env) == keys_before
    assert [n.path for n in trigger_env.sink.received()] == ["/hook"]


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_an_event_for_an_unknown_entry_is_recorded_refused(
    trigger_env: RotationEnv, rest: PrefectApi, emergency_deployment: str
) -> None:
    handled = responder_for(trigger_env, rest, emergency_deployment).handle(
        event_for(trigger_env, trigger_env.current().public_key, project="no-such-entry")
    )

    assert handled.outcome == "refused" and "unknown project 'no-such-entry'" in handled.detail
    assert read_run(rest, handled.run_id)["state"]["name"] == "Refused"


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_the_same_report_twice_contains_once_and_the_second_says_it_was_a_duplicate(
    trigger_env: RotationEnv, rest: PrefectApi, emergency_deployment: str
) -> None:
    leaked = stray_key(trigger_env)
    responder = responder_for(trigger_env, rest, emergency_deployment)
    first = responder.handle(event_for(trigger_env, leaked.public_key))
    trigger_env.sink.clear()

    second = responder.handle(event_for(trigger_env, leaked.public_key))

    assert first.outcome in {"contained", "needs_attention"}, first.line()
    assert second.outcome == "duplicate", second.line()
    run = read_run(rest, second.run_id)
    assert run["state"]["name"] == "Refused"
    assert f"was already contained by run {read_run(rest, first.run_id)['name']}" in run["state"]["message"]
    assert trigger_env.sink.received() == [], "the containment notified; the duplicate does not"
    assert final_audit(trigger_env)[-1]["langfuse_rotate"]["duplicate"] is True


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_a_key_the_automations_run_contained_is_a_duplicate_for_the_responder(
    trigger_env: RotationEnv, rest: PrefectApi, emergency_deployment: str
) -> None:
    """The other order of the two paths: the deployment's flow run (as the automation starts it)
    contains first; the responder, seeing the report after it, changes nothing."""
    leaked = stray_key(trigger_env)
    first = trigger_tests.event_run(trigger_env, leaked.public_key)
    trigger_env.sink.clear()
    keys_before = new_keys(trigger_env)

    handled = responder_for(trigger_env, rest, emergency_deployment).handle(event_for(trigger_env, leaked.public_key))

    assert first.is_completed() and first.name != "Refused", first.message
    assert handled.outcome == "duplicate", handled.line()
    assert "was already contained by run emergency-" in handled.detail
    assert new_keys(trigger_env) == keys_before and trigger_env.sink.received() == []


# --- the events websocket -----------------------------------------------------------------------


def post_events(server: PrefectServer, *events: dict[str, Any]) -> None:
    response = httpx.post(f"{server.api_url}/events", json=list(events), timeout=10)
    assert response.status_code == 204, response.text


def test_the_stream_yields_only_the_named_event_and_after_a_disconnect_replays_what_it_missed_once(
    prefect_server: PrefectServer,
) -> None:
    stop = threading.Event()
    got: list[StreamedEvent] = []
    missed = compromised_event(ENTRY, KeyPair.generate().public_key, source="while away")
    disconnects: list[str] = []

    def away(why: str) -> None:
        if not disconnects:  # the first disconnect: an event arrives while nobody listens
            post_events(prefect_server, missed)
        disconnects.append(why)

    stream = EventStream(prefect_server.api_url, [EVENT], backoff_s=(2.0, 2.0), on_disconnect=away)
    first = compromised_event(ENTRY, KeyPair.generate().public_key, source="first")
    other = dict(compromised_event(ENTRY, None), event="something.else")

    ours = {first["id"], missed["id"]}
    names: list[str] = []

    def listen() -> None:
        # The session's server also holds earlier tests' events, which a replay after the
        # reconnect may bring back too: only this test's two events are counted.
        for event in stream.events(stop, poll_s=0.2):
            names.append(event.event)
            if event.id not in ours:
                continue
            got.append(event)
            if len(got) == 1:
                stream.close()  # the server goes away right after the first event
            if event.id == missed["id"]:
                stop.set()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert stream.connected.wait(30), "never subscribed"
    post_events(prefect_server, other, first)
    listener.join(60)
    stop.set()

    assert [e.id for e in got] == [first["id"], missed["id"]], "the missed event once, the first not again"
    assert got[1].payload["source"] == "while away" and got[1].resource["langfuse.project"] == ENTRY
    assert disconnects, "the stream was closed and reconnected"
    assert set(names) == {EVENT}, "only the named event is streamed"


def test_an_event_stored_before_the_subscription_was_live_is_caught_up_over_rest(
    prefect_server: PrefectServer,
) -> None:
    """The gap the websocket's backfill leaves: an event received before the subscription but not
    yet stored when the backfill was read. Here: subscribed from a moment before the event."""
    since = datetime.now(UTC)
    early = compromised_event(ENTRY, KeyPair.generate().public_key, source="early")
    post_events(prefect_server, early)
    stop = threading.Event()
    stream = EventStream(prefect_server.api_url, [EVENT], since=since, catch_up_after_s=1.0)

    got = next(stream.events(stop, poll_s=0.2))
    stop.set()
    stream.close()

    assert got.id == early["id"]


# --- the responder and the automation on one event ----------------------------------------------


class ResponderProcess:
    """``langfuse-rotate respond`` in a subprocess, its output lines collected as they come."""

    def __init__(self, env: RotationEnv, server: PrefectServer, deployment: str) -> None:
        child_env = server.client_env(dict(env.env))
        child_env["PYTHONPATH"] = str(REPO)
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flows.cli.main",
                "respond",
                "--config",
                str(env.write_config()),
                "--deployment",
                deployment,
            ],
            cwd=REPO,
            env=child_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_listening(self) -> None:
        wait_for(
            lambda: any(line.startswith("listening for") for line in self.lines) or self.proc.poll() is not None,
            "the responder subscribed",
        )
        assert self.proc.poll() is None, self.output()

    def stop(self) -> int:
        """SIGTERM, as systemd stops it; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        self._reader.join(10)
        return code


@pytest.fixture
def responder_process(
    rotation_env: RotationEnv, prefect_server: PrefectServer, automation: str
) -> Iterator[ResponderProcess]:
    started = ResponderProcess(rotation_env, prefect_server, automation)
    try:
        started.wait_listening()
        yield started
    finally:
        started.stop()


def runs_for_event(deployment: str, event_id: str) -> list[Any]:
    return [r for r in runs_of(deployment) if (r.parameters or {}).get("event_id") == event_id]


@pytest.mark.slow
@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_with_the_responder_and_the_automation_both_up_one_event_is_contained_once(
    rotation_env: RotationEnv, prefect_server: PrefectServer, automation: str, responder_process: ResponderProcess
) -> None:
    env = rotation_env
    old = env.current()
    event = compromised_event(ENTRY, old.public_key, source="test scanner")

    post_events(prefect_server, event)

    wait_for(
        lambda: len([r for r in runs_for_event(automation, event["id"]) if r.state and r.state.is_final()]) == 2,
        "the responder's run and the automation's run both ended",
    )
    runs = runs_for_event(automation, event["id"])
    (contained,) = [r for r in runs if r.state.name != "Refused"]
    (duplicate,) = [r for r in runs if r.state.name == "Refused"]
    assert contained.state.is_completed(), contained.state.message
    assert f"was already contained by run {contained.name}" in (duplicate.state.message or "")
    assert not env.works(old)
    assert new_keys(env) == 1, "one containment, one new key"
    outcomes = sorted(f["langfuse_rotate"]["outcome"] for f in final_audit(env))
    assert outcomes == ["contained", "refused"]
    assert len(env.sink.received()) == 1, "one notification: the containment's"
    assert responder_process.stop() == 0, responder_process.output()


@pytest.mark.slow
@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_with_the_responder_stopped_the_automation_still_contains(
    rotation_env: RotationEnv, prefect_server: PrefectServer, automation: str, responder_process: ResponderProcess
) -> None:
    env = rotation_env
    old = env.current()

    code = responder_process.stop()
    post_events(prefect_server, compromised_event(ENTRY, old.public_key, source="test scanner"))

    assert code == 0 and "stopped after 0 event(s)" in responder_process.output(), responder_process.output()
    wait_for(lambda: any(r.state and r.state.is_final() for r in runs_of(automation)), "the automation's run ended")
    (run,) = runs_of(automation)
    assert run.state.is_completed() and run.state.name != "Refused", run.state.message
    assert run.created_by is not None and run.created_by.type == "AUTOMATION"
    assert not env.works(old)
    stopped, contained = final_audit(env)
    assert stopped["langfuse_rotate"]["command"] == "respond" and stopped["langfuse_rotate"]["outcome"] == "stopped"
    assert contained["langfuse_rotate"]["outcome"] == "contained"


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_respond_without_a_prefect_server_is_bad_input(rotation_env: RotationEnv) -> None:
    result = rotation_env.cli("respond", "--config", str(rotation_env.write_config()), env={"PREFECT_API_URL": ""})

    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "respond needs a Prefect server" in result.stderr


@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_respond_with_a_bad_configuration_is_one_line_and_exit_2(rotation_env: RotationEnv, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("projects: [\n")

    result = rotation_env.cli("respond", "--config", str(bad), env={"PREFECT_API_URL": "http://127.0.0.1:9/api"})

    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and str(bad) in result.stderr


class _ServerWithAuth(PrefectServer):
    """A Prefect server that requires ``PREFECT_SERVER_API_AUTH_STRING`` (HTTP and websockets)."""

    AUTH = "responder:correct-horse"

    def server_env(self) -> dict[str, str]:
        env = super().server_env()
        env["PREFECT_SERVER_API_AUTH_STRING"] = self.AUTH
        return env


@pytest.fixture(scope="module")
def server_with_auth() -> Iterator[PrefectServer]:
    from devstack.prefect_server import PostgresUnavailable
    from tests.fixtures.prefect import postgres_missing

    try:
        server = _ServerWithAuth().start()
    except PostgresUnavailable:
        postgres_missing()
        raise
    try:
        yield server
    finally:
        server.stop()


def respond_against(env: RotationEnv, server: PrefectServer, auth: str) -> ResponderProcess:
    process = ResponderProcess.__new__(ResponderProcess)
    child_env = server.client_env(dict(env.env))
    child_env.update(PYTHONPATH=str(REPO), PREFECT_API_AUTH_STRING=auth)
    process.lines = []
    process.proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli.main", "respond", "--config", str(env.write_config())],
        cwd=REPO,
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    process._reader = threading.Thread(target=process._read, daemon=True)
    process._reader.start()
    return process


@pytest.mark.slow
@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_a_server_that_refuses_the_token_ends_respond_with_one_line_and_exit_1(
    rotation_env: RotationEnv, server_with_auth: PrefectServer
) -> None:
    process = respond_against(rotation_env, server_with_auth, "responder:wrong")

    code = process.proc.wait(120)
    process._reader.join(10)

    assert code == 1, process.output()
    assert "the Prefect server refused the events subscription" in process.output()
    assert "responder:wrong" not in process.output() and "correct-horse" not in process.output()


@pytest.mark.slow
@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_with_the_servers_token_respond_subscribes(rotation_env: RotationEnv, server_with_auth: PrefectServer) -> None:
    process = respond_against(rotation_env, server_with_auth, _ServerWithAuth.AUTH)
    try:
        process.wait_listening()
    finally:
        assert process.stop() == 0, process.output()
