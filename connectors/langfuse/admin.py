"""Organization-level administration of project API keys, and the self-hosted cache flush."""

from __future__ import annotations

import logging
from datetime import datetime
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from connectors.errors import (
    LangfuseConflictError,
    LangfuseError,
    LangfuseRateLimitedError,
    LangfuseUnsupportedServerError,
)
from connectors.keypair import KeyPair
from connectors.langfuse._errors import (
    Action,
    Failure,
    parse_json,
    parse_model,
    parse_retry_after,
    server_message,
)
from connectors.langfuse._http import ClientBase, Clock, HttpCore, SecretBasicAuth, SecretBearerAuth, Sleep
from connectors.langfuse.models import (
    ApiKeySummary,
    ApiModel,
    HealthStatus,
    OrganizationProject,
    RetryPolicy,
)

logger = logging.getLogger("connectors.langfuse")

_ADMIN_HINT = (
    "an organization-scoped API key is required, on a plan with the admin API "
    "(Cloud Team/Enterprise or self-hosted Enterprise)"
)
_PREDEFINED_KEYS_VERSION = "v3.121.0"


class _ApiKeyList(ApiModel):
    api_keys: list[ApiKeySummary]


class _ProjectList(ApiModel):
    projects: list[OrganizationProject]


class _CreatedKey(ApiModel):
    """The create response without its ``secretKey`` (ignored, so it is never held)."""

    id: str
    created_at: datetime
    note: str | None = None
    public_key: str
    display_secret_key: str


def _reworded(error: LangfuseError, message: str) -> LangfuseError:
    """The same kind of error (keeping a rate limit's ``retry_after_s``) with a fuller message."""
    if isinstance(error, LangfuseRateLimitedError):
        return LangfuseRateLimitedError(message, retry_after_s=error.retry_after_s)
    return type(error)(message)


def _same_secret(display_secret_key: str, pair: KeyPair) -> bool:
    """Could ``display_secret_key`` (``sk-lf-...abcd``) show ``pair``'s secret?

    Only the part after ``...`` is compared, and an unfamiliar format is given the benefit of the
    doubt, so a cosmetic server change cannot turn an idempotent re-create into a conflict.
    """
    head, sep, tail = display_secret_key.partition("...")
    if not sep:
        return True
    secret = pair.secret_key.get_secret_value()
    return secret.startswith(head) and secret.endswith(tail)


def _keys_path(project_id: str) -> str:
    return f"/api/public/projects/{quote(project_id, safe='')}/apiKeys"


class LangfuseAdminClient(ClientBase):
    """Manage a project's API keys with an organization-scoped key.

    Reads and deletes are retried on 429, 5xx and connection failures within ``retry``.
    ``create_api_key`` is made idempotent by the predefined key pair (see its docstring).
    ``sleep``/``clock`` exist so tests can run the retry schedule without waiting.
    """

    def __init__(
        self,
        host: str,
        public_key: str,
        secret_key: SecretStr,
        *,
        timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Sleep | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.public_key = public_key
        self._core = HttpCore(
            host,
            auth=SecretBasicAuth(public_key, secret_key),
            secrets=(secret_key,),
            timeout_s=timeout_s,
            retry=retry,
            transport=transport,
            sleep=sleep,
            clock=clock,
        )
        self._credential = f"organization key {public_key}"

    def __repr__(self) -> str:
        return f"LangfuseAdminClient(host={self.host!r}, public_key={self.public_key!r})"

    def _action(self, doing: str, missing: str | None = None) -> Action:
        return Action(doing=doing, credential=self._credential, forbidden_hint=_ADMIN_HINT, missing=missing)

    # --- reads ----------------------------------------------------------------------------------

    def health(self) -> HealthStatus:
        """``GET /api/public/health?failIfDatabaseUnavailable=true`` (unauthenticated).

        Key administration needs the database, so an unreachable database counts as unhealthy:
        raises ``LangfuseServerError`` quoting the server's status (e.g. "Database not available").
        """
        response = self._core.call(
            "GET",
            "/api/public/health",
            self._action("check health"),
            params={"failIfDatabaseUnavailable": "true"},
            authenticated=False,
        )
        return parse_model(
            HealthStatus, parse_json(response, self.host, "health response"), self.host, "health response"
        )

    def list_projects(self) -> list[OrganizationProject]:
        """The organization's projects (``GET /api/public/organizations/projects``)."""
        response = self._core.call(
            "GET", "/api/public/organizations/projects", self._action("list the organization's projects")
        )
        data = parse_json(response, self.host, "project list")
        return parse_model(_ProjectList, data, self.host, "project list").projects

    def list_api_keys(self, project_id: str) -> list[ApiKeySummary]:
        """The project's API keys, oldest first. Raises ``LangfuseNotFoundError`` for an unknown project."""
        response = self._core.call(
            "GET",
            _keys_path(project_id),
            self._action(f"list the API keys of project {project_id}", missing=f"project {project_id}"),
        )
        data = parse_json(response, self.host, "API key list")
        return parse_model(_ApiKeyList, data, self.host, "API key list").api_keys

    def find_api_key(self, project_id: str, public_key: str) -> ApiKeySummary | None:
        """The project's key with this public key, or ``None``."""
        for key in self.list_api_keys(project_id):
            if key.public_key == public_key:
                return key
        return None

    # --- create ---------------------------------------------------------------------------------

    def create_api_key(self, project_id: str, pair: KeyPair, note: str) -> ApiKeySummary:
        """Create the key ``pair`` in the project; safe to call again with the same pair.

        - 200/201: returns the new key (the response's secret is discarded unread).
        - Already created (by an earlier call, or by an attempt whose answer was lost): the
          existing key is returned, found by its public key.
        - After an ambiguous failure (timeout, dropped connection, 5xx) the keys are listed
          first; only if the pair is absent is the POST repeated, which is safe because the
          same predefined pair can land at most once (a late duplicate answers 409).
        - 409 and the public key is absent: ``LangfuseConflictError`` (the secret collides
          with another key).
        - 429: the rate limiter runs before the handler, so ``Retry-After`` is honoured and
          the POST repeated.
        - A server that ignores predefined keys generated its own pair: that key is deleted
          and ``LangfuseUnsupportedServerError`` raised.
        """
        path = _keys_path(project_id)
        action = self._action(
            f"create API key {pair.public_key} in project {project_id}", missing=f"project {project_id}"
        )
        body = {
            "note": note,
            "publicKey": pair.public_key,
            "secretKey": pair.secret_key.get_secret_value(),
        }
        backoff = self._core.backoff()
        while True:
            outcome = self._core.send_once("POST", path, json=body)
            retry_after: float | None = None
            if isinstance(outcome, httpx.Response):
                status = outcome.status_code
                if status in (200, 201):
                    return self._accept_created(project_id, pair, outcome)
                if status == 409:
                    existing = self._existing(project_id, pair)
                    if existing is not None:
                        logger.info(
                            "Langfuse key %s already exists in project %s; create is a no-op",
                            pair.public_key,
                            project_id,
                        )
                        return existing
                    raise LangfuseConflictError(
                        f"Langfuse at {self.host} refused to create API key {pair.public_key} in project "
                        f"{project_id} (409: {server_message(outcome, self._core.secrets)}) and no key with "
                        "that public key exists: the secret collides with another key; generate a new pair"
                    )
                if status == 429:
                    retry_after = parse_retry_after(outcome.headers.get("retry-after"))
                elif status < 500 or status in (501, 505):
                    raise self._core.error(outcome, action)
                what = f"HTTP {status}"
                ambiguous = status != 429
            else:
                if not outcome.retryable:
                    raise self._core.error(outcome, action)
                what = outcome.reason
                ambiguous = outcome.maybe_sent
            if ambiguous:
                existing = self._existing_after_ambiguity(project_id, pair, what)
                if existing is not None:
                    logger.info(
                        "Langfuse key %s was created although the answer was lost (%s)",
                        pair.public_key,
                        what,
                    )
                    return existing
            delay = backoff.next_delay(retry_after)
            if delay is None:
                raise self._give_up(outcome, action, pair, project_id, ambiguous)
            self._core.log_retry("POST", path, what, delay, backoff)
            self._core.sleep(delay)

    def _give_up(
        self,
        outcome: httpx.Response | Failure,
        action: Action,
        pair: KeyPair,
        project_id: str,
        ambiguous: bool,
    ) -> LangfuseError:
        error = self._core.error(outcome, action)
        if not ambiguous:
            return error
        return _reworded(
            error,
            f"{error}; key {pair.public_key} is not in project {project_id}, so calling "
            "create_api_key again with the same pair is safe",
        )

    def _existing_after_ambiguity(self, project_id: str, pair: KeyPair, what: str) -> ApiKeySummary | None:
        try:
            return self._existing(project_id, pair)
        except LangfuseConflictError:
            raise
        except LangfuseError as exc:
            raise _reworded(
                exc,
                f"creating API key {pair.public_key} in project {project_id} had an unknown outcome "
                f"({what}) and listing the keys to check failed: {exc}; calling create_api_key again "
                "with the same pair is safe",
            ) from None

    def _existing(self, project_id: str, pair: KeyPair) -> ApiKeySummary | None:
        """The key with ``pair``'s public key, checked to carry the same secret (by its display form)."""
        existing = self.find_api_key(project_id, pair.public_key)
        if existing is not None and not _same_secret(existing.display_secret_key, pair):
            raise LangfuseConflictError(
                f"Langfuse at {self.host} already has API key {pair.public_key} in project {project_id} "
                f"with a different secret (shown as {existing.display_secret_key}); generate a new pair"
            )
        return existing

    def _accept_created(self, project_id: str, pair: KeyPair, response: httpx.Response) -> ApiKeySummary:
        data = parse_json(response, self.host, "create-key response")
        created = parse_model(_CreatedKey, data, self.host, "create-key response")
        del data
        if created.public_key == pair.public_key:
            return ApiKeySummary(
                id=created.id,
                created_at=created.created_at,
                note=created.note,
                public_key=created.public_key,
                display_secret_key=created.display_secret_key,
            )
        # An old server stripped the predefined pair and generated its own: nobody holds that
        # secret (we discarded it), so remove the key rather than leave it alive and untracked.
        try:
            self.delete_api_key(project_id, created.id)
        except LangfuseError as exc:
            raise LangfuseUnsupportedServerError(
                f"Langfuse at {self.host} ignores predefined API keys (Langfuse >= "
                f"{_PREDEFINED_KEYS_VERSION} needed) and generated key {created.public_key} "
                f"(id {created.id}) in project {project_id}, which could not be deleted ({exc}); "
                "delete it by hand"
            ) from None
        raise LangfuseUnsupportedServerError(
            f"Langfuse at {self.host} ignores predefined API keys (Langfuse >= {_PREDEFINED_KEYS_VERSION} "
            f"needed): it generated key {created.public_key} instead of {pair.public_key}; that key "
            "was deleted again; upgrade the server"
        )

    # --- delete ---------------------------------------------------------------------------------

    def delete_api_key(self, project_id: str, key_id: str) -> bool:
        """Delete the key; ``True`` if deleted now, ``False`` if it was already gone.

        Retried on 429, 5xx and connection failures. If an earlier attempt of this call may
        have landed (5xx, timeout, dropped connection) and a retry then finds the key gone,
        the earlier attempt is taken to have deleted it and ``True`` is returned.
        """
        path = f"{_keys_path(project_id)}/{quote(key_id, safe='')}"
        action = self._action(f"delete API key {key_id} of project {project_id}", missing=f"project {project_id}")
        backoff = self._core.backoff()
        maybe_landed = False
        while True:
            outcome = self._core.send_once("DELETE", path)
            retry_after: float | None = None
            if isinstance(outcome, httpx.Response):
                status = outcome.status_code
                if 200 <= status < 300:
                    return True
                if status == 404 and "api key not found" in server_message(outcome).lower():
                    return maybe_landed
                if status == 429:
                    retry_after = parse_retry_after(outcome.headers.get("retry-after"))
                elif status < 500 or status in (501, 505):
                    raise self._core.error(outcome, action)
                else:
                    maybe_landed = True
                what = f"HTTP {status}"
            else:
                if not outcome.retryable:
                    raise self._core.error(outcome, action)
                maybe_landed = maybe_landed or outcome.maybe_sent
                what = outcome.reason
            delay = backoff.next_delay(retry_after)
            if delay is None:
                raise self._core.error(outcome, action)
            self._core.log_retry("DELETE", path, what, delay, backoff)
            self._core.sleep(delay)


class LangfuseInstanceAdmin(ClientBase):
    """The self-hosted Instance Management API (``ADMIN_API_KEY``), used only to flush the key cache."""

    def __init__(
        self,
        host: str,
        admin_api_key: SecretStr,
        *,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        retry: RetryPolicy | None = None,
        sleep: Sleep | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._core = HttpCore(
            host,
            auth=SecretBearerAuth(admin_api_key),
            secrets=(admin_api_key,),
            timeout_s=timeout_s,
            retry=retry,
            transport=transport,
            sleep=sleep,
            clock=clock,
        )

    def __repr__(self) -> str:
        return f"LangfuseInstanceAdmin(host={self.host!r})"

    def invalidate_all_cached_keys(self) -> None:
        """Evict every cached API key (``{"action":"invalidate-all"}``); idempotent, so retried.

        The only way to evict a deleted key that a race re-cached (the targeted invalidation
        reads key rows from the database, and the deleted row is gone).
        """
        action = Action(
            doing="invalidate all cached API keys",
            credential="ADMIN_API_KEY",
            forbidden_hint="the instance admin API needs self-hosted Langfuse with ADMIN_API_KEY set",
            missing="the instance admin API (self-hosted only)",
        )
        self._core.call("POST", "/api/admin/api-keys", action, json={"action": "invalidate-all"})
