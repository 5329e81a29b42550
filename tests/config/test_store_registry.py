"""The store registry (``flows.config.stores.STORE_KINDS``) is the one list of stores: the configuration
accepts exactly its kinds, and the test fixtures and the demo connect to their stores through it."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import typing
from typing import Any

import pytest
import requests
from pydantic import BaseModel

from connectors.store import SecretStore
from devstack import demo
from flows.cli.main import DEMO_STORE_CHOICES
from flows.config.model import RotationConfig
from flows.config.stores import STORE_KINDS, StoreKind, StoreSettings, store_config
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
