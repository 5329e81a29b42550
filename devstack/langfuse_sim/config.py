"""Runtime configuration of the simulator, changeable through `POST /_sim/config`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

CACHE_MODES = ("snapshot", "fixed", "off")
HEALTH_MODES = ("ok", "db_down", "fail")
RATE_LIMIT_RESOURCES = ("public-api", "public-api-legacy", "ingestion")

#: `LANGFUSE_CACHE_API_KEY_TTL_SECONDS` default before (snapshot) and after (fixed) PR #17651.
DEFAULT_TTL = {"snapshot": 300.0, "fixed": 60.0, "off": 0.0}


class ConfigError(ValueError):
    """An invalid `/_sim/config` value."""


@dataclass
class SimConfig:
    """All switches. Defaults model a self-hosted v4.16.0 with the API-key cache on.

    `cache_ttl_s=None` means "the default of the current `cache_mode`" (300 s snapshot, 60 s fixed).
    """

    cache_mode: str = "snapshot"
    cache_ttl_s: float | None = None
    race_window_s: float = 0.0
    stale_after_delete: bool = False
    ingestion_delay_s: float = 5.0
    otel_delay_s: float = 1.0
    dual_write_delay_s: float = 0.0
    rate_limits: dict[str, list[float]] | None = None
    events_only: bool = False
    admin_api_entitlement: bool = True
    project_roles_entitlement: bool = True
    strict_public_key: bool = False
    honour_predefined_keys: bool = True
    health: str = "ok"
    version: str = "4.16.0"

    def effective_ttl(self) -> float:
        return DEFAULT_TTL[self.cache_mode] if self.cache_ttl_s is None else self.cache_ttl_s

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["effective_cache_ttl_s"] = self.effective_ttl()
        return data

    def update(self, changes: dict[str, Any]) -> None:
        """Validate every change first, then apply them all (no partial update on error)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
        validated = {name: _validate(name, value) for name, value in changes.items()}
        for name, value in validated.items():
            setattr(self, name, value)


def _validate(name: str, value: Any) -> Any:
    if name == "cache_mode":
        return _choice(name, value, CACHE_MODES)
    if name == "health":
        return _choice(name, value, HEALTH_MODES)
    if name == "cache_ttl_s":
        return None if value is None else _non_negative(name, value)
    if name in ("race_window_s", "ingestion_delay_s", "otel_delay_s", "dual_write_delay_s"):
        return _non_negative(name, value)
    if name in (
        "stale_after_delete",
        "events_only",
        "admin_api_entitlement",
        "project_roles_entitlement",
        "strict_public_key",
        "honour_predefined_keys",
    ):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be a boolean")
        return value
    if name == "version":
        if not isinstance(value, str) or not value:
            raise ConfigError("version must be a non-empty string")
        return value
    if name == "rate_limits":
        return _rate_limits(value)
    raise ConfigError(f"unknown config key: {name}")  # pragma: no cover - guarded by update()


def _choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ConfigError(f"{name} must be one of {', '.join(options)}")
    return str(value)


def _non_negative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{name} must be a non-negative number")
    return float(value)


def _rate_limits(value: Any) -> dict[str, list[float]] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError("rate_limits must be null or an object")
    out: dict[str, list[float]] = {}
    for resource, spec in value.items():
        if resource not in RATE_LIMIT_RESOURCES:
            raise ConfigError(f"unknown rate-limit resource: {resource}")
        ok = isinstance(spec, list | tuple) and len(spec) == 2
        if not ok or any(isinstance(v, bool) or not isinstance(v, int | float) or v <= 0 for v in spec):
            raise ConfigError(f"rate_limits[{resource}] must be [points, window_s] with positive numbers")
        out[resource] = [int(spec[0]), float(spec[1])]
    return out
