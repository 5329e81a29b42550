"""How values from outside are shown (README "Safety guarantees").

Consumers, events, Langfuse and the stores hand the rotator text it did not write: a public key a
health endpoint reports, an event's ``source``, a key listed by Langfuse, a store's version. Such a
value goes into a notification, the step table or the summary artifact only as what it was checked
to be: a public key when it is one (``pk-lf-[A-Za-z0-9-]+``, else ``<invalid>``), on one line
(whitespace collapsed, control characters replaced), and in Markdown escaped so it can neither
start a link nor leave a code span or a table cell. It can then forge no ``status: rotated`` line
and no link to a page of its author's choosing.
"""

from __future__ import annotations

import re
import unicodedata

from connectors.keypair import is_public_key

ENTRY_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
"""What a configured entry's name may be (a config check; events and run parameters are held to it too)."""

INVALID = "<invalid>"
"""What a value that failed its check is shown as."""

ENTRY_NAME = re.compile(ENTRY_NAME_PATTERN)
"""A configured entry's name (an event or a run parameter names one)."""
EVENT_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
"""An event's id (a UUID)."""
EVENT_SOURCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._:-]{0,63}")
"""Who reported an event (``gitleaks``, ``GitHub secret scanning``)."""
_VERSION = re.compile(r"[A-Za-z0-9._-]{1,128}")
_MARKDOWN_SPECIAL = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character


def shown_key(value: str | None) -> str:
    """A public key as shown: itself when it is one, ``None`` when there is none, else ``<invalid>``."""
    if value is None:
        return "None"
    return value if is_public_key(value) else INVALID


def shown_version(value: object) -> str:
    """A store version (a Vault version number, an AWS VersionId) as shown; ``None`` when none."""
    if value is None:
        return "None"
    text = str(value)
    return text if _VERSION.fullmatch(text) else INVALID


def shown_matching(pattern: re.Pattern[str], value: str | None) -> str:
    """``value`` when it matches ``pattern`` in full, else ``<invalid>`` (None: ``None``)."""
    if value is None:
        return "None"
    return value if pattern.fullmatch(value) else INVALID


def single_line(value: object) -> str:
    """``value`` on one line: whitespace (line and paragraph separators too) collapsed to single
    spaces, any other control character replaced by ``?``."""
    text = " ".join(str(value).split())
    return "".join("?" if unicodedata.category(ch) in {"Cc", "Cf"} else ch for ch in text)


def markdown_text(value: object) -> str:
    """``value`` as literal Markdown text on one line: every ASCII punctuation character escaped, so
    no link, autolink, code span, emphasis, HTML or table cell can start in it."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", single_line(value))


def markdown_code(value: object) -> str:
    """``value`` in a code span when it can stay in one (one line, no backtick), else ``<invalid>``
    escaped as text."""
    text = single_line(value)
    return f"`{text}`" if "`" not in text else markdown_text(INVALID)


def markdown_key(value: str | None) -> str:
    """A public key in Markdown: in a code span when it is one (or ``None``), else ``<invalid>``."""
    return _markdown_checked(shown_key(value))


def markdown_version(value: object) -> str:
    """A store version in Markdown: in a code span when it checks, else ``<invalid>``."""
    return _markdown_checked(shown_version(value))


def _markdown_checked(shown: str) -> str:
    return markdown_text(shown) if shown == INVALID else markdown_code(shown)
