"""Prefect's event stream, ``{PREFECT_API_URL}/events/out``, over a websocket, without Prefect.

The protocol is the server's (``prefect.server.api.events``): the client opens the socket with the
``prefect`` subprotocol, sends ``{"type": "auth", "token": ...}`` and reads ``auth_success``, then
sends one ``{"type": "filter", "filter": <EventFilter>}``; the server answers with
``{"type": "event", "event": {...}}`` messages: first the stored events the filter matches since
``occurred.since`` (the backfill, oldest first, at most ``PREFECT_EVENTS_MAXIMUM_WEBSOCKET_BACKFILL``
back, 15 minutes by default), then the live ones. The filter is applied on the server, so only the
events named travel.

``EventStream.events`` reconnects after any disconnect with exponential backoff and asks for the
window since it was last known to be connected (less a margin), so an event that arrived while it
was away comes with the backfill; events it already yielded are skipped by id. The backfill reads
the events the server has stored, and the server stores what it receives in batches (every 5 s by
default, ``PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL``): an event that came in just
before a (re)subscription may be in neither the backfill nor the live stream. So
``catch_up_after_s`` after each subscription the same window is read once more over REST
(``POST /events/filter``).
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection, connect

from connectors.errors import ConnectorError


class StreamedEvent(BaseModel):
    """One event as the server streams it (the fields the responder reads)."""

    model_config = ConfigDict(extra="ignore")

    id: str
    event: str
    occurred: datetime
    resource: dict[str, str] = Field(default_factory=dict)
    payload: dict[str, Any] = Field(default_factory=dict)


class EventStreamError(ConnectorError):
    """The server refused the subscription (authentication, filter): retrying will not help."""


REPLAY_MARGIN = timedelta(seconds=60)
"""How far before the moment it was last known connected a reconnecting stream asks the server to
replay: covers events whose ``occurred`` (set by their sender) lags the moment they arrived."""


_REFUSED = {1002, 1008}
"""Close codes of a refused subscription (protocol error, policy violation: a wrong or missing
token): reconnecting would be refused again."""


def events_out_url(api_url: str) -> str:
    base = api_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    return base + "/events/out"


class EventStream:
    """Events named ``names``, as they happen, from a Prefect server's events websocket."""

    def __init__(
        self,
        api_url: str,
        names: list[str],
        *,
        auth_string: SecretStr | None = None,
        api_key: SecretStr | None = None,
        ssl_context: ssl.SSLContext | None = None,
        open_timeout_s: float = 10.0,
        backoff_s: tuple[float, float] = (0.5, 30.0),
        since: datetime | None = None,
        seen_capacity: int = 10_000,
        catch_up_after_s: float = 10.0,
        on_connect: Callable[[], None] | None = None,
        on_disconnect: Callable[[str], None] | None = None,
    ) -> None:
        """``since``: the start of the first window (default: now; events from before the
        subscriber started are left to whoever was there to take them)."""
        self.url = events_out_url(api_url)
        self._names = list(names)
        self._auth_string = auth_string
        self._api_key = api_key
        self._ssl = ssl_context if self.url.startswith("wss://") else None
        self._open_timeout_s = open_timeout_s
        self._backoff_s = backoff_s
        self._since = since or datetime.now(UTC)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._seen_capacity = seen_capacity
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._socket: ClientConnection | None = None
        self._api_url = api_url.rstrip("/") + "/"
        self._catch_up_after_s = catch_up_after_s
        self.connected = threading.Event()
        """Set while subscribed (the filter was sent and accepted)."""

    def _token(self) -> str | None:
        secret = self._api_key or self._auth_string
        return secret.get_secret_value() if secret is not None else None

    def _headers(self) -> dict[str, str]:
        if self._api_key is not None:
            return {"Authorization": f"Bearer {self._api_key.get_secret_value()}"}
        if self._auth_string is not None:
            raw = self._auth_string.get_secret_value().encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        return {}

    def _window(self, since: datetime, until: datetime) -> dict[str, Any]:
        return {
            "occurred": {"since": since.isoformat(), "until": until.isoformat()},
            "event": {"name": self._names},
            "order": "ASC",
        }

    def _subscribe(self) -> ClientConnection:
        sock = connect(
            self.url,
            subprotocols=["prefect"],  # type: ignore[list-item]
            additional_headers=self._headers(),
            open_timeout=self._open_timeout_s,
            ssl=self._ssl,
            max_size=2**22,
        )
        try:
            sock.send(json.dumps({"type": "auth", "token": self._token()}))
            try:
                answer = json.loads(sock.recv(timeout=self._open_timeout_s))
            except ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code in _REFUSED:
                    reason = exc.rcvd.reason or "no reason given"
                    raise EventStreamError(f"the Prefect server refused the events subscription: {reason}") from None
                raise
            if answer.get("type") != "auth_success":
                raise EventStreamError(f"the Prefect server refused the events subscription: {answer.get('reason')}")
            # The server fills in "now" for a missing end, which would end the live stream.
            subscription = self._window(self._since, datetime.now(UTC) + timedelta(days=365))
            sock.send(json.dumps({"type": "filter", "filter": subscription}))
        except BaseException:
            sock.close()
            raise
        return sock

    def events(self, stop: threading.Event, *, poll_s: float = 1.0) -> Iterator[StreamedEvent]:
        """Yields each matching event once, until ``stop`` is set (checked every ``poll_s``)."""
        delay = self._backoff_s[0]
        while not stop.is_set():
            try:
                self._socket = self._subscribe()
            except EventStreamError:
                raise
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed, ValueError) as exc:
                if self._on_disconnect is not None:
                    self._on_disconnect(_why(exc))
                stop.wait(delay)
                delay = min(delay * 2, self._backoff_s[1])
                continue
            self.connected.set()
            if self._on_connect is not None:
                self._on_connect()
            connected_at = time.monotonic()
            try:
                yield from self._read(self._socket, stop, poll_s)
            except (OSError, ConnectionClosed, ValueError) as exc:
                if self._on_disconnect is not None and not stop.is_set():
                    self._on_disconnect(_why(exc))
                # A connection that held a while starts the backoff over; one dropped at once
                # (a server that accepts and closes) backs off further.
                delay = self._backoff_s[0] if time.monotonic() - connected_at > 30 else delay
                stop.wait(delay)
                delay = min(delay * 2, self._backoff_s[1])
            finally:
                self.connected.clear()
                self._socket.close()
                self._socket = None

    def _read(self, sock: ClientConnection, stop: threading.Event, poll_s: float) -> Iterator[StreamedEvent]:
        subscribed_since = self._since
        catch_up_at: float | None = time.monotonic() + self._catch_up_after_s
        while not stop.is_set():
            alive = datetime.now(UTC)
            if catch_up_at is not None and time.monotonic() >= catch_up_at:
                catch_up_at = None
                yield from self._unseen(self._stored(subscribed_since, alive))
            try:
                message = sock.recv(timeout=poll_s)
            except TimeoutError:
                self._since = alive - REPLAY_MARGIN  # connected until now: nothing was missed before
                continue
            self._since = alive - REPLAY_MARGIN
            event = _parse(message)
            if event is not None:
                yield from self._unseen([event])

    def _unseen(self, events: list[StreamedEvent]) -> Iterator[StreamedEvent]:
        for event in events:
            if event.id not in self._seen:
                self._remember(event.id)
                yield event

    def _stored(self, since: datetime, until: datetime) -> list[StreamedEvent]:
        """The stored events of the window, over REST; [] when the server does not answer (the
        socket's own errors decide about reconnecting)."""
        found: list[StreamedEvent] = []
        try:
            with httpx.Client(
                base_url=self._api_url, headers=self._headers(), timeout=10.0, verify=self._ssl or True
            ) as http:
                response = http.post("events/filter", json={"filter": self._window(since, until), "limit": 50})
                for _ in range(20):  # 1,000 events: far more than a window holds of one event name
                    if response.status_code != 200:
                        break
                    page = response.json()
                    for raw in page.get("events") or []:
                        event = _parse(json.dumps({"type": "event", "event": raw}))
                        if event is not None:
                            found.append(event)
                    next_page = page.get("next_page")
                    if not next_page:
                        break
                    response = http.get(str(next_page))
        except (httpx.HTTPError, ValueError):
            pass
        return found

    def _remember(self, event_id: str) -> None:
        self._seen[event_id] = None
        while len(self._seen) > self._seen_capacity:
            self._seen.popitem(last=False)

    def close(self) -> None:
        sock = self._socket
        if sock is not None:
            sock.close()


def _parse(message: str | bytes) -> StreamedEvent | None:
    try:
        data = json.loads(message)
        if not isinstance(data, dict) or data.get("type") != "event":
            return None
        return StreamedEvent.model_validate(data["event"])
    except (ValueError, KeyError, ValidationError):
        return None


def _why(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__
