"""Keys over plain text are never accepted silently (docs/trust-boundary.md).

``http://`` to a Langfuse host, a Vault server or an AWS endpoint that is not loopback, and a Vault
store's ``verify_tls: false``: a warning when the configuration loads (once per process, exit
codes unchanged), a ``warnings`` line of ``status`` and a ``plaintext-transport`` finding of
``report`` (high for plain HTTP, medium for an unchecked certificate). The local stack (loopback)
says nothing.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import pytest

from flows.config.model import load_config, parse_config
from tests.fixtures.inventory import InventoryEnv
from tests.fixtures.rotation import ENTRY, RotationEnv

vault_only = pytest.mark.parametrize("any_store", ["vault"], indirect=True)

CONFIG = """\
langfuse:
  host: 'LANGFUSE'
  org_public_key: pk-lf-org
  org_secret_key: sk-lf-org-secret
stores:
  main: {kind: vault, url: 'VAULT', token: s.token, mount: secret}
projects:
  - {name: chatbot, project_id: p1, store: main, path: langfuse/chatbot}
"""


def config(langfuse: str = "https://langfuse.example.com", vault: str = "https://vault.example.com") -> Any:
    return parse_config(CONFIG.replace("LANGFUSE", langfuse).replace("VAULT", vault))


def transport_risks(config: Any) -> list[Any]:
    from flows.config.transport import transport_risks

    return transport_risks(config)


def unique_host() -> str:
    """A host name no other test warned about (each risk is logged once per process)."""
    return f"h{uuid.uuid4().hex[:10]}.example.com"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:3000",
        "http://127.8.9.10:3000",
        "http://localhost:3000",
        "http://LOCALHOST.:3000",
        "http://[::1]:3000",
        "https://langfuse.example.com",
        "https://10.0.0.5",
    ],
)
def test_loopback_and_https_are_not_risks(url: str) -> None:
    assert transport_risks(config(langfuse=url, vault=url)) == []


@pytest.mark.parametrize(
    "url",
    ["http://langfuse.example.com", "http://10.0.0.5:3000", "http://[2001:db8::1]:3000", "http://127.0.0.1.nip.io"],
)
def test_plain_http_to_any_other_host_is_a_high_risk(url: str) -> None:
    [langfuse, vault] = transport_risks(config(langfuse=url, vault=url))
    assert (langfuse.field, langfuse.severity) == ("langfuse.host", "high")
    assert (vault.field, vault.severity) == ("stores.main.url", "high")
    assert "plain HTTP" in langfuse.detail and url in langfuse.detail


def test_an_entrys_own_host_and_an_aws_endpoint_count_too() -> None:
    text = (
        CONFIG.replace("LANGFUSE", "https://langfuse.example.com")
        .replace("VAULT", "https://vault.example.com")
        .replace("path: langfuse/chatbot}", "path: langfuse/chatbot, host: 'http://eu.langfuse.example.com'}")
        .replace(
            "projects:", "  aws: {kind: aws, region: eu-central-1, endpoint_url: 'http://sm.example.com'}\nprojects:"
        )
    )
    risks = transport_risks(parse_config(text))
    assert [(r.field, r.severity, r.entry) for r in risks] == [
        ("stores.aws.endpoint_url", "high", None),
        ("projects[0].host", "high", "chatbot"),
    ]


def test_a_vault_store_that_does_not_check_certificates_is_a_medium_risk() -> None:
    text = CONFIG.replace("LANGFUSE", "https://langfuse.example.com").replace(
        "'VAULT', token: s.token", "https://vault.example.com, token: s.token, verify_tls: false"
    )
    [risk] = transport_risks(parse_config(text))
    assert (risk.field, risk.severity) == ("stores.main.verify_tls", "medium")


def test_credentials_in_a_url_never_reach_the_warning() -> None:
    [risk, _] = transport_risks(config(langfuse="http://user:hunter2@lf.example.com", vault="http://vault.example.com"))
    assert "hunter2" not in risk.line() and "lf.example.com" in risk.line()


def test_loading_warns_once_per_risk_however_often_the_file_is_loaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    host = unique_host()
    path = tmp_path / "rotation.yaml"
    path.write_text(CONFIG.replace("LANGFUSE", f"http://{host}").replace("VAULT", f"http://vault.{host}:8200"))
    with caplog.at_level(logging.WARNING, logger="langfuse_rotate.config"):
        load_config(path)
        load_config(path)
    lines = [r.getMessage() for r in caplog.records if r.name == "langfuse_rotate.config"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("warning: langfuse.host: ") and host in lines[0]
    assert lines[1].startswith("warning: stores.main.url: ")


def test_the_local_stack_says_nothing(rotation_env: RotationEnv, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        load_config(rotation_env.write_config())
    assert [r.getMessage() for r in caplog.records if r.name == "langfuse_rotate.config"] == []


# --- on the command line, against the local stack -----------------------------------------------


def add_risks(env: RotationEnv) -> tuple[str, str]:
    """The store gets ``verify_tls: false``, and an unused second store speaks plain HTTP to a
    remote host (nothing connects to it). Returns the two fields named."""
    host = unique_host()
    main = env.store.config() | {"verify_tls": False}
    remote = {"kind": "vault", "url": f"http://{host}:8200", "token": "s.unused"}
    env.top_overrides["stores"] = {"main": main, "remote": remote}
    return "stores.main.verify_tls", "stores.remote.url"


@vault_only
def test_status_shows_each_risk_on_stderr_and_in_its_json_and_still_exits_0(inventory_env: InventoryEnv) -> None:
    unchecked, plain = add_risks(inventory_env.rot)

    code, data, stderr = inventory_env.run("status")

    assert code == 0, stderr
    assert [w.split(":")[0] for w in data["warnings"]] == [unchecked, plain]
    assert f"warning: {unchecked}: " in stderr and f"warning: {plain}: " in stderr
    assert len(data["entries"]) == 2


@vault_only
def test_status_without_json_lists_the_warnings(
    inventory_env: InventoryEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli.main import main

    unchecked, plain = add_risks(inventory_env.rot)
    path = inventory_env.rot.write_config()
    capsys.readouterr()

    code = main(["status", "--config", str(path)])

    out = capsys.readouterr().out
    assert code == 0
    assert f"warning: {unchecked}: " in out and f"warning: {plain}: " in out


@vault_only
def test_a_clean_status_has_an_empty_warnings_list(inventory_env: InventoryEnv) -> None:
    code, data, _ = inventory_env.run("status")
    assert (code, data["warnings"]) == (0, [])


@vault_only
def test_the_report_lists_each_risk_as_a_plaintext_transport_finding(inventory_env: InventoryEnv) -> None:
    unchecked, plain = add_risks(inventory_env.rot)

    code, data = inventory_env.report()

    assert code == 4
    found = {f["detail"].split(":")[0]: f for f in data["findings"] if f["rule"] == "plaintext-transport"}
    assert sorted(found) == sorted([unchecked, plain]), data["findings"]
    assert (found[plain]["severity"], found[unchecked]["severity"]) == ("high", "medium")
    assert found[plain]["entry"] is None
    assert len(data["findings"]) == 2


@vault_only
def test_a_rotation_warns_once_on_stderr_and_its_exit_code_is_unchanged(rotation_env: RotationEnv) -> None:
    _, plain = add_risks(rotation_env)

    proc = rotation_env.cli(
        "rotate", "--config", str(rotation_env.write_config()), "--project", ENTRY, "--dry-run", "--json"
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.count(f"warning: {plain}: ") == 1, proc.stderr
    assert "warning" not in proc.stdout
