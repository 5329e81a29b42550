"""Transport-independent request/response objects used by the route handlers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from email.message import Message
from typing import Any


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
