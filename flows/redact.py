"""Defence in depth: scrub secrets from every log record, whatever wrote it.

The code never logs a secret on purpose; this filter catches mistakes (ours or a library's).
It masks every value registered with ``register_secret`` (and ``register_url``: the credentials
in a URL) and anything shaped like a Langfuse secret key, in messages, arguments and formatted
tracebacks.

``install_redaction`` scrubs each record where it is made (a wrapped ``logging`` record factory),
so every logger is covered in every mode: library loggers (hvac, botocore, urllib3) that reach
Python's last-resort handler with no Prefect configured, handlers added later, loggers that do
not propagate. The filter also sits on the handlers known at install time.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

from pydantic import SecretStr

from connectors.urls import credential_parts

_SECRET_KEY_SHAPE = re.compile(r"sk-lf-[A-Za-z0-9_-]{4,}")
_lock = threading.Lock()
_known: set[str] = set()
_longest_first: tuple[str, ...] = ()
"""All known secrets, longest first, while there are at most ``_INDEXED_ABOVE`` (then ``()``)."""
_MIN_LENGTH = 8
_by_ending: dict[str, tuple[str, ...]] = {}
"""Known secrets by their last ``_MIN_LENGTH`` characters, longest first: with many of them (a
fleet's URLs with query values), a text is searched only for those whose ending occurs in it."""
_INDEXED_ABOVE = 64


def register_secret(value: SecretStr | str | None) -> None:
    """Remember a secret so every later log record is scrubbed of it.

    A Langfuse secret key (``sk-lf-...``) is masked by its shape in every text already, so it is not
    kept: a fleet run registers two per entry, and ``scrub`` would otherwise search every text for
    thousands of them."""
    global _longest_first
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    if raw and len(raw) >= _MIN_LENGTH and not _SECRET_KEY_SHAPE.fullmatch(raw):
        with _lock:
            if raw not in _known:
                _known.add(raw)
                _longest_first = tuple(sorted(_known, key=len, reverse=True)) if len(_known) <= _INDEXED_ABOVE else ()
                ending = raw[-_MIN_LENGTH:]
                _by_ending[ending] = tuple(sorted((*_by_ending.get(ending, ()), raw), key=len, reverse=True))


def register_url(url: str | None) -> None:
    """Remember the credentials in ``url`` (user-info, query values, the URL itself), if any."""
    for part in credential_parts(url or ""):
        register_secret(part)


def scrub(text: str) -> str:
    """``text`` with every known secret and every ``sk-lf-...`` value masked."""
    candidates = _longest_first
    if len(_known) > _INDEXED_ABOVE:
        endings = {text[i : i + _MIN_LENGTH] for i in range(len(text) - _MIN_LENGTH + 1)}
        found = [secret for ending in endings for secret in _by_ending.get(ending, ())]
        candidates = tuple(sorted(found, key=len, reverse=True))
    for secret in candidates:
        if secret in text:
            text = text.replace(secret, "***")
    return _SECRET_KEY_SHAPE.sub("sk-lf-***", text)


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # bad arguments: never let logging's error report print them
            message = f"{record.msg} (log arguments could not be formatted)"
            record.args = None
        cleaned = scrub(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text, record.exc_info = scrub(text), None
        elif record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


_FILTER = RedactSecrets()
_LOGGER_NAMES = ("", "prefect", "prefect.flow_runs", "prefect.task_runs", "langfuse_rotate", "httpx", "apprise")


class _ScrubbingFactory:
    """Wraps the record factory in place: every record is scrubbed as it is made."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = self.inner(*args, **kwargs)
        try:
            _FILTER.filter(record)
        except Exception:  # logging must never fail the caller
            record.msg, record.args, record.exc_info, record.exc_text = (
                "(log record dropped by redaction)",
                None,
                None,
                None,
            )
        return record


def install_redaction() -> None:
    """Scrub every log record of every logger from now on (idempotent)."""
    current = logging.getLogRecordFactory()
    if not isinstance(current, _ScrubbingFactory):
        logging.setLogRecordFactory(_ScrubbingFactory(current))
    last_resort = logging.lastResort
    if last_resort is not None and _FILTER not in last_resort.filters:
        last_resort.addFilter(_FILTER)
    for name in _LOGGER_NAMES:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
