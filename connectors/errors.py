"""The one exception hierarchy of every connector.

Every message is a single line a user can act on, and never contains secret material:
connectors build messages from status codes, public identifiers and the server's own
error string (which never echoes a secret), and raise ``from None`` so no chained
request or response object reaches a traceback.
"""

from __future__ import annotations

from typing import ClassVar


class ConnectorError(Exception):
    """Base class: a one-line, secret-free message.

    ``retryable``: the failure is transient (unreachable, overloaded, throttled), so calling again
    later may succeed; every other failure states a fact that a retry would meet again."""

    retryable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))

    @property
    def message(self) -> str:
        return str(self)


# --- Langfuse -----------------------------------------------------------------------------------


class LangfuseError(ConnectorError):
    """Any failure talking to Langfuse."""


class LangfuseUnreachableError(LangfuseError):
    """Connection refused, DNS failure or timeout."""

    retryable = True


class LangfuseAnswerTooLargeError(LangfuseError):
    """Langfuse answered, but with more than the body cap allows (or a compressed body, whose size
    cannot be capped): the answer was refused unread. A retry would meet the same answer."""


class LangfuseAuthError(LangfuseError):
    """401: the key pair was rejected (invalid, revoked, or wrong host)."""


class LangfuseForbiddenError(LangfuseError):
    """403: not an organization key, or the plan lacks the admin API."""


class LangfuseNotFoundError(LangfuseError):
    """404: project or key not found (or not visible to this key)."""


class LangfuseConflictError(LangfuseError):
    """409: a key with this public or secret key already exists."""


class LangfuseBadRequestError(LangfuseError):
    """400: the server rejected the request body or parameters."""


class LangfuseRateLimitedError(LangfuseError):
    """429 after retries were exhausted."""

    retryable = True

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class LangfuseServerError(LangfuseError):
    """5xx after retries were exhausted, or an ambiguous failure of a non-idempotent call."""

    retryable = True


class LangfuseUnsupportedServerError(LangfuseError):
    """The server is too old for a feature the rotation needs (e.g. predefined keys)."""


class LangfuseCanaryTimeoutError(LangfuseError):
    """A canary trace sent with a key did not become readable within the time budget."""

    def __init__(self, message: str, trace_id: str, waited_s: float) -> None:
        super().__init__(message)
        self.trace_id = trace_id
        self.waited_s = waited_s


# --- Secret stores ------------------------------------------------------------------------------


class StoreError(ConnectorError):
    """Any failure of a secret store."""


class StoreUnavailableError(StoreError):
    """Unreachable, sealed, or throttled beyond retries."""

    retryable = True


class StoreAccessDeniedError(StoreError):
    """The store refused the credential or the policy denies the operation."""


class StoreNotFoundError(StoreError):
    """No secret (or no such version) at the location."""


class StoreConflictError(StoreError):
    """Check-and-set or stage fencing failed: someone else changed the secret."""


class StoreRefusedError(StoreError):
    """The store's configuration makes a safe rotation impossible (e.g. AWS-managed rotation on)."""


# --- Consumers ----------------------------------------------------------------------------------


class ConsumerError(ConnectorError):
    """A consumer's restart hook or health endpoint misbehaved."""


# --- Prefect ------------------------------------------------------------------------------------


class PrefectApiError(ConnectorError):
    """The Prefect API answered something unexpected (status and path only)."""
