"""Vault as Vault users expect: VAULT_* defaults, ~/.vault-token, token files (Vault Agent), JWT
auth, a CA certificate, and tokens kept alive through long idle waits. Against real OpenBao."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import hvac
import hvac.exceptions
import pytest
from pydantic import SecretStr

from connectors.errors import StoreAccessDeniedError, StoreUnavailableError
from connectors.keypair import KeyPair
from connectors.store import SecretLocation
from connectors.vault import VaultStore
from connectors.vault_auth import AppRoleAuth, JwtAuth, TokenAuth, TokenFileAuth
from devstack.openbao import OpenBaoServer
from flows.config.stores import VaultStoreConfig, build_store
from flows.redact import scrub
from tests.fixtures.jwt_signer import JwtIssuer
from tests.fixtures.stores import parse_store_config, store_config_error

HOST = "https://langfuse.example.test"
AUDIENCE = "langfuse-rotate"


@pytest.fixture
def loc(store_path: str) -> SecretLocation:
    return SecretLocation(path=f"{store_path}/proj-a")


@pytest.fixture
def no_vault_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No VAULT_* variables and an empty home; returns the home directory."""
    for name in ("VAULT_ADDR", "VAULT_TOKEN", "VAULT_NAMESPACE", "VAULT_CACERT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def vault_config(store: str) -> VaultStoreConfig:
    config = parse_store_config(store)
    assert isinstance(config, VaultStoreConfig)
    return config


config_error = store_config_error


# --- defaults from the environment, as the vault CLI takes them -----------------------------------


def test_url_and_token_default_to_vault_addr_and_vault_token(
    no_vault_env: Path, monkeypatch: pytest.MonkeyPatch, openbao: OpenBaoServer, loc: SecretLocation
) -> None:
    monkeypatch.setenv("VAULT_ADDR", openbao.url)
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    config = vault_config("{kind: vault}")
    assert config.url == openbao.url
    assert config.token is not None and config.token.get_secret_value() == openbao.root_token
    store = build_store(config)
    pair = KeyPair.generate()
    store.seed(loc, pair, HOST)
    assert store.read_current(loc).key_pair() == pair


def test_without_vault_token_the_token_comes_from_home_vault_token(
    no_vault_env: Path, monkeypatch: pytest.MonkeyPatch, openbao: OpenBaoServer, loc: SecretLocation
) -> None:
    (no_vault_env / ".vault-token").write_text(openbao.root_token + "\n")
    config = vault_config(f"{{kind: vault, url: {openbao.url}}}")
    assert config.token is None
    assert config.token_file == no_vault_env / ".vault-token"
    store = build_store(config)
    store.seed(loc, KeyPair.generate(), HOST)
    assert store.read_current(loc).version == 1


def test_explicit_settings_win_over_the_environment(no_vault_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_ADDR", "http://env.example.test:8200")
    monkeypatch.setenv("VAULT_TOKEN", "s.from-env")
    monkeypatch.setenv("VAULT_NAMESPACE", "env-ns")
    config = vault_config("{kind: vault, url: 'http://file.example.test:8200', token: s.from-file, namespace: team-a}")
    assert config.url == "http://file.example.test:8200"
    assert config.token is not None and config.token.get_secret_value() == "s.from-file"
    assert config.namespace == "team-a"


def test_an_explicit_auth_method_is_not_mixed_with_vault_token(
    no_vault_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VAULT_TOKEN", "s.from-env")
    config = vault_config(f"{{kind: vault, url: 'http://v:8200', token_file: {tmp_path / 'sink'}}}")
    assert config.token is None and config.token_file == tmp_path / "sink"


def test_namespace_and_ca_cert_default_to_their_variables(
    no_vault_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked at load time beyond existing\n")
    monkeypatch.setenv("VAULT_NAMESPACE", "team-a")
    monkeypatch.setenv("VAULT_CACERT", str(ca))
    config = vault_config("{kind: vault, url: 'https://v:8200', token: s.t}")
    assert config.namespace == "team-a"
    assert config.ca_cert == ca


def test_no_address_anywhere_is_a_one_line_error(no_vault_env: Path) -> None:
    message = config_error("{kind: vault, token: s.t}")
    assert message.startswith("rotation.yaml:")
    assert "stores.main: no Vault address: set url or VAULT_ADDR" in message


def test_no_credentials_anywhere_is_a_one_line_error(no_vault_env: Path) -> None:
    message = config_error("{kind: vault, url: 'http://v:8200'}")
    assert "no Vault credentials" in message
    assert "VAULT_TOKEN" in message and "~/.vault-token" in message


def test_two_auth_methods_are_rejected(no_vault_env: Path, tmp_path: Path) -> None:
    message = config_error(f"{{kind: vault, url: 'http://v:8200', token: s.t, token_file: {tmp_path / 't'}}}")
    assert "exactly one of token, token_file, approle or auth" in message


def test_a_missing_ca_cert_is_rejected_at_load(no_vault_env: Path, tmp_path: Path) -> None:
    message = config_error(f"{{kind: vault, url: 'https://v:8200', token: s.t, ca_cert: {tmp_path / 'nope.pem'}}}")
    assert "ca_cert" in message and "does not exist" in message


def test_an_unknown_auth_method_is_rejected(no_vault_env: Path, tmp_path: Path) -> None:
    message = config_error(
        f"{{kind: vault, url: 'http://v:8200', auth: {{method: ldap, role: r, jwt_file: {tmp_path}}}}}"
    )
    assert "stores.main.auth.method" in message


# --- token files (Vault Agent's sink) -------------------------------------------------------------


def test_a_token_file_is_read_again_when_vault_agent_rewrites_it(
    openbao: OpenBaoServer, tmp_path: Path, loc: SecretLocation
) -> None:
    sink = tmp_path / "agent-token"
    first = openbao.create_token(["default", openbao.kv_policy("kv-all-tests", "tests")])
    sink.write_text(first.get_secret_value())
    store = VaultStore(openbao.url, auth=TokenFileAuth(sink))
    store.seed(loc, KeyPair.generate(), HOST)

    second = openbao.create_token(["default", "kv-all-tests"])
    sink.write_text(second.get_secret_value() + "\n")
    openbao.client().auth.token.revoke(first.get_secret_value())

    assert store.read_current(loc).version == 1
    assert store._client.token == second.get_secret_value()


def test_an_unreadable_token_file_is_denied_with_its_path(openbao: OpenBaoServer, tmp_path: Path) -> None:
    store = VaultStore(openbao.url, auth=TokenFileAuth(tmp_path / "missing"))
    with pytest.raises(StoreAccessDeniedError, match=r"cannot read Vault token_file .*missing"):
        store.describe(SecretLocation(path="tests/x"))


# --- JWT auth (Kubernetes service-account tokens, CI OIDC tokens) -------------------------------


@pytest.fixture(scope="module")
def issuer() -> JwtIssuer:
    return JwtIssuer()


def test_jwt_login_with_a_locally_signed_token(
    openbao: OpenBaoServer, issuer: JwtIssuer, store_path: str, tmp_path: Path, loc: SecretLocation
) -> None:
    role = openbao.enable_jwt(
        f"rot-{uuid.uuid4().hex[:8]}", store_path, public_key_pem=issuer.public_key_pem, audience=AUDIENCE
    )
    jwt_file = tmp_path / "token"
    jwt_file.write_text(issuer.token(audience=AUDIENCE))
    config = vault_config(
        f"{{kind: vault, url: {openbao.url}, auth: {{method: jwt, role: {role}, jwt_file: {jwt_file}}}}}"
    )
    store = build_store(config)
    pair = KeyPair.generate()
    store.seed(loc, pair, HOST)
    assert store.read_current(loc).key_pair() == pair

    with pytest.raises(StoreAccessDeniedError):  # the role's policy covers its prefix only
        store.read_current(SecretLocation(path="elsewhere/proj-a"))
    assert isinstance(store, VaultStore)
    assert scrub(f"token {store._client.token} leaked") == "token *** leaked"  # the login's token is redacted


def test_a_rejected_jwt_is_denied_without_quoting_it(
    openbao: OpenBaoServer, issuer: JwtIssuer, store_path: str, tmp_path: Path
) -> None:
    role = openbao.enable_jwt(
        f"rot-{uuid.uuid4().hex[:8]}", store_path, public_key_pem=issuer.public_key_pem, audience=AUDIENCE
    )
    jwt = issuer.token(audience="someone-else")
    (tmp_path / "token").write_text(jwt)
    store = VaultStore(openbao.url, auth=JwtAuth(role, tmp_path / "token"))
    with pytest.raises(StoreAccessDeniedError, match="JWT login") as caught:
        store.describe(SecretLocation(path=f"{store_path}/proj-a"))
    assert jwt not in caught.value.message
    assert jwt.split(".")[1] not in caught.value.message


def test_each_jwt_login_reads_the_current_file(
    openbao: OpenBaoServer, issuer: JwtIssuer, store_path: str, tmp_path: Path, loc: SecretLocation
) -> None:
    role = openbao.enable_jwt(
        f"rot-{uuid.uuid4().hex[:8]}", store_path, public_key_pem=issuer.public_key_pem, audience=AUDIENCE
    )
    jwt_file = tmp_path / "token"
    jwt_file.write_text(issuer.token(audience=AUDIENCE))
    store = VaultStore(openbao.url, auth=JwtAuth(role, jwt_file))
    store.seed(loc, KeyPair.generate(), HOST)

    jwt_file.write_text("not-a-jwt")  # the platform rotated the file; the next login reads it
    openbao.client().auth.token.revoke(store._client.token)
    with pytest.raises(StoreAccessDeniedError, match="JWT login"):
        store.read_current(loc)
    jwt_file.write_text(issuer.token(audience=AUDIENCE))
    assert store.read_current(loc).version == 1


# --- tokens kept alive through long waits ---------------------------------------------------------


@pytest.mark.slow  # waits for the token's TTL to run down
def test_a_short_lived_token_is_renewed_while_the_store_is_idle(
    openbao: OpenBaoServer, store_path: str, loc: SecretLocation
) -> None:
    policy = openbao.kv_policy(f"kv-{uuid.uuid4().hex[:8]}", store_path)
    token = openbao.create_token(["default", policy], ttl="2s")
    store = VaultStore(openbao.url, auth=TokenAuth(token))
    store.seed(loc, KeyPair.generate(), HOST)
    unattended = openbao.create_token(["default", policy], ttl="2s")

    time.sleep(3.5)  # an approval or a consumer wait: no store call for longer than the TTL

    assert store.read_current(loc).version == 1
    with pytest.raises(hvac.exceptions.Forbidden):  # the same kind of token, not renewed, is gone
        openbao.client(unattended.get_secret_value()).auth.token.lookup_self()
    store.close()


@pytest.mark.slow  # waits for the token's TTL to run down
def test_an_approle_token_near_expiry_is_replaced_by_a_new_login(
    openbao: OpenBaoServer, store_path: str, loc: SecretLocation
) -> None:
    creds = openbao.enable_approle(f"role-{uuid.uuid4().hex[:8]}", store_path, token_ttl="2s")
    store = VaultStore(openbao.url, auth=AppRoleAuth(creds.role_id, creds.secret_id))
    store.seed(loc, KeyPair.generate(), HOST)
    first = store._client.token
    time.sleep(1.5)  # past two thirds of the TTL, not yet expired

    assert store.read_current(loc).version == 1
    assert store._client.token != first
    with pytest.raises(hvac.exceptions.Forbidden):  # no 403 was needed to find out: it expired later
        time.sleep(1.0)
        openbao.client(first).auth.token.lookup_self()


@pytest.mark.slow  # waits for the token to expire
def test_a_jwt_token_that_expired_during_a_wait_is_replaced_by_a_new_login(
    openbao: OpenBaoServer, issuer: JwtIssuer, store_path: str, tmp_path: Path, loc: SecretLocation
) -> None:
    role = openbao.enable_jwt(
        f"rot-{uuid.uuid4().hex[:8]}",
        store_path,
        public_key_pem=issuer.public_key_pem,
        audience=AUDIENCE,
        token_ttl="2s",
    )
    (tmp_path / "token").write_text(issuer.token(audience=AUDIENCE))
    store = VaultStore(openbao.url, auth=JwtAuth(role, tmp_path / "token"))
    store.seed(loc, KeyPair.generate(), HOST)
    first_login = store._client.auth.token.lookup_self()["data"]["accessor"]
    time.sleep(2.5)  # Vault's own clock: the login's 2 s TTL runs out while the store is idle

    assert store.read_current(loc).version == 1
    assert store._client.auth.token.lookup_self()["data"]["accessor"] != first_login, "a new login's token"
    with pytest.raises(hvac.exceptions.InvalidRequest):  # the first login's token is gone
        openbao.client(openbao.root_token).auth.token.lookup_accessor(first_login)


# --- TLS with a private CA -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_openbao() -> Iterator[OpenBaoServer]:
    with OpenBaoServer(tls=True) as server:
        yield server


def test_ca_cert_verifies_a_server_signed_by_a_private_ca(tls_openbao: OpenBaoServer, loc: SecretLocation) -> None:
    token = SecretStr(tls_openbao.root_token)
    store = VaultStore(tls_openbao.url, auth=TokenAuth(token), ca_cert=tls_openbao.ca_cert)
    store.seed(loc, KeyPair.generate(), HOST)
    assert store.read_current(loc).version == 1

    with pytest.raises(StoreUnavailableError, match="TLS"):
        VaultStore(tls_openbao.url, auth=TokenAuth(token)).read_current(loc)


def test_vault_cacert_is_used_when_ca_cert_is_not_set(
    no_vault_env: Path, monkeypatch: pytest.MonkeyPatch, tls_openbao: OpenBaoServer, loc: SecretLocation
) -> None:
    monkeypatch.setenv("VAULT_ADDR", tls_openbao.url)
    monkeypatch.setenv("VAULT_TOKEN", tls_openbao.root_token)
    monkeypatch.setenv("VAULT_CACERT", tls_openbao.ca_cert)
    store = build_store(vault_config("{kind: vault}"))
    store.seed(loc, KeyPair.generate(), HOST)
    assert store.read_current(loc).version == 1


def test_vault_namespace_selects_the_namespace(
    no_vault_env: Path, monkeypatch: pytest.MonkeyPatch, openbao: OpenBaoServer, loc: SecretLocation
) -> None:
    namespace = f"team-{uuid.uuid4().hex[:6]}"
    openbao.create_namespace(namespace)
    monkeypatch.setenv("VAULT_ADDR", openbao.url)
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    monkeypatch.setenv("VAULT_NAMESPACE", namespace)
    store = build_store(vault_config("{kind: vault}"))
    store.seed(loc, KeyPair.generate(), HOST)

    inside = hvac.Client(url=openbao.url, token=openbao.root_token, namespace=namespace)
    assert inside.secrets.kv.v2.read_secret_version(path=loc.path, raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.InvalidPath):  # not in the root namespace
        openbao.client().secrets.kv.v2.read_secret_version(path=loc.path, raise_on_deleted_version=True)


def test_renewal_stops_once_the_token_is_revoked(openbao: OpenBaoServer, store_path: str, loc: SecretLocation) -> None:
    token = openbao.create_token(["default", openbao.kv_policy(f"kv-{uuid.uuid4().hex[:8]}", store_path)], ttl="2s")
    store = VaultStore(openbao.url, auth=TokenAuth(token))
    store.seed(loc, KeyPair.generate(), HOST)
    renewer = store._keeper._renewer
    assert renewer is not None and renewer.is_alive()
    openbao.client().auth.token.revoke(token.get_secret_value())

    renewer.join(timeout=5)
    assert not renewer.is_alive()
    with pytest.raises(StoreAccessDeniedError):
        store.read_current(loc)


def test_a_root_token_needs_no_renewal(vault_store: VaultStore, loc: SecretLocation) -> None:
    vault_store.seed(loc, KeyPair.generate(), HOST)
    assert vault_store._keeper._renewer is None
