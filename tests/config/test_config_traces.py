"""``consumers[].traces`` (README "Trace evidence"): a consumer's own traces as the evidence of its
key, instead of or besides a health endpoint; every bad input is one line naming file, line, field."""

from __future__ import annotations

import pytest

from flows.config.model import parse_config
from flows.errors import ConfigError
from flows.rotation.trace_evidence import trace_watches
from tests.config.test_config import MINIMAL


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"ORG_PK": "pk-lf-org", "ORG_SK": "sk-lf-org-secret", "VAULT_TOKEN": "s.token"}.items():
        monkeypatch.setenv(name, value)


def with_consumer(consumer: str) -> str:
    """MINIMAL with one consumer; ``consumer`` is its YAML, indented under ``- ``, first line line 13."""
    lines = consumer.strip("\n").splitlines()
    body = "\n".join(["    consumers:", "      - " + lines[0], *("        " + line for line in lines[1:])])
    path = "    path: langfuse/production-chatbot\n"
    return MINIMAL.replace(path, path + body + "\n")


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="rotation.yaml")
    message = str(caught.value)
    assert "\n" not in message
    return message


TRACES_ONLY = """\
name: api
restart_url: http://127.0.0.1:9001/restart
traces:
  match: {environment: production, tags: [api]}
"""


def test_a_consumer_with_traces_and_no_health_url_is_valid_with_the_defaults() -> None:
    consumer = parse_config(with_consumer(TRACES_ONLY)).projects[0].consumers[0]
    assert consumer.health_url is None
    assert consumer.traces is not None
    assert (consumer.traces.key_source, consumer.traces.key_metadata) == ("sdk", "langfuse_public_key")
    assert (consumer.traces.quiet_s, consumer.traces.after_revoke_s) == (30.0, 120.0)


def test_every_match_field_is_taken() -> None:
    text = with_consumer(
        """\
name: api
traces:
  match: {name: serve, environment: production, tags: [a, b], release: r1, version: v2, metadata: {team: x}}
  key_source: metadata
  key_metadata: lf_pk
  quiet_s: 5
  after_revoke_s: 60
"""
    )
    (watch,) = trace_watches(parse_config(text).projects[0])
    assert watch.match.model_dump() == {
        "name": "serve",
        "environment": "production",
        "tags": ("a", "b"),
        "release": "r1",
        "version": "v2",
        "metadata": {"team": "x"},
    }
    assert watch.key is not None and (watch.key.source, watch.key.metadata_key) == ("metadata", "lf_pk")
    assert (watch.quiet_s, watch.after_revoke_s) == (5.0, 60.0)


def test_key_source_none_gives_no_key_to_read() -> None:
    text = with_consumer(TRACES_ONLY + "  key_source: none\n")
    (watch,) = trace_watches(parse_config(text).projects[0])
    assert watch.key is None and not watch.gives_evidence_before_revoke


def test_a_consumer_with_both_health_url_and_traces_is_valid() -> None:
    text = with_consumer(TRACES_ONLY + "health_url: http://127.0.0.1:9001/health\n")
    (watch,) = trace_watches(parse_config(text).projects[0])
    assert watch.has_health


def test_a_consumer_with_neither_health_url_nor_traces_names_both() -> None:
    message = error_of(with_consumer("name: api\nrestart_url: http://127.0.0.1:9001/restart\n"))
    assert message.startswith("rotation.yaml:13: projects[0].consumers[0]: ")
    assert "health_url" in message and "traces" in message


def test_traces_without_match_is_a_config_error_at_its_line() -> None:
    message = error_of(with_consumer("name: api\ntraces:\n  quiet_s: 5\n"))
    assert message == "rotation.yaml:14: projects[0].consumers[0].traces.match: required field is missing"


def test_an_unknown_match_field_is_a_config_error_at_its_line() -> None:
    message = error_of(with_consumer("name: api\ntraces:\n  match:\n    service: api\n"))
    assert message.startswith("rotation.yaml:16: projects[0].consumers[0].traces.match.service: unknown key")


def test_an_empty_match_is_a_config_error() -> None:
    message = error_of(with_consumer("name: api\ntraces:\n  match: {}\n"))
    assert message.startswith("rotation.yaml:15: projects[0].consumers[0].traces.match: match names nothing")


def test_an_unknown_key_source_is_a_config_error_at_its_line() -> None:
    message = error_of(with_consumer(TRACES_ONLY + "  key_source: header\n"))
    assert message.startswith("rotation.yaml:17: projects[0].consumers[0].traces.key_source: ")
    assert "'sdk', 'metadata' or 'none'" in message


@pytest.mark.parametrize("field", ["quiet_s", "after_revoke_s"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_window_of_zero_or_less_is_a_config_error_at_its_line(field: str, value: str) -> None:
    message = error_of(with_consumer(TRACES_ONLY + f"  {field}: {value}\n"))
    assert message.startswith(f"rotation.yaml:17: projects[0].consumers[0].traces.{field}: ")
    assert "greater than 0" in message


def test_a_misspelled_traces_key_suggests_the_right_one() -> None:
    message = error_of(with_consumer(TRACES_ONLY + "  quiet: 5\n"))
    assert message == "rotation.yaml:17: projects[0].consumers[0].traces.quiet: unknown key (did you mean `quiet_s`?)"


def test_the_after_revoke_deadline_is_the_longest_of_the_entry() -> None:
    text = with_consumer(TRACES_ONLY + "  after_revoke_s: 45\n")
    assert parse_config(text).projects[0].after_revoke_s == 45.0
    assert parse_config(MINIMAL).projects[0].after_revoke_s == 0.0


def test_a_project_template_fills_the_project_into_the_traces_match() -> None:
    from connectors.langfuse.models import OrganizationProject
    from flows.config.templates import entry_for

    text = MINIMAL + (
        "project_template:\n"
        "  store: main\n"
        "  path: langfuse/{project_name}\n"
        "  consumers:\n"
        "    - name: api\n"
        "      traces:\n"
        "        match:\n"
        "          environment: '{project_name}'\n"
        "          tags: ['{project_id}']\n"
        "          metadata: {project: '{project_name}'}\n"
    )
    template = parse_config(text).project_template
    assert template is not None

    entry = entry_for(template, OrganizationProject(id="p9", name="shop"))

    (watch,) = trace_watches(entry)
    assert (watch.match.environment, watch.match.tags, watch.match.metadata) == ("shop", ("p9",), {"project": "shop"})
