"""`SimulatorControl`: a small httpx client for the simulator's `/_sim/` test controls."""

from __future__ import annotations

from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import httpx


class SimulatorControl:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._client.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()

    def keys(self) -> list[dict[str, Any]]:
        """Every key row (project and org), without secrets."""
        return list(self._call("GET", "/_sim/keys")["keys"])

    def add_keys(self, project_id: str, count: int, note: str = "bulk") -> int:
        """Add ``count`` generated keys to the project (secrets discarded); how many were added."""
        return int(
            self._call("POST", "/_sim/keys", json={"project_id": project_id, "count": count, "note": note})["created"]
        )

    def backdate_key(self, key: str, created_at: datetime) -> dict[str, Any]:
        """Set the `createdAt` of the key with this id or public key (an aware datetime)."""
        iso = created_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return dict(self._call("PATCH", f"/_sim/keys/{key}", json={"createdAt": iso}))

    def add_user(self, email: str, name: str = "") -> dict[str, Any]:
        """Create a user (`{id, email, name}`), who can then be given memberships."""
        return dict(self._call("POST", "/_sim/users", json={"email": email, "name": name}))

    def users(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/_sim/users")["users"])

    def requests(self, since: int = 0) -> dict[str, Any]:
        """`{"requests": [{seq, method, path, status, public_key}], "next": M}`; pass `next` as `since`."""
        return dict(self._call("GET", "/_sim/requests", params={"since": since}))

    def inject_fault(
        self,
        path_prefix: str,
        *,
        method: str | None = None,
        status: int | None = 503,
        count: int = 1,
        retry_after: int | None = None,
        delay_s: float = 0,
        after: bool = False,
        drop: bool = False,
        body: Any = None,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "path_prefix": path_prefix,
            "method": method,
            "status": status,
            "count": count,
            "retry_after": retry_after,
            "delay_s": delay_s,
            "after": after,
            "drop": drop,
        }
        if body is not None:
            payload["body"] = body
        return dict(self._call("POST", "/_sim/faults", json=payload))

    def faults(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/_sim/faults")["faults"])

    def clear_faults(self) -> None:
        self._call("DELETE", "/_sim/faults")

    def configure(self, **settings: Any) -> dict[str, Any]:
        return dict(self._call("POST", "/_sim/config", json=settings))

    def config(self) -> dict[str, Any]:
        return dict(self._call("GET", "/_sim/config"))

    def reset(self) -> None:
        self._call("POST", "/_sim/reset")

    def flush_cache(self) -> int:
        return int(self._call("POST", "/_sim/cache/flush")["flushed"])

    def advance_clock(self, seconds: float) -> float:
        """Move the simulator's clock (cache TTLs, visibility delays, rate-limit windows) forward;
        returns the total offset from the wall clock."""
        return float(self._call("POST", "/_sim/clock", json={"advance_s": seconds})["offset_s"])

    def deletes_in_race_window(self) -> int:
        """How many key deletes are inside their `race_window_s` right now."""
        return int(self._call("GET", "/_sim/race")["deletes_in_window"])

    def release_race_windows(self) -> int:
        """End the race windows in progress now; returns how many deletes were in one."""
        return int(self._call("POST", "/_sim/race/release")["released"])

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> SimulatorControl:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
