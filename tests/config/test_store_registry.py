"""The store registry (``flows.config.stores.STORE_KINDS``) is the one list of stores: the configuration
accepts exactly its kinds, and the test fixtures and the demo connect to their stores through it."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import typing
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import pytest
import requests
import yaml
from pydantic import BaseModel, SecretStr

from connectors.keypair import KeyPair
from connectors.langfuse import LangfuseAdminClient
from connectors.store import SecretLocation, SecretStore
from devstack import demo
from devstack.sinks import JsonSink
from flows.cli.main import DEMO_STORE_CHOICES
from flows.config.model import RotationConfig, parse_config
from flows.config.places import Account, Key
from flows.config.stores import (
    STORE_KINDS,
    KeyRoute,
    OpenStores,
    StoreKind,
    StoreSettings,
    register_store_kind,
    store_config,
    store_kinds_text,
    unregister_store_kind,
)
from flows.config.transport import transport_risks
from flows.errors import ConfigError
from flows.fleet.run import fleet_exit_code, run_fleet
from flows.rotation.entry_run import execute
from flows.rotation.runners import DirectRunner
from tests.fakes import MemoryStore
from tests.fixtures.langfuse_sim import SimHandle
from tests.fixtures.stores import STORES_UNDER_TEST


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]


def _recording(kind: str, monkeypatch: pytest.MonkeyPatch) -> list[StoreSettings]:
    """Make ``kind``'s factory record the configurations it connects with."""
    built: list[StoreSettings] = []
    registered = STORE_KINDS[kind]

    def build(config: StoreSettings) -> SecretStore:
        built.append(config)
        return registered.build(config)

    monkeypatch.setitem(STORE_KINDS, kind, StoreKind(registered.config, build))
    return built


def test_the_configuration_accepts_exactly_the_registered_store_kinds() -> None:
    models = _models_in(RotationConfig.model_fields["stores"].annotation)
    accepted = {typing.get_args(model.model_fields["kind"].annotation)[0]: model for model in models}

    assert accepted == {kind: registered.config for kind, registered in STORE_KINDS.items()}


def test_every_registered_store_kind_has_a_test_fixture_and_the_demo_offers_only_registered_ones() -> None:
    assert set(STORES_UNDER_TEST) == set(STORE_KINDS)
    assert list(DEMO_STORE_CHOICES) == list(demo.DEMO_STORES)
    assert set(demo.DEMO_STORES) <= set(STORE_KINDS)


@pytest.mark.parametrize("kind", list(STORE_KINDS))
def test_the_store_fixture_connects_through_the_registry(
    kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = _recording(kind, monkeypatch)

    under_test = STORES_UNDER_TEST[kind](request, monkeypatch)

    assert built == [store_config(under_test.config())]


@pytest.mark.parametrize("kind", list(demo.DEMO_STORES))
def test_the_demo_connects_to_its_store_through_the_registry(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "DEMO_VAULT_TOKEN"):
        monkeypatch.delenv(variable, raising=False)  # the demo sets them; restored after the test
    built = _recording(kind, monkeypatch)

    with contextlib.ExitStack() as stack:
        demo.start_store(stack, kind)

    assert [config.kind for config in built] == [kind]


# Each store kind's local server as ``python -m <module>``: one JSON line (these keys), then it
# serves (this path answers 200) until SIGTERM, and exits 0.
LOCAL_SERVERS = {
    "vault": ("devstack.openbao", {"url", "root_token"}, "/v1/sys/health"),
    "aws": ("devstack.moto_server", {"url"}, "/moto-api/"),
}


def test_every_store_kind_has_a_local_server_module() -> None:
    assert set(LOCAL_SERVERS) == set(STORE_KINDS)


@pytest.mark.parametrize("kind", list(LOCAL_SERVERS))
def test_a_store_kinds_local_server_prints_where_it_is_and_stops_on_sigterm(kind: str) -> None:
    module, keys, health = LOCAL_SERVERS[kind]
    with subprocess.Popen(
        [sys.executable, "-m", module], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            info = json.loads(proc.stdout.readline())
            assert set(info) == keys
            assert requests.get(f"{info['url']}{health}", timeout=5).status_code == 200
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# --- a third kind, registered by the test alone -------------------------------------------------


class MemoryStoreConfig(StoreSettings):
    """The section of an in-memory store (``tests.fakes.MemoryStore``), said to be reached at
    ``url``: what it tells the transport checks and the location checks is all they know of it."""

    kind: Literal["memory"]
    url: str = "http://127.0.0.1:1"

    def key_routes(self) -> list[KeyRoute]:
        return [KeyRoute("url", self.url, "the stored keys")]

    def place_base(self, name: str) -> tuple[Key, Account]:
        return ("memory", self.url), None


@pytest.fixture
def memory_kind() -> Iterator[MemoryStore]:
    """A third store kind, ``memory``, registered for one test: one store every run connects to."""
    store = MemoryStore()
    register_store_kind("memory", StoreKind(MemoryStoreConfig, lambda _config: store))
    try:
        yield store
    finally:
        unregister_store_kind("memory")


def _environment(sim: SimHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_LANGFUSE_ORG_PUBLIC_KEY", sim.org_public_key)
    monkeypatch.setenv("TEST_LANGFUSE_ORG_SECRET_KEY", sim.org_secret_key)
    monkeypatch.setenv("LANGFUSE_ROTATE_LOCK_DIR", str(tmp_path / "locks"))


def _memory_config(
    sim: SimHandle, sink: JsonSink, tmp_path: Path, store: MemoryStore, names: list[str]
) -> RotationConfig:
    """Entries ``names`` in the memory store, each seeded with a key of its own, in one project."""
    project = sim.projects[0]
    entries = []
    with LangfuseAdminClient(sim.url, sim.org_public_key, SecretStr(sim.org_secret_key)) as admin:
        for name in names:
            pair = KeyPair.generate()
            admin.create_api_key(project.id, pair, note=f"seed {name}")
            store.seed(SecretLocation(path=f"langfuse/{name}"), pair, sim.url)
            entries.append(
                {
                    "name": name,
                    "project_id": project.id,
                    "store": "main",
                    "path": f"langfuse/{name}",
                    "consumers": [],
                    "grace_period_s": 0,
                    "revoke_recheck_s": 1,
                }
            )
    config = {
        "langfuse": {
            "host": sim.url,
            "org_public_key": "${TEST_LANGFUSE_ORG_PUBLIC_KEY}",
            "org_secret_key": "${TEST_LANGFUSE_ORG_SECRET_KEY}",
        },
        "stores": {"main": {"kind": "memory"}},
        "projects": entries,
        "notify": {"urls": [f"json://{sink.url.removeprefix('http://')}/hook"]},
        "audit": {"path": str(tmp_path / "audit.jsonl")},
    }
    return parse_config(yaml.safe_dump(config))


def test_a_registered_third_kind_is_accepted_by_the_configuration(memory_kind: MemoryStore) -> None:
    assert isinstance(store_config({"kind": "memory"}), MemoryStoreConfig)
    assert "memory" in store_kinds_text()


MEMORY_CONFIG = """\
langfuse: {host: 'https://langfuse.example.com', org_public_key: pk-lf-org, org_secret_key: sk-lf-org-secret}
stores:
  one: {kind: memory, url: 'URL_ONE'}
  two: {kind: memory, url: 'URL_TWO'}
projects:
  - {name: chatbot, project_id: p1, store: one, path: langfuse/shared}
  - {name: search, project_id: p1, store: two, path: langfuse/shared}
"""


def _two_memory_stores(url_one: str, url_two: str) -> RotationConfig:
    return parse_config(MEMORY_CONFIG.replace("URL_ONE", url_one).replace("URL_TWO", url_two))


def test_a_third_kinds_plain_http_connection_is_a_transport_risk(memory_kind: MemoryStore) -> None:
    config = _two_memory_stores("http://keys.example.com", "https://keys.example.com")

    risks = transport_risks(config)

    assert [(r.field, r.severity) for r in risks] == [("stores.one.url", "high")]
    assert "the stored keys travel unencrypted" in risks[0].detail


def test_two_names_for_one_server_of_a_third_kind_are_one_store(memory_kind: MemoryStore) -> None:
    with pytest.raises(ConfigError, match="entry 'search' would be stored in the same secret as entry 'chatbot'"):
        _two_memory_stores("http://127.0.0.1:1", "http://127.0.0.1:1")

    assert len(_two_memory_stores("http://127.0.0.1:1", "http://127.0.0.1:2").projects) == 2


def test_a_rotation_runs_on_a_third_kind_registered_by_the_test_alone(
    memory_kind: MemoryStore, sim: SimHandle, json_sink: JsonSink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _environment(sim, tmp_path, monkeypatch)
    config = _memory_config(sim, json_sink, tmp_path, memory_kind, ["solo"])
    old = memory_kind.read_current(SecretLocation(path="langfuse/solo")).public_key

    result = execute("rotate", "solo", None, DirectRunner(), config=config)

    assert result.status == "rotated", result.error
    assert memory_kind.read_current(SecretLocation(path="langfuse/solo")).public_key == result.new_public_key != old


def test_a_fleet_runs_on_a_third_kind_registered_by_the_test_alone(
    memory_kind: MemoryStore, sim: SimHandle, json_sink: JsonSink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _environment(sim, tmp_path, monkeypatch)
    config = _memory_config(sim, json_sink, tmp_path, memory_kind, ["one", "two", "three"])

    result = run_fleet(config, config_path=None, concurrency=3)

    assert fleet_exit_code(result.entries) == 0
    assert sorted(r.status for r in result.entries) == ["rotated"] * 3


# --- one cache of open store connections ---------------------------------------------------------


class _ClosableStore(MemoryStore):
    closed = False

    def close(self) -> None:
        self.closed = True


def test_open_stores_connect_each_store_once_for_every_thread_and_close_what_they_connected(
    memory_kind: MemoryStore,
) -> None:
    built: list[_ClosableStore] = []

    def build(_config: StoreSettings) -> SecretStore:
        built.append(_ClosableStore())
        return built[-1]

    register_store_kind("memory", StoreKind(MemoryStoreConfig, build))
    handed_in = _ClosableStore()
    stores = OpenStores(
        {"main": store_config({"kind": "memory"}), "mine": store_config({"kind": "memory"})},
        connected={"mine": handed_in},
    )

    with ThreadPoolExecutor(max_workers=8) as pool:
        seen = set(map(id, pool.map(stores, ["main"] * 32)))
    stores.close()

    assert len(built) == 1 and seen == {id(built[0])}
    assert stores("mine") is handed_in
    assert built[0].closed and not handed_in.closed
