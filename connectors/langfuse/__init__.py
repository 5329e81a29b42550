"""Typed Langfuse client connector: project API-key administration, key probes and canary traces.

Three clients, one per credential:

- ``LangfuseAdminClient``: an organization-scoped key; lists, creates and deletes project keys.
- ``LangfuseInstanceAdmin``: a self-hosted ``ADMIN_API_KEY``; flushes the API-key cache.
- ``LangfuseProjectClient``: a project key pair; auth check, revocation probe, canary round trip,
  and trace evidence (``latest_traces``: the newest traces of a consumer sent with a given key).

Every failure is a ``connectors.errors.LangfuseError`` with a one-line, secret-free message.
No Prefect import: usable from a plain script.
"""

from connectors.langfuse.admin import LangfuseAdminClient, LangfuseInstanceAdmin
from connectors.langfuse.memberships import LangfuseMemberships, Membership
from connectors.langfuse.models import (
    ApiKeySummary,
    CanarySighting,
    HealthStatus,
    OrganizationProject,
    ProbeResult,
    ProjectInfo,
    RetryPolicy,
)
from connectors.langfuse.project import LangfuseProjectClient
from connectors.langfuse.traces import KeySource, KeySpec, TraceMatch, TraceSighting

__all__ = [
    "ApiKeySummary",
    "CanarySighting",
    "HealthStatus",
    "KeySource",
    "KeySpec",
    "LangfuseAdminClient",
    "LangfuseInstanceAdmin",
    "LangfuseMemberships",
    "LangfuseProjectClient",
    "Membership",
    "OrganizationProject",
    "ProbeResult",
    "ProjectInfo",
    "RetryPolicy",
    "TraceMatch",
    "TraceSighting",
]
