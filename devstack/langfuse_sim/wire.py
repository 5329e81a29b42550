"""Transport-independent request/response objects used by the route handlers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from email.message import Message
from typing import Any
from urllib.parse import parse_qsl


class BodyError(ValueError):
    """The body is not valid JSON."""


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes
    client_ip: str
    #: Public key of the key that authenticated this request (for the request log); set by auth.
    public_key: str | None = None

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return None if value is None else str(value)

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def next_body(self) -> Any:
        """`req.body` as the Next.js API body parser produces it.

        JSON content types are parsed (an empty body becomes `{}`; invalid JSON raises `BodyError`,
        which routes answer with a plain-text 400 "Invalid JSON"). Any other or missing content type
        leaves the raw text, so a POST without a body and without a content type reaches the handler
        as `""` and fails schema validation. The Python SDK sends exactly that for
        `create_api_key(project_id)` with no optional fields.
        """
        content_type = (self.header("content-type") or "text/plain").split(";", 1)[0].strip().lower()
        text = self.body.decode("utf-8", errors="replace")
        if content_type in ("application/json", "application/ld+json"):
            if not text:
                return {}
            try:
                return json.loads(text)
            except ValueError as exc:
                raise BodyError("Invalid JSON") from exc
        if content_type == "application/x-www-form-urlencoded":
            return dict(parse_qsl(text))
        return text

    def json(self) -> Any:
        """Parse the body as JSON. An empty body is `None` (Next.js leaves `req.body` empty)."""
        if not self.body.strip():
            return None
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise BodyError(str(exc)) from exc


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body, separators=(",", ":")).encode()


def invalid_json() -> Response:
    """Next.js rejects an unparsable JSON body before the handler runs, as plain text."""
    return Response(400, b"Invalid JSON", {"Content-Type": "text/plain; charset=utf-8"})


def js_type(value: Any) -> str:
    """The type name zod reports in "Expected string, received <type>"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
