"""Notifications through apprise, routed by tag.

Routing contract (``notify.urls``):

- an untagged target receives every notification;
- a tagged target receives only notifications carrying one of its tags;
- a notification's tags are its kind (``success``, ``failure``, ``info``); an ``emergency``
  carries ``emergency`` and ``failure`` and is sent with apprise type ``failure``.

apprise's own tag filter differs (``notify(tag=X)`` skips untagged services), so routing is
decided here and each target is sent through its own ``apprise.Apprise`` instance, which also
makes every failure attributable to one target.

apprise URLs carry tokens and passwords, so a target's URL is a ``SecretStr`` and targets are
named ``target #N (scheme)`` in results. Logging filters rewrite records before any handler
sees them: on the ``apprise`` logger every URL becomes ``scheme://***``; on ``apprise`` and
``urllib3.connectionpool`` (whose debug log prints request paths) the password and every
token-looking piece (user, host, path segment, query value) of each configured target becomes
``***``. ``send`` never raises.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

if TYPE_CHECKING:
    import apprise

__all__ = ["Notification", "Notifier", "NotifyResult", "NotifyTarget", "notification_tags", "secret_fragments"]

_log = logging.getLogger(__name__)

NotificationKind = Literal["success", "failure", "emergency", "info"]

_APPRISE_TYPE: dict[str, str] = {
    "success": "success",
    "failure": "failure",
    "emergency": "failure",
    "info": "info",
}

_URL_RE = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]{0,31})://[^\s'\"<>]+")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]{0,31})://\S+$")
# apprise text-config form: "tag1,tag2=URL". Tags never contain ':' or '/', so a bare URL
# (whose query may hold '=') never matches.
_TAGGED_RE = re.compile(r"^\s*(?P<tags>[A-Za-z0-9_\-\s,]+?)\s*=\s*(?P<url>[A-Za-z][A-Za-z0-9+.-]*://.+)$")
_MIN_FRAGMENT = 4


def notification_tags(kind: str) -> frozenset[str]:
    """Tags a notification of ``kind`` carries (an emergency is also a failure)."""
    if kind == "emergency":
        return frozenset({"emergency", "failure"})
    return frozenset({kind})


# --- log redaction ------------------------------------------------------------------------------


class _Fragments:
    """Credential-looking pieces of every configured apprise URL, for masking in log text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def register(self, url: str) -> None:
        fragments = secret_fragments(url)
        with self._lock:
            if fragments <= self._known:
                return
            self._known |= fragments
            ordered = sorted(self._known, key=len, reverse=True)
            alternatives = "|".join(re.escape(f) for f in ordered)
            # whole tokens only, so masking never mangles the surrounding words
            self._pattern = re.compile(rf"(?<![A-Za-z0-9_-])(?:{alternatives})(?![A-Za-z0-9_-])")

    def mask(self, text: str) -> str:
        pattern = self._pattern
        return text if pattern is None else pattern.sub("***", text)


def _looks_secret(value: str) -> bool:
    """Tokens mix letters and digits or are long; words like ``hooks`` or ``failure`` are kept."""
    has_digit = any(c.isdigit() for c in value)
    has_alpha = any(c.isalpha() for c in value)
    return (len(value) >= 6 and has_digit and has_alpha) or len(value) >= 20


def secret_fragments(url: str) -> set[str]:
    """The URL itself, its password, and every user/host/path/query piece that looks like a token."""
    fragments: set[str] = {url}
    candidates: list[str | None]
    try:
        parts = urlsplit(url)
        if parts.password and len(parts.password) >= _MIN_FRAGMENT:
            fragments.add(parts.password)
            fragments.add(unquote(parts.password))
        candidates = [parts.username, parts.hostname, *parts.path.split("/")]
        candidates.extend(value for _, value in parse_qsl(parts.query))
    except ValueError:
        candidates = list(re.split(r"[/@:?&=#]+", url.split("://", 1)[-1]))
    for candidate in candidates:
        for variant in {candidate or "", unquote(candidate or "")}:
            if _looks_secret(variant):
                fragments.add(variant)
    return fragments


class _RedactingFilter(logging.Filter):
    """Rewrites a log record's message before any handler sees it."""

    def __init__(self, fragments: _Fragments, *, mask_urls: bool) -> None:
        super().__init__("")
        self._fragments = fragments
        self._mask_urls = mask_urls

    def redact(self, text: str) -> str:
        if self._mask_urls:
            text = _URL_RE.sub(lambda m: f"{m.group(1)}://***", text)
        return self._fragments.mask(text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        record.msg = self.redact(message)
        record.args = None
        return True


_FRAGMENTS = _Fragments()
# apprise logs URLs (e.g. "Unparseable URL ...", "JSON POST URL: ..."): mask every URL in them.
_APPRISE_FILTER = _RedactingFilter(_FRAGMENTS, mask_urls=True)
# apprise sends through requests/urllib3, whose debug log prints the request path (which may hold
# a webhook token): mask only the configured targets' fragments there, nothing else.
_URLLIB3_FILTER = _RedactingFilter(_FRAGMENTS, mask_urls=False)


def _install_filters() -> None:
    for name, log_filter in (("apprise", _APPRISE_FILTER), ("urllib3.connectionpool", _URLLIB3_FILTER)):
        target_logger = logging.getLogger(name)
        if log_filter not in target_logger.filters:
            target_logger.addFilter(log_filter)


_install_filters()


def _enables_redirects(url: str) -> bool:
    """apprise's per-URL ``redirect=`` switch overrides the asset-wide refusal (see ``Notifier``)."""
    try:
        query = urlsplit(url).query
    except ValueError:
        return False
    return any(
        key.lower() == "redirect" and value.strip().lower() not in ("no", "n", "false", "f", "0", "off")
        for key, value in parse_qsl(query, keep_blank_values=True)
    )


# --- models -------------------------------------------------------------------------------------


class NotifyTarget(BaseModel):
    """One apprise URL and its routing tags. ``repr`` never shows the URL."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    url: SecretStr
    tags: frozenset[str] = frozenset()

    @field_validator("url", mode="after")
    @classmethod
    def _valid_apprise_url(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value().strip()
        match = _SCHEME_RE.match(raw)
        if match is None:
            raise ValueError("not an apprise URL (expected scheme://...)")
        _FRAGMENTS.register(raw)
        import apprise  # imported on first use: loading it costs ~0.1-0.4 s

        if apprise.Apprise.instantiate(raw) is None:
            raise ValueError(f"apprise cannot load this {match.group(1)}:// URL")
        if _enables_redirects(raw):
            raise ValueError(
                "a notify URL must not enable redirects (redirect=yes): they would carry its credentials elsewhere"
            )
        return SecretStr(raw)

    @field_validator("tags", mode="before")
    @classmethod
    def _normalise_tags(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, Iterable):
            return frozenset(str(tag).strip().lower() for tag in value if str(tag).strip())
        return value

    @property
    def scheme(self) -> str:
        return self.url.get_secret_value().split("://", 1)[0].lower()

    def label(self, index: int) -> str:
        """How results and logs name this target: ``target #N (scheme)``; never the URL."""
        return f"target #{index} ({self.scheme})"

    def receives(self, tags: frozenset[str]) -> bool:
        """Whether a notification carrying ``tags`` is routed to this target."""
        return not self.tags or bool(self.tags & tags)

    @classmethod
    def parse(cls, value: str | Mapping[str, Any]) -> NotifyTarget:
        """Parse ``"URL"``, ``"tag1,tag2=URL"`` (apprise text config) or ``{"url", "tags"}``.

        ``tags`` in a mapping may be a list or a comma-separated string (``tag`` is accepted as
        an alias, as in apprise's YAML). Raises ``ValueError`` naming no URL.
        """
        if isinstance(value, str):
            text = value.strip()
            tagged = _TAGGED_RE.match(text)
            if tagged is not None:
                return cls(url=SecretStr(tagged.group("url").strip()), tags=tagged.group("tags"))
            return cls(url=SecretStr(text))
        if isinstance(value, Mapping):
            unknown = set(value) - {"url", "tags", "tag"}
            if unknown:
                raise ValueError(f"unknown notify target field(s): {', '.join(sorted(unknown))}")
            url = value.get("url")
            if not isinstance(url, str | SecretStr):
                raise ValueError("notify target needs a 'url' string")
            raw = url.get_secret_value() if isinstance(url, SecretStr) else url
            tags = value.get("tags", value.get("tag", ()))
            return cls(url=SecretStr(raw), tags=tags)
        raise ValueError(f"notify target must be a string or a mapping, not {type(value).__name__}")


class Notification(BaseModel):
    """What to say. ``kind`` decides routing (see module docstring) and the apprise type."""

    model_config = ConfigDict(frozen=True)

    title: str
    body: str
    kind: NotificationKind

    @property
    def tags(self) -> frozenset[str]:
        return notification_tags(self.kind)


class NotifyResult(BaseModel):
    """Outcome of one ``Notifier.send``.

    ``status``: ``sent`` (every routed target accepted), ``partial``, ``failed`` (none did), or
    ``skipped`` (no target is routed this kind). ``errors`` are one line each, URL-free.
    """

    status: Literal["sent", "partial", "failed", "skipped"]
    delivered: int
    failed: int
    errors: list[str] = Field(default_factory=list)


# --- sending ------------------------------------------------------------------------------------


class Notifier:
    """Sends notifications to every target routed for their kind. ``send`` never raises.

    ``timeout_s`` bounds each target's delivery (targets are notified concurrently).
    """

    def __init__(self, targets: Sequence[NotifyTarget], *, timeout_s: float = 30.0) -> None:
        self._targets = list(targets)
        self._timeout_s = timeout_s
        self._clients: list[apprise.Apprise | None] = []
        self._load_errors: dict[int, str] = {}
        import apprise

        # A followed redirect re-sends the body and custom headers (``+Header=value``, often a
        # token) to whatever host the 3xx names: no target follows one.
        asset = apprise.AppriseAsset(http_redirects=False)
        for index, target in enumerate(self._targets, start=1):
            raw = target.url.get_secret_value()
            _FRAGMENTS.register(raw)
            client = apprise.Apprise(asset=asset)
            try:
                loaded = bool(client.add(raw))
            except Exception as exc:
                loaded = False
                _log.debug("%s: apprise raised %s while loading", target.label(index), type(exc).__name__)
            if not loaded:
                self._load_errors[index] = f"{target.label(index)}: apprise could not load the URL"
                self._clients.append(None)
            else:
                self._clients.append(client)

    @property
    def targets(self) -> list[NotifyTarget]:
        return list(self._targets)

    def __repr__(self) -> str:
        labels = ", ".join(t.label(i) for i, t in enumerate(self._targets, start=1))
        return f"Notifier([{labels}])"

    def send(self, n: Notification) -> NotifyResult:
        """Deliver ``n`` to every routed target and report what happened. Never raises."""
        try:
            return self._send(n)
        except Exception as exc:  # defensive: a notification never breaks a rotation
            return NotifyResult(
                status="failed", delivered=0, failed=0, errors=[f"notifier error ({type(exc).__name__})"]
            )

    def _send(self, n: Notification) -> NotifyResult:
        routed = [index for index, target in enumerate(self._targets, start=1) if target.receives(n.tags)]
        if not routed:
            return NotifyResult(status="skipped", delivered=0, failed=0, errors=[])
        if len(routed) == 1:
            outcomes = [self._deliver(routed[0], n)]
        else:
            with ThreadPoolExecutor(max_workers=min(len(routed), 8), thread_name_prefix="notify") as pool:
                outcomes = list(pool.map(lambda i: self._deliver(i, n), routed))
        delivered = sum(1 for ok, _ in outcomes if ok)
        failed = len(outcomes) - delivered
        errors = [error for _, errs in outcomes for error in errs]
        status: Literal["sent", "partial", "failed"] = (
            "sent" if failed == 0 else "failed" if delivered == 0 else "partial"
        )
        if failed:
            _log.warning("notification %r (%s): %d of %d target(s) failed", n.title, n.kind, failed, len(outcomes))
        return NotifyResult(status=status, delivered=delivered, failed=failed, errors=errors)

    def _deliver(self, index: int, n: Notification) -> tuple[bool, list[str]]:
        target = self._targets[index - 1]
        label = target.label(index)
        client = self._clients[index - 1]
        if client is None:
            return False, [self._load_errors[index]]
        try:
            result = client.notify(
                body=n.body,
                title=n.title,
                notify_type=_APPRISE_TYPE[n.kind],
                timeout=self._timeout_s,
            )
        except Exception as exc:
            return False, [f"{label}: apprise raised {type(exc).__name__}"]
        if bool(result):
            return True, []
        messages = []
        for entry in result.logs():
            if entry.level in ("WARNING", "ERROR", "CRITICAL", "DEPRECATION WARNING"):
                messages.append(" ".join(_APPRISE_FILTER.redact(entry.message).split()))
        status_name = getattr(result.status, "name", str(result.status)).lower()
        if not messages:
            messages.append(f"delivery {status_name}")
        return False, [f"{label}: {message}" for message in messages]
