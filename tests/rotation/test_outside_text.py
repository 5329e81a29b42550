"""Text from outside is shown only after validation (README "Safety guarantees"): a value a consumer,
an event, Langfuse or a store hands us goes into a notification, the step table or the summary
artifact only as what it was checked to be (a public key matches ``pk-lf-[A-Za-z0-9-]+``, anything
else is ``<invalid>``), on one line, and escaped for Markdown in the artifact: it can neither forge
lines (``status: rotated``) nor links, nor break out of a code span or a table cell.
"""

from __future__ import annotations

import re

import pytest

from connectors.consumers import Consumer, ConsumerClient
from flows.models import RotationResult, StepRecord
from flows.prefect.artifact import summary_markdown
from flows.rotation.entry_run import execute
from flows.rotation.notification import notification_for
from flows.rotation.runners import DirectRunner
from flows.shown import INVALID, markdown_code, markdown_text, shown_key, single_line
from tests.fixtures.devstack import HealthStub
from tests.fixtures.rotation import ENTRY, RotationEnv

single_store = pytest.mark.parametrize("any_store", ["vault"], indirect=True)

FORGED = "pk-lf-1` | yes |\nstatus: rotated\nold key rejected: True [Open the run](http://evil.example/run)"


def _forged_lines(text: str) -> list[str]:
    """Lines of ``text`` that the hostile value forged: a second status line, or a link."""
    status_lines = [line for line in text.splitlines() if line.startswith("status:")]
    return status_lines[1:] + [line for line in text.splitlines() if "](" in line or "http://evil" in line]


# --- the rules ----------------------------------------------------------------------------------


def test_a_public_key_is_shown_only_when_it_is_one() -> None:
    assert shown_key("pk-lf-1c2d3e4f-aaaa-bbbb") == "pk-lf-1c2d3e4f-aaaa-bbbb"
    assert shown_key(None) == "None"
    for hostile in (FORGED, "pk-lf-abc\n", "pk-lf-", "pk-lf-a b", "sk-lf-secret", "pk-lf-a`b", "pk-lf-" + "a" * 201):
        assert shown_key(hostile) == INVALID


def test_any_value_is_shown_on_one_line_without_control_characters() -> None:
    assert single_line("a\nb\r\nc\u2028d\x1b[31me\x00f") == "a b c d?[31me?f"


def test_markdown_text_cannot_make_links_code_spans_or_table_cells() -> None:
    shown = markdown_text("x` | y | [a](http://evil.example) <http://evil.example> www.evil.example\n# h")
    assert "\n" not in shown
    assert re.search(r"(?<!\\)[`|\[\]()<>]", shown) is None, shown
    assert "http://" not in shown and "www." not in shown


def test_a_code_span_holds_only_a_value_without_backticks() -> None:
    assert markdown_code("pk-lf-abc") == "`pk-lf-abc`"
    assert markdown_code("v1` [x](http://evil)") == markdown_text(INVALID) == "\\<invalid\\>"


# --- a consumer that reports a forged "key" -----------------------------------------------------


def test_a_health_answer_that_is_not_a_public_key_counts_as_no_key(health_stub: HealthStub) -> None:
    health_stub.set(mode="ok", public_key=FORGED)
    consumer = Consumer(name="api", health_url=health_stub.health_url, timeout_s=5)

    with ConsumerClient() as client:
        seen = client.observe(consumer)

    assert seen.public_key is None
    assert seen.error == f"health check: field 'langfuse_public_key' reported {INVALID}, not a Langfuse public key"


@single_store
def test_a_hostile_consumer_forges_no_line_link_or_cell_in_the_notification_and_artifact(
    rotation_env: RotationEnv, health_stub: HealthStub
) -> None:
    health_stub.set(mode="ok", public_key=FORGED)
    rotation_env.consumers = [{"name": "api", "health_url": health_stub.health_url}]
    rotation_env.entry_overrides = {"wait_timeout_s": 1}

    result = execute("rotate", ENTRY, str(rotation_env.write_config()), DirectRunner())

    assert result.status != "rotated"
    assert result.consumers == {"api": None}
    (note,) = rotation_env.sink.wait_for(1, timeout_s=10)
    message = note.json["message"]
    assert _forged_lines(message) == [], message
    assert INVALID in message
    markdown = summary_markdown(result)
    assert _forged_lines(markdown) == [], markdown
    assert "http" not in markdown
    for line in markdown.splitlines():
        assert len(re.findall(r"(?<!\\)`", line)) % 2 == 0, line  # every code span closes on its line
    header = "| consumer | public key seen last | switched |"
    assert header in markdown
    for row in markdown.split(header, 1)[1].splitlines()[2:]:
        if row.startswith("|"):
            assert len(re.findall(r"(?<!\\)\|", row)) == 4, row  # three cells, no more


def test_values_from_stores_and_langfuse_are_shown_validated_in_notifications_and_artifacts() -> None:
    result = RotationResult(
        status="failed",
        project=ENTRY,
        old_public_key=FORGED,
        new_public_key="pk-lf-new",
        store_version="7` [x](http://evil.example)",
        consumers={"api": FORGED},
        error="Langfuse said: no\nstatus: rotated",
        steps=[StepRecord(step="revoke", outcome="failed", duration_s=0.1, detail="deleted\nstatus: rotated [x](y)")],
        reconciled=["deleted orphan key pk-lf-x\nstatus: rotated"],
    )

    message = notification_for(result).body
    markdown = summary_markdown(result)

    assert _forged_lines(message) == [], message
    assert f"old public key: {INVALID}" in message
    assert "consumers: api=" + INVALID in message
    assert f"version {INVALID}" in message
    assert _forged_lines(markdown) == [], markdown
    assert f"| old public key | {markdown_text(INVALID)} |" in markdown
    assert f"| store version | {markdown_text(INVALID)} |" in markdown
    assert "http://" not in markdown
