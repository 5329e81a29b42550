"""Defence in depth: scrub secrets from every log record, whatever wrote it.

The code never logs a secret on purpose; this filter catches mistakes (ours or a library's).
It masks every value registered with ``register_secret`` and anything shaped like a Langfuse
secret key, in messages, arguments and formatted tracebacks.
"""

from __future__ import annotations

import logging
import re
import threading

from pydantic import SecretStr

_SECRET_KEY_SHAPE = re.compile(r"sk-lf-[A-Za-z0-9_-]{4,}")
_lock = threading.Lock()
_known: set[str] = set()


def register_secret(value: SecretStr | str | None) -> None:
    """Remember a secret so every later log record is scrubbed of it."""
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    if raw and len(raw) >= 8:
        with _lock:
            _known.add(raw)


def scrub(text: str) -> str:
    """``text`` with every known secret and every ``sk-lf-...`` value masked."""
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, "***")
    return _SECRET_KEY_SHAPE.sub("sk-lf-***", text)


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text, record.exc_info = scrub(text), None
        elif record.exc_text:
            record.exc_text = scrub(record.exc_text)
        return True


_FILTER = RedactSecrets()
_LOGGER_NAMES = ("", "prefect", "prefect.flow_runs", "prefect.task_runs", "langfuse_rotate", "httpx", "apprise")


def install_redaction() -> None:
    """Attach the filter to every handler of the loggers that could see a secret (idempotent)."""
    for name in _LOGGER_NAMES:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
