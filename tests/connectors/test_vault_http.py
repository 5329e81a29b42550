"""The Vault store's HTTP path (``connectors.vault_http``): hvac's requests straight through urllib3,
with the headers, timeout and proxy rules they had through requests."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from connectors.errors import StoreError, StoreUnavailableError
from connectors.store import SecretLocation
from connectors.vault import VaultStore
from connectors.vault_auth import TokenAuth
from devstack.openbao import OpenBaoServer
from tests.hostile_http import Recorder, Tarpit

TOKEN = "s.vault-http-test-token-0001"


def test_every_request_carries_the_token_and_the_ssrf_header() -> None:
    with Recorder() as vault:
        store = VaultStore(vault.url, auth=TokenAuth(SecretStr(TOKEN)), timeout_s=2.0)
        with contextlib.suppress(KeyError, StoreError):  # the recorder's "{}" is no Vault answer
            store.describe(SecretLocation(path="langfuse/x"))

    assert vault.seen, "no request arrived"
    first = vault.seen[0]
    assert first.path == "/v1/auth/token/lookup-self"
    assert first.headers.get("X-Vault-Token") == TOKEN
    assert first.headers.get("X-Vault-Request") == "true"


def test_a_vault_that_never_answers_is_unavailable_after_the_timeout() -> None:
    with Tarpit() as vault:
        store = VaultStore(vault.url, auth=TokenAuth(SecretStr(TOKEN)), timeout_s=0.5)
        began = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="timed out"):
            store.describe(SecretLocation(path="langfuse/x"))

    assert time.monotonic() - began < 5


def test_a_proxy_named_by_the_environment_still_carries_the_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    with Recorder() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        store = VaultStore("http://vault.invalid:8200", auth=TokenAuth(SecretStr(TOKEN)), timeout_s=2.0)
        with contextlib.suppress(KeyError, StoreError):
            store.describe(SecretLocation(path="langfuse/x"))

    assert proxy.seen, "nothing went through the proxy"
    assert proxy.seen[0].path == "http://vault.invalid:8200/v1/auth/token/lookup-self"


@pytest.fixture(scope="module")
def tls_openbao() -> Iterator[OpenBaoServer]:
    with OpenBaoServer(tls=True) as server:
        yield server


def test_a_certificate_for_another_name_is_refused(tls_openbao: OpenBaoServer) -> None:
    """The dev server's certificate names 127.0.0.1 and localhost, not 0.0.0.0 (which reaches it too)."""
    store = VaultStore(
        tls_openbao.url.replace("127.0.0.1", "0.0.0.0"),
        auth=TokenAuth(SecretStr(tls_openbao.root_token)),
        ca_cert=tls_openbao.ca_cert,
    )

    with pytest.raises(StoreUnavailableError, match="TLS"):
        store.describe(SecretLocation(path="langfuse/x"))
