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


def test_display_secret_keys_stay_visible() -> None:
    assert scrub("sk-lf-...9f3a") == "sk-lf-...9f3a"


def test_the_audit_log_appends_one_json_object_per_line(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", actor="ci@test", run_id="run-1")
    log.record("store.promote", "entry:x", "done", store_version=3)
    log.record("langfuse.delete_key", "entry:x", "done", public_key="pk-lf-1")

    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [e["action"] for e in lines] == ["store.promote", "langfuse.delete_key"]
    assert {"time", "actor", "action", "resource", "outcome"} <= lines[0].keys()
    assert lines[0]["actor"] == "ci@test"


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
