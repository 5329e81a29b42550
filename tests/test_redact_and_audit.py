"""Defence in depth: log records are scrubbed of secrets; the audit log is append-only JSON lines."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from flows.audit import AuditLog
from flows.redact import install_redaction, register_secret, scrub


def test_a_registered_secret_is_masked_in_messages_arguments_and_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    install_redaction()
    register_secret("s.super-secret-vault-token")
    logger = logging.getLogger("langfuse_rotate")
    with caplog.at_level(logging.INFO, logger="langfuse_rotate"):
        logger.info("token is %s", "s.super-secret-vault-token")
        try:
            raise RuntimeError("failed with s.super-secret-vault-token")
        except RuntimeError:
            logger.exception("boom")
    text = caplog.text
    assert "s.super-secret-vault-token" not in text
    assert "***" in text


def test_anything_shaped_like_a_langfuse_secret_key_is_masked() -> None:
    assert scrub("key sk-lf-1c2d3e4f-aaaa-bbbb-cccc-1234567890ab here") == "key sk-lf-*** here"


def test_a_registered_langfuse_secret_key_is_masked_also_when_glued_to_other_text() -> None:
    secret = "sk-lf-9e8d7c6b-aaaa-bbbb-cccc-0123456789ab"
    register_secret(secret)
    for text in (f"x{secret}y", f"sk-lf-ab{secret}", f"{secret}.{secret}", f"'{secret}'"):
        assert secret.removeprefix("sk-lf-") not in scrub(text)


def test_with_hundreds_of_registered_secrets_each_is_still_masked() -> None:
    """Past a few dozen, a text is searched only for secrets whose ending occurs in it."""
    urls = [f"http://127.0.0.1:9/health?token=fleet-token-{i:04d}" for i in range(300)]
    for url in urls:
        register_secret(url)
        register_secret(url.split("=")[1])
    text = f"polled {urls[7]} then fleet-token-0123 and fleet-token-0299."
    cleaned = scrub(text)
    assert "fleet-token-0007" not in cleaned and "fleet-token-0123" not in cleaned
    assert "fleet-token-0299" not in cleaned and "127.0.0.1" not in cleaned
    assert cleaned.startswith("polled *** then *** and ***")


def test_display_secret_keys_stay_visible() -> None:
    assert scrub("sk-lf-...9f3a") == "sk-lf-...9f3a"


def test_the_audit_log_appends_one_json_object_per_line(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", actor="ci@test", run_id="run-1")
    log.record("store.promote", "entry:x", "done", store_version=3)
    log.record("langfuse.delete_key", "entry:x", "done", public_key="pk-lf-1")

    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [e["event"]["action"] for e in lines] == ["store.promote", "langfuse.delete_key"]
    assert lines[0]["user"]["name"] == "ci@test"


def test_audit_lines_use_ecs_field_names_a_siem_maps_without_work(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", actor="alice", run_id="run-1")
    log.rotation_id = "rot-1"
    log.record("store.promote", "entry:chatbot-prod", "done", store_version=3)
    log.final("rotate", "chatbot-prod", "rolled_back", error="wait_for_restarts: consumers did not switch")
    log.final("rotate", "chatbot-prod", "needs_attention")

    step, failed, attention = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert step["@timestamp"].endswith("Z") and step["ecs"]["version"]
    assert step["event"].items() >= {"action": "store.promote", "outcome": "success", "kind": "event"}.items()
    assert step["user"]["name"] == "alice" and step["host"]["name"]
    assert step["labels"] == {"entry": "chatbot-prod", "rotation_id": "rot-1", "run_id": "run-1"}
    assert step["langfuse_rotate"]["schema_version"] == 1
    assert step["langfuse_rotate"]["resource"] == "langfuse.project.chatbot-prod"
    assert step["langfuse_rotate"]["final"] is False and step["langfuse_rotate"]["store_version"] == 3
    assert (failed["event"]["outcome"], failed["langfuse_rotate"]["outcome"]) == ("failure", "rolled_back")
    assert failed["langfuse_rotate"]["final"] is True
    assert attention["event"]["outcome"] == "unknown"


def test_audit_lines_go_to_stdout_when_the_path_is_a_dash(capsys: pytest.CaptureFixture[str]) -> None:
    AuditLog("-", actor="ci", run_id="run-1").record("store.promote", "entry:x", "done")

    line = json.loads(capsys.readouterr().out)
    assert line["event"]["action"] == "store.promote" and line["labels"]["run_id"] == "run-1"


def test_every_line_carries_a_run_id_even_without_prefect(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.record("stage", "entry:x", "done")

    (line,) = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert line["labels"]["run_id"]


def test_the_default_audit_path_is_absolute_under_the_users_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.audit import default_audit_path

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_audit_path() == tmp_path / "langfuse-rotate" / "audit.jsonl"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_audit_path().is_absolute()
    assert default_audit_path().parts[-3:] == ("state", "langfuse-rotate", "audit.jsonl")


def test_the_audit_log_never_holds_a_secret_even_if_one_is_passed(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", actor="ci")
    log.record("oops", "entry:x", "done", detail="sk-lf-1c2d3e4f-aaaa-bbbb-cccc-1234567890ab")
    assert "1c2d3e4f" not in (tmp_path / "audit.jsonl").read_text()


_LIBRARY_LOGGERS_SCRIPT = """
import logging, sys
from flows.redact import install_redaction, register_secret
install_redaction()
register_secret("s.vault-token-for-redaction-0007")
# No handler anywhere: Python's last-resort handler prints WARNING and above to stderr.
logging.getLogger("hvac.adapters").warning("X-Vault-Token: s.vault-token-for-redaction-0007")
logging.getLogger("botocore.endpoint").error("signed with s.vault-token-for-redaction-0007")
logging.getLogger("some.library.made.later").warning("%s", "s.vault-token-for-redaction-0007")
try:
    raise RuntimeError("s.vault-token-for-redaction-0007")
except RuntimeError:
    logging.getLogger("urllib3").exception("failed")
# A handler added after installation, on a logger of its own (propagation off).
own = logging.getLogger("requests.own")
own.propagate = False
handler = logging.StreamHandler(sys.stderr)
own.addHandler(handler)
own.warning("token=s.vault-token-for-redaction-0007")
logging.basicConfig(level=logging.DEBUG)
logging.getLogger("urllib3.connectionpool").debug("GET /v1?token=s.vault-token-for-redaction-0007")
"""


def test_library_loggers_without_prefect_are_redacted_on_every_handler() -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _LIBRARY_LOGGERS_SCRIPT], capture_output=True, text=True, timeout=60, check=True
    )
    output = proc.stdout + proc.stderr
    assert "s.vault-token-for-redaction-0007" not in output
    assert output.count("***") >= 6
