"""Notifier through real apprise to local HTTP and SMTP sinks."""

from __future__ import annotations

import logging

import pytest

from connectors.notify import Notification, Notifier, NotifyTarget
from devstack.net import free_port
from devstack.sinks import JsonSink, SmtpSink

SUCCESS = Notification(title="Key rotated", body="project proj-a rotated to pk-lf-new", kind="success")
FAILURE = Notification(title="Rotation failed", body="rolled back", kind="failure")
EMERGENCY = Notification(title="Key contained", body="pk-lf-old revoked", kind="emergency")
INFO = Notification(title="Dry run", body="nothing changed", kind="info")


def paths(sink: JsonSink) -> list[str]:
    return sorted(r.path for r in sink.received())


def test_json_target_receives_title_body_and_type(json_sink: JsonSink) -> None:
    result = Notifier([NotifyTarget.parse(json_sink.apprise_url("/hooks/keyrot"))]).send(SUCCESS)
    assert (result.status, result.delivered, result.failed, result.errors) == ("sent", 1, 0, [])
    [request] = json_sink.received()
    assert (request.method, request.path) == ("POST", "/hooks/keyrot")
    assert request.json["title"] == "Key rotated"
    assert request.json["message"] == "project proj-a rotated to pk-lf-new"
    assert request.json["type"] == "success"


def routing_notifier(sink: JsonSink) -> Notifier:
    return Notifier(
        [
            NotifyTarget.parse(sink.apprise_url("/untagged")),
            NotifyTarget.parse("success=" + sink.apprise_url("/success")),
            NotifyTarget.parse("failure=" + sink.apprise_url("/failure")),
            NotifyTarget.parse("emergency=" + sink.apprise_url("/emergency")),
        ]
    )


def test_success_goes_to_untagged_and_success_tagged_targets(json_sink: JsonSink) -> None:
    result = routing_notifier(json_sink).send(SUCCESS)
    assert result.delivered == 2
    assert paths(json_sink) == ["/success", "/untagged"]


def test_failure_goes_to_untagged_and_failure_tagged_targets(json_sink: JsonSink) -> None:
    routing_notifier(json_sink).send(FAILURE)
    assert paths(json_sink) == ["/failure", "/untagged"]


def test_emergency_carries_emergency_and_failure_tags_and_apprise_type_failure(json_sink: JsonSink) -> None:
    result = routing_notifier(json_sink).send(EMERGENCY)
    assert result.delivered == 3
    assert paths(json_sink) == ["/emergency", "/failure", "/untagged"]
    assert {r.json["type"] for r in json_sink.received()} == {"failure"}


def test_info_goes_only_to_untagged_targets(json_sink: JsonSink) -> None:
    routing_notifier(json_sink).send(INFO)
    assert paths(json_sink) == ["/untagged"]
    assert json_sink.received()[0].json["type"] == "info"


def test_target_with_several_tags_receives_any_of_them(json_sink: JsonSink) -> None:
    notifier = Notifier([NotifyTarget.parse("success,emergency=" + json_sink.apprise_url("/ops"))])
    for notification in (SUCCESS, FAILURE, EMERGENCY):
        notifier.send(notification)
    assert [r.json["title"] for r in json_sink.received()] == ["Key rotated", "Key contained"]


def test_no_routed_target_is_skipped_not_failed(json_sink: JsonSink) -> None:
    result = Notifier([NotifyTarget.parse("failure=" + json_sink.apprise_url("/f"))]).send(SUCCESS)
    assert (result.status, result.delivered, result.failed) == ("skipped", 0, 0)
    assert Notifier([]).send(SUCCESS).status == "skipped"
    assert json_sink.received() == []


def test_failing_endpoint_reports_failed_without_raising(json_sink: JsonSink) -> None:
    json_sink.fail_next(1, status=500)
    result = Notifier([NotifyTarget.parse(json_sink.apprise_url("/hook"))]).send(FAILURE)
    assert (result.status, result.delivered, result.failed) == ("failed", 0, 1)
    assert result.errors == [
        "target #1 (json): Failed to send JSON POST notification: Internal server error., error=500."
    ]


def test_one_failing_target_of_two_is_partial(json_sink: JsonSink) -> None:
    dead = f"json://127.0.0.1:{free_port()}/hook"
    result = Notifier([NotifyTarget.parse(dead), NotifyTarget.parse(json_sink.apprise_url())]).send(SUCCESS)
    assert (result.status, result.delivered, result.failed) == ("partial", 1, 1)
    assert len(result.errors) == 1 and result.errors[0].startswith("target #1 (json): ")
    assert len(json_sink.received()) == 1


@pytest.mark.parametrize(
    ("value", "tags"),
    [
        ("json://127.0.0.1:9/x", frozenset()),
        ("failure,emergency=json://127.0.0.1:9/x", frozenset({"failure", "emergency"})),
        (" Failure , EMERGENCY = json://127.0.0.1:9/x?retry=1", frozenset({"failure", "emergency"})),
        ({"url": "json://127.0.0.1:9/x", "tags": ["success"]}, frozenset({"success"})),
        ({"url": "json://127.0.0.1:9/x", "tags": "success, failure"}, frozenset({"success", "failure"})),
        ({"url": "json://127.0.0.1:9/x", "tag": "emergency"}, frozenset({"emergency"})),
        ({"url": "json://127.0.0.1:9/x"}, frozenset()),
    ],
)
def test_parse_accepts_plain_tag_prefixed_and_mapping_forms(value: object, tags: frozenset[str]) -> None:
    target = NotifyTarget.parse(value)  # type: ignore[arg-type]
    assert target.tags == tags
    assert target.url.get_secret_value().startswith("json://127.0.0.1:9/x")


def test_parse_keeps_equals_signs_inside_an_untagged_url_query() -> None:
    target = NotifyTarget.parse("json://127.0.0.1:9/x?:extra=1")
    assert target.tags == frozenset()
    assert target.url.get_secret_value() == "json://127.0.0.1:9/x?:extra=1"


@pytest.mark.parametrize(
    "value",
    [
        "not a url",
        "notaschema://user:hunter2secret@host/x",
        {"tags": ["failure"]},
        {"url": "json://h/x", "colour": "red"},
        42,
    ],
)
def test_parse_rejects_invalid_targets_with_value_error(value: object) -> None:
    with pytest.raises(ValueError) as caught:
        NotifyTarget.parse(value)  # type: ignore[arg-type]
    assert "hunter2secret" not in str(caught.value)


def test_no_url_credentials_in_repr_results_or_logs(json_sink: JsonSink, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = ("hunter2secret", "tok3nAbCdEf", "qvalSeCrEt9")
    port = json_sink.port
    failing = NotifyTarget.parse(f"failure=json://admin:hunter2secret@127.0.0.1:{port}/h/tok3nAbCdEf")
    dead = NotifyTarget.parse(f"json://admin:hunter2secret@127.0.0.1:{free_port()}/h/tok3nAbCdEf?k=qvalSeCrEt9")
    json_sink.fail_next(1)
    notifier = Notifier([failing, dead])
    result = notifier.send(FAILURE)
    assert result.failed == 2
    with pytest.raises(ValueError):
        NotifyTarget.parse("notaschema://hunter2secret@tok3nAbCdEf")
    exposed = "\n".join(
        [repr(failing), str(failing), repr(notifier), result.model_dump_json(), caplog.text]
        + [r.getMessage() for r in caplog.records]
    )
    assert "apprise" in {r.name for r in caplog.records}, "apprise debug logging was captured"
    for secret in secrets:
        assert secret not in exposed


def test_email_is_delivered_over_smtp(smtp_sink: SmtpSink) -> None:
    target = NotifyTarget.parse(
        "emergency=" + smtp_sink.apprise_url(mail_from="keyrot@example.test", to="oncall@example.test")
    )
    result = Notifier([target]).send(EMERGENCY)
    assert result.status == "sent"
    [mail] = smtp_sink.wait_for(1)
    assert mail.mail_from == "keyrot@example.test"
    assert mail.rcpt_tos == ["oncall@example.test"]
    assert mail.subject == "Key contained"
    assert mail.text.strip() == "pk-lf-old revoked"
