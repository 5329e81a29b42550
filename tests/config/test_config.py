"""The configuration: one validated model; every error is one line naming file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.config.model import load_config, parse_config
from flows.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "deployments" / "rotation.example.yaml"

MINIMAL = """\
langfuse:
  host: http://127.0.0.1:3000
  org_public_key: ${ORG_PK}
  org_secret_key: ${ORG_SK}
stores:
  main: {kind: vault, url: http://127.0.0.1:8200, token: ${VAULT_TOKEN}, mount: secret}
projects:
  - name: production-chatbot
    project_id: p1
    store: main
    path: langfuse/production-chatbot
notify:
  urls: ["json://127.0.0.1:9002/hook"]
"""


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"ORG_PK": "pk-lf-org", "ORG_SK": "sk-lf-org-secret", "VAULT_TOKEN": "s.token"}.items():
        monkeypatch.setenv(name, value)


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="rotation.yaml")
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_the_issue_example_with_env_references_in_flow_mappings_loads() -> None:
    config = parse_config(MINIMAL)
    assert config.stores["main"].kind == "vault"
    assert config.langfuse.org_secret_key is not None
    assert config.langfuse.org_secret_key.get_secret_value() == "sk-lf-org-secret"


def test_the_shipped_example_configuration_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LANGFUSE_ORG_PUBLIC_KEY", "LANGFUSE_ORG_SECRET_KEY", "VAULT_TOKEN", "API_RESTART_TOKEN"):
        monkeypatch.setenv(name, "pk-lf-x" if "PUBLIC" in name else "value")
    config = load_config(EXAMPLE)
    assert [p.name for p in config.projects] == ["production-chatbot", "batch-worker-prod"]


def test_secrets_never_appear_in_the_models_repr() -> None:
    assert "sk-lf-org-secret" not in repr(parse_config(MINIMAL))
    assert "s.token" not in repr(parse_config(MINIMAL))


WITH_URL_CREDENTIALS = MINIMAL.replace(
    "    path: langfuse/production-chatbot\n",
    "    path: langfuse/production-chatbot\n"
    "    consumers:\n"
    "      - name: api\n"
    "        health_url: http://probe:basic-pass-0008@127.0.0.1:9001/health?token=health-token-0009\n"
    "        restart_url: http://127.0.0.1:9001/restart?token=restart-token-0010\n",
).replace(
    'urls: ["json://127.0.0.1:9002/hook"]',
    'urls: ["json://hook-user:hook-pass-0011@127.0.0.1:9002/hook",'
    ' {url: "json://127.0.0.1:9002/h?+X-Token=hdr-token-0012", tags: [failure]}]',
)
URL_SECRETS = ("basic-pass-0008", "health-token-0009", "restart-token-0010", "hook-pass-0011", "hdr-token-0012")


def test_urls_with_credentials_never_appear_in_the_models_repr() -> None:
    config = parse_config(WITH_URL_CREDENTIALS)
    shown = repr(config) + str(config)
    for secret in URL_SECRETS:
        assert secret not in shown
    assert "127.0.0.1:9001/health" in shown  # the rest of a consumer URL stays readable
    assert config.projects[0].consumers[0].health_url.endswith("?token=health-token-0009")  # usable as is


def test_urls_with_credentials_are_masked_in_every_log_record() -> None:
    from flows.redact import scrub

    parse_config(WITH_URL_CREDENTIALS)
    logged = scrub(" ".join(f"GET x?token={s}" for s in URL_SECRETS))
    for secret in URL_SECRETS:
        assert secret not in logged


def test_a_missing_env_var_names_the_line_field_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAULT_TOKEN")
    assert error_of(MINIMAL) == "rotation.yaml:6: stores.main.token: environment variable VAULT_TOKEN is not set"


def test_an_env_default_applies_when_the_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAULT_TOKEN")
    config = parse_config(MINIMAL.replace("${VAULT_TOKEN}", "${VAULT_TOKEN:-s.fallback}"))
    assert config.stores["main"].token.get_secret_value() == "s.fallback"  # type: ignore[union-attr]


def test_an_unknown_key_is_rejected_with_its_line() -> None:
    assert error_of(MINIMAL.replace("    project_id: p1", "    projectid: p1")) == (
        "rotation.yaml:9: projects[0].projectid: unknown key (did you mean `project_id`?)"
    )


def test_a_bad_value_is_rejected_with_its_line() -> None:
    text = MINIMAL.replace(
        "    path: langfuse/production-chatbot\n", "    path: langfuse/production-chatbot\n    wait_timeout_s: -5\n"
    )
    assert error_of(text) == "rotation.yaml:12: projects[0].wait_timeout_s: Input should be greater than 0"


def test_an_unknown_store_reference_is_rejected() -> None:
    assert error_of(MINIMAL.replace("    store: main", "    store: other")) == (
        "rotation.yaml:10: projects[0].store: unknown store 'other' (configured: main)"
    )


def test_a_duplicate_entry_name_is_rejected() -> None:
    entry = MINIMAL.split("projects:\n")[1].split("notify:")[0]
    text = MINIMAL.replace("notify:", entry + "notify:")
    assert "'production-chatbot' appears twice" in error_of(text)


def test_an_unknown_store_kind_is_rejected() -> None:
    assert "stores.main" in error_of(MINIMAL.replace("kind: vault", "kind: consul"))


def test_a_missing_org_key_is_rejected() -> None:
    text = MINIMAL.replace("  org_public_key: ${ORG_PK}\n  org_secret_key: ${ORG_SK}\n", "")
    assert "organization key is missing" in error_of(text)


def test_vault_needs_exactly_one_auth_method() -> None:
    both = MINIMAL.replace(", token: ${VAULT_TOKEN}", ", token: ${VAULT_TOKEN}, approle: {role_id: r, secret_id: s}")
    assert "exactly one of token, token_file, approle or auth" in error_of(both)


def test_invalid_yaml_names_the_line() -> None:
    assert error_of("langfuse: [unclosed\n").startswith("rotation.yaml:")


def test_an_empty_file_is_rejected() -> None:
    assert error_of("") == "rotation.yaml: the file is empty"


def test_an_unknown_project_lists_the_configured_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown project 'nope' \(configured: production-chatbot\)"):
        parse_config(MINIMAL).entry("nope")


# --- store paths and mounts reach only their own place (docs/configuration.md) ----------------

BAD_PATHS = [
    "team-a/../team-b/key",
    "../../other-mount/langfuse/x",
    "..",
    "langfuse//x",
    "langfuse/x/",
    "/langfuse/x",
    "langfuse/%2e%2e/x",
    "langfuse/./x",
    "langfuse/x/rotation-pending",
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_a_store_path_that_could_reach_another_secret_is_rejected_naming_line_and_field(path: str) -> None:
    message = error_of(MINIMAL.replace("path: langfuse/production-chatbot", f"path: '{path}'"))
    assert message.startswith("rotation.yaml:11: projects[0].path: ")


@pytest.mark.parametrize("mount", ["secret/../other", "/secret", "sec%72et", "secret//x", "", "..", "secret/"])
def test_a_vault_mount_that_could_reach_another_mount_is_rejected(mount: str) -> None:
    message = error_of(MINIMAL.replace("mount: secret}", f"mount: '{mount}'}}"))
    assert message.startswith("rotation.yaml:6: stores.main.mount: ")


def test_the_organization_keys_store_path_is_checked_too() -> None:
    text = MINIMAL.replace(
        "  org_public_key: ${ORG_PK}\n  org_secret_key: ${ORG_SK}\n",
        "  org_key: {store: main, path: 'langfuse/../team-b/org'}\n",
    )
    assert error_of(text).startswith("rotation.yaml:3: langfuse.org_key.path: ")


def test_ordinary_nested_paths_and_aws_names_still_load() -> None:
    text = MINIMAL.replace("path: langfuse/production-chatbot", "path: team-a/langfuse/prod_chat-bot.v2")
    assert parse_config(text).projects[0].path == "team-a/langfuse/prod_chat-bot.v2"


# --- YAML aliases: bounded, never a traceback ---------------------------------------------------

ALIAS_BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8))
    + "langfuse: *i\n"
)


def test_a_yaml_alias_bomb_is_rejected_quickly_naming_the_line() -> None:
    import time
    import tracemalloc

    tracemalloc.start()
    started = time.monotonic()
    try:
        message = error_of(ALIAS_BOMB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Expanded, the bomb is 10**9 list items: minutes and gigabytes. Only that (or a hang) takes
    # 30 s; the memory peak is the sharper witness.
    assert time.monotonic() - started < 30
    assert peak < 50 * 1024 * 1024
    assert message.startswith("rotation.yaml:") and "alias" in message


def test_a_recursive_yaml_alias_is_rejected_without_a_traceback() -> None:
    message = error_of("langfuse: &a\n  host: *a\n")
    assert message.startswith("rotation.yaml:") and "alias" in message


def test_deeply_nested_yaml_is_rejected_without_a_traceback() -> None:
    message = error_of("langfuse: " + "[" * 5000 + "]" * 5000 + "\n")
    assert message.startswith("rotation.yaml")


def test_a_small_alias_reused_a_few_times_still_loads() -> None:
    text = MINIMAL.replace(
        "    path: langfuse/production-chatbot\n",
        "    path: langfuse/production-chatbot\n"
        "    consumers: &shared [{name: api, health_url: 'http://127.0.0.1:9001/health'}]\n"
        "  - name: second\n    project_id: p2\n    store: main\n    path: langfuse/second\n    consumers: *shared\n",
    )
    config = parse_config(text)
    assert [c.name for c in config.projects[1].consumers] == ["api"]


def test_a_fleet_of_two_thousand_entries_written_out_loads() -> None:
    """The alias budget bounds what aliases add, not the size of a large configuration (issue 11)."""
    entries = "".join(
        f"  - name: svc-{i}\n    project_id: p{i % 100}\n    store: main\n    path: langfuse/svc-{i}\n"
        f"    consumers: [{{name: app, health_url: 'http://127.0.0.1:9001/health?path=svc-{i}'}}]\n"
        for i in range(2000)
    )
    text = MINIMAL.replace(
        "  - name: production-chatbot\n    project_id: p1\n    store: main\n    path: langfuse/production-chatbot\n",
        entries,
    )
    assert len(parse_config(text).projects) == 2000


# --- errors in the tool's words, at the key's own line (issue 13) -------------------------------


def test_a_misspelled_key_suggests_the_nearest_known_one() -> None:
    text = MINIMAL.replace("    path: langfuse/production-chatbot\n", "    path: x\n    wait_timout_s: 5\n")
    assert error_of(text) == (
        "rotation.yaml:12: projects[0].wait_timout_s: unknown key (did you mean `wait_timeout_s`?)"
    )


def test_a_misspelled_key_whose_value_is_a_mapping_is_reported_at_the_keys_own_line() -> None:
    text = MINIMAL.replace("notify:\n  urls:", "notfy:\n  urls:")
    message = error_of(text)
    assert message.startswith("rotation.yaml:12: notfy: unknown key (did you mean `notify`?)"), message


def test_a_misspelled_store_field_suggests_the_stores_field() -> None:
    text = MINIMAL.replace("token: ${VAULT_TOKEN}", "tokn: ${VAULT_TOKEN}")
    assert "stores.main.tokn: unknown key (did you mean `token`?)" in error_of(text)


def test_an_unknown_store_kind_is_named_in_the_tools_words() -> None:
    text = MINIMAL.replace("kind: vault", "kind: vaultt")
    assert error_of(text) == "rotation.yaml:6: stores.main.kind: unknown store kind 'vaultt' (expected vault or aws)"


def test_every_missing_environment_variable_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORG_PK")
    monkeypatch.delenv("VAULT_TOKEN")
    message = error_of(MINIMAL)
    assert message == (
        "rotation.yaml:3: langfuse.org_public_key: environment variable ORG_PK is not set; "
        "rotation.yaml:6: stores.main.token: environment variable VAULT_TOKEN is not set"
    )


def test_an_unknown_key_comes_before_the_missing_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORG_PK")
    monkeypatch.delenv("VAULT_TOKEN")
    text = MINIMAL.replace("    path: langfuse/production-chatbot\n", "    path: x\n    wait_timout_s: 5\n")
    assert error_of(text) == (
        "rotation.yaml:12: projects[0].wait_timout_s: unknown key (did you mean `wait_timeout_s`?)"
    )


def test_missing_environment_variables_come_before_bad_values_and_references(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("VAULT_TOKEN")
    text = MINIMAL.replace("    store: main", "    store: other").replace(
        "    path: langfuse/production-chatbot\n", "    path: x\n    wait_timeout_s: -5\n"
    )
    assert error_of(text) == "rotation.yaml:6: stores.main.token: environment variable VAULT_TOKEN is not set"


def test_a_yaml_syntax_error_points_at_the_line_that_is_broken() -> None:
    text = MINIMAL.replace(
        "  main: {kind: vault, url: http://127.0.0.1:8200, token: ${VAULT_TOKEN}, mount: secret}",
        "  main: {kind: vault, url: http://127.0.0.1:8200, token: ${VAULT_TOKEN}, mount: secret",
    )
    message = error_of(text)
    assert message.startswith("rotation.yaml:6: while parsing a flow mapping"), message
