"""Fixed-window rate limiting per organization and resource (`rate-limiter-flexible` semantics).

Only active when configured: the real server enforces limits on Langfuse Cloud only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from devstack.langfuse_sim.model import iso_ms
from devstack.langfuse_sim.wire import Response

LEGACY_MESSAGE = "Rate limit exceeded for {route}. Use GET /api/public/v2/observations for high-volume reads."


@dataclass
class _Window:
    started_at: float
    consumed: int


def js_date_string(ts: float) -> str:
    """JS `Date.prototype.toString()` in a UTC process, e.g.
    `Sat Aug 22 2026 08:31:00 GMT+0000 (Coordinated Universal Time)`."""
    return time.strftime("%a %b %d %Y %H:%M:%S GMT+0000 (Coordinated Universal Time)", time.gmtime(ts))


class RateLimiter:
    """Callers hold the simulator lock."""

    def __init__(self) -> None:
        self._windows: dict[tuple[str, str], _Window] = {}

    def clear(self) -> None:
        self._windows.clear()

    def consume(
        self, org_id: str, resource: str, points: int, window_s: float, now: float, route: str | None = None
    ) -> Response | None:
        """Consume one point; return the 429 response if the window is exhausted, else None."""
        key = (org_id, resource)
        window = self._windows.get(key)
        if window is None or now >= window.started_at + window_s:
            window = _Window(started_at=now, consumed=0)
            self._windows[key] = window
        window.consumed += 1
        if window.consumed <= points:
            return None
        reset_at = window.started_at + window_s
        retry_after = max(1, math.ceil(reset_at - now))
        message = LEGACY_MESSAGE.format(route=route) if route else "Rate limit exceeded"
        return Response(
            429,
            {
                "message": message,
                "code": "rate_limited",
                "details": {
                    "retryAfterSeconds": retry_after,
                    "limit": points,
                    "remaining": 0,
                    "resetAt": iso_ms(reset_at),
                },
            },
            {
                "Retry-After": str(retry_after),
                "X-RateLimit-Limit": str(points),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": js_date_string(reset_at),
            },
        )
