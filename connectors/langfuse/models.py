"""Data the Langfuse connector returns or is configured with. Models are data; clients are behaviour.

Response models ignore unknown fields (the server adds fields over time) and read the server's
camelCase names; Python code uses snake_case. None of them has a field that could hold a secret.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel


class RetryPolicy(BaseModel):
    """How idempotent calls are retried on 429, 5xx and connection failures.

    Attempt ``n`` (1-based) that fails is followed by a pause of
    ``min(max_delay_s, base_delay_s * 2 ** (n - 1))``, or by the server's ``Retry-After``
    (capped at ``retry_after_cap_s``) when it sent one. No pause is taken that would end
    after ``max_total_s`` since the first attempt, and at most ``max_attempts`` requests are made.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(default=5, ge=1)
    base_delay_s: float = Field(default=0.5, ge=0)
    max_delay_s: float = Field(default=8.0, ge=0)
    max_total_s: float = Field(default=30.0, ge=0)
    retry_after_cap_s: float = Field(default=60.0, ge=0)

    @model_validator(mode="after")
    def _delays_ordered(self) -> RetryPolicy:
        if self.max_delay_s < self.base_delay_s:
            raise ValueError("max_delay_s must be >= base_delay_s")
        return self

    def backoff_delay(self, failed_attempt: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait after attempt ``failed_attempt`` (1-based) failed."""
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), self.retry_after_cap_s)
        exponent = min(failed_attempt - 1, 62)
        return float(min(self.max_delay_s, self.base_delay_s * (2**exponent)))


class ApiModel(BaseModel):
    """Response data: unknown fields ignored, camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(
        frozen=True,
        extra="ignore",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
    )


class ApiKeySummary(ApiModel):
    """A project API key as the server lists it. Only the display form of the secret is known."""

    id: str
    created_at: datetime
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    """Never written by Langfuse (always ``None``); do not use it as a usage signal."""
    note: str | None = None
    public_key: str
    display_secret_key: str


class OrganizationProject(ApiModel):
    """A project of the organization the admin key belongs to."""

    id: str
    name: str
    metadata: dict[str, Any] | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class ProjectInfo(ApiModel):
    """The project a project key belongs to (from ``GET /api/public/projects``)."""

    id: str
    name: str
    organization_id: str | None = None


class HealthStatus(ApiModel):
    """``GET /api/public/health``: ``status`` is ``"OK"`` on a healthy server."""

    status: str
    version: str | None = None


class CanarySighting(ApiModel):
    """A canary trace read back: the project ids its rows name (empty when the server names none).

    Read with the key that sent it, a row naming the expected project proves that the key
    authenticates to that project (Langfuse answers a project key with its own project's data only).
    """

    project_ids: tuple[str, ...] = ()


class ProbeResult(ApiModel):
    """Whether the server accepted a key pair on one authenticated request."""

    accepted: bool
    status_code: int
    project_id: str | None = None
