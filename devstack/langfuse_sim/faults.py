"""Injected faults (`POST /_sim/faults`): fail, delay, or drop the next N matching requests."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from http import HTTPStatus
from typing import Any

from devstack.langfuse_sim.wire import Response


class FaultError(ValueError):
    """Invalid fault specification."""


@dataclass
class Fault:
    id: int
    path_prefix: str
    method: str | None
    status: int | None
    count: int
    retry_after: int | None
    delay_s: float
    after: bool
    drop: bool
    body: Any = None

    def matches(self, method: str, path: str) -> bool:
        return self.count > 0 and path.startswith(self.path_prefix) and self.method in (None, method)

    @property
    def replaces_response(self) -> bool:
        return self.drop or self.status is not None

    def response(self) -> Response:
        status = self.status or 500
        body = self.body
        if body is None:
            try:
                body = {"message": HTTPStatus(status).phrase}
            except ValueError:
                body = {"message": "Simulated fault"}
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
        return Response(status, body, headers)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_fault(raw: Any, fault_id: int) -> Fault:
    if not isinstance(raw, dict):
        raise FaultError("fault must be a JSON object")
    known = {"path_prefix", "method", "status", "count", "retry_after", "delay_s", "after", "drop", "body"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise FaultError(f"unknown fault keys: {', '.join(unknown)}")
    prefix = raw.get("path_prefix")
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        raise FaultError("path_prefix must be a string starting with '/'")
    method = raw.get("method")
    if method is not None and not isinstance(method, str):
        raise FaultError("method must be a string or null")
    status = raw.get("status", 503)
    if status is not None and (not isinstance(status, int) or not 100 <= status <= 599):
        raise FaultError("status must be an HTTP status code or null (delay only)")
    count = raw.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise FaultError("count must be a positive integer")
    retry_after = raw.get("retry_after")
    if retry_after is not None and (not isinstance(retry_after, int) or retry_after < 0):
        raise FaultError("retry_after must be a non-negative integer or null")
    delay = raw.get("delay_s", 0)
    if not isinstance(delay, int | float) or isinstance(delay, bool) or delay < 0:
        raise FaultError("delay_s must be a non-negative number")
    after, drop = raw.get("after", False), raw.get("drop", False)
    if not isinstance(after, bool) or not isinstance(drop, bool):
        raise FaultError("after and drop must be booleans")
    return Fault(
        id=fault_id,
        path_prefix=prefix,
        method=method.upper() if method else None,
        status=status,
        count=count,
        retry_after=retry_after,
        delay_s=float(delay),
        after=after,
        drop=drop,
        body=raw.get("body"),
    )
