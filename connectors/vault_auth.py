"""How ``VaultStore`` gets a Vault token, and keeps it valid through long waits.

Methods (docs/configuration.md "Vault"):

``TokenAuth``
    A fixed token (``token:``, ``VAULT_TOKEN``). A renewable token with a TTL is renewed in the
    background when two thirds of its TTL have passed, so it survives an approval or a long wait
    while the store is idle (up to the token's max TTL, which no renewal can pass).
``TokenFileAuth``
    A file holding the token, as Vault Agent's token sink (or ``vault login``'s ``~/.vault-token``)
    writes it. Re-read whenever the file changes, and once more after a 403. The writer (Agent)
    keeps the token alive; this side never renews it.
``AppRoleAuth`` / ``JwtAuth``
    Log in on first use; log in again when the token is close to expiry (the last third of its
    TTL) or after a 403. ``JwtAuth`` re-reads its ``jwt_file`` at every login, since Kubernetes
    service-account tokens and CI OIDC tokens are short-lived files rotated by their platform.

Nothing here logs or formats a token, secret ID or JWT.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import requests
from pydantic import SecretStr

from connectors.errors import StoreAccessDeniedError

__all__ = ["AppRoleAuth", "JwtAuth", "TokenAuth", "TokenFileAuth", "TokenKeeper", "VaultAuth"]

_log = logging.getLogger("langfuse_rotate.vault")

_REJECTED = (
    hvac.exceptions.InvalidRequest,
    hvac.exceptions.Forbidden,
    hvac.exceptions.Unauthorized,
    hvac.exceptions.InvalidPath,
)


@dataclass(frozen=True)
class Lease:
    """What Vault said about the token it gave: its TTL in seconds (0 = never expires)."""

    ttl_s: float
    renewable: bool


class VaultAuth(ABC):
    """One way to obtain a token. ``login`` sets ``client.token`` and returns the token's lease
    (None when unknown, e.g. a token file whose writer manages the lease)."""

    method: str
    can_login_again = False
    """True when a fresh token can be had at any time (AppRole, JWT): then expiry is handled by
    logging in again, not by renewing."""

    @abstractmethod
    def login(self, client: hvac.Client) -> Lease | None: ...

    def refresh_if_changed(self, client: hvac.Client) -> None:
        """Pick up a token changed outside (a token file); no-op for the others."""
        return None

    def describe(self) -> str:
        return self.method


class TokenAuth(VaultAuth):
    method = "token"

    def __init__(self, token: SecretStr) -> None:
        raw = token.get_secret_value().strip()
        if not raw:
            raise ValueError("Vault token is empty")
        self._token = SecretStr(raw)

    def __repr__(self) -> str:
        return "TokenAuth(token='**********')"

    def login(self, client: hvac.Client) -> Lease | None:
        client.token = self._token.get_secret_value()
        try:
            data = client.auth.token.lookup_self()["data"]
        except hvac.exceptions.Forbidden:
            return None  # no lookup-self permission (or a bad token: the first request says so)
        return _lease(data.get("ttl"), data.get("renewable"))


class TokenFileAuth(VaultAuth):
    method = "token_file"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._seen: tuple[int, int, int] | None = None

    def __repr__(self) -> str:
        return f"TokenFileAuth(path={str(self.path)!r})"

    def describe(self) -> str:
        return f"token_file {self.path}"

    def login(self, client: hvac.Client) -> Lease | None:
        self._seen = None
        self.refresh_if_changed(client)
        return None

    def refresh_if_changed(self, client: hvac.Client) -> None:
        try:
            stat = self.path.stat()
            signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if signature == self._seen:
                return
            token = self.path.read_text().strip()
        except OSError as exc:
            raise StoreAccessDeniedError(f"cannot read Vault token_file {self.path}: {exc.strerror}") from None
        if not token:
            raise StoreAccessDeniedError(f"Vault token_file {self.path} is empty")
        client.token = token
        self._seen = signature


class AppRoleAuth(VaultAuth):
    method = "approle"
    can_login_again = True

    def __init__(self, role_id: str, secret_id: SecretStr, mount: str = "approle") -> None:
        self.role_id = role_id
        self._secret_id = secret_id
        self.mount = mount.strip("/")

    def __repr__(self) -> str:
        return f"AppRoleAuth(role_id={self.role_id!r}, mount={self.mount!r})"

    def login(self, client: hvac.Client) -> Lease | None:
        try:
            response = client.auth.approle.login(
                role_id=self.role_id, secret_id=self._secret_id.get_secret_value(), mount_point=self.mount
            )
        except _REJECTED:
            raise StoreAccessDeniedError(
                f"Vault AppRole login at {client.url} (auth/{self.mount}) failed: invalid role or secret ID"
            ) from None
        return _login_lease(response)


class JwtAuth(VaultAuth):
    method = "jwt"
    can_login_again = True

    def __init__(self, role: str, jwt_file: Path, mount: str = "jwt") -> None:
        self.role = role
        self.jwt_file = Path(jwt_file)
        self.mount = mount.strip("/")

    def __repr__(self) -> str:
        return f"JwtAuth(role={self.role!r}, jwt_file={str(self.jwt_file)!r}, mount={self.mount!r})"

    def describe(self) -> str:
        return f"jwt role {self.role}"

    def login(self, client: hvac.Client) -> Lease | None:
        try:
            jwt = self.jwt_file.read_text().strip()
        except OSError as exc:
            raise StoreAccessDeniedError(f"cannot read Vault jwt_file {self.jwt_file}: {exc.strerror}") from None
        if not jwt:
            raise StoreAccessDeniedError(f"Vault jwt_file {self.jwt_file} is empty")
        try:
            response = client.auth.jwt.jwt_login(role=self.role, jwt=jwt, path=self.mount)
        except _REJECTED as exc:
            errors = getattr(exc, "errors", None) or []
            detail = "; ".join(str(e) for e in errors).replace(jwt, "<jwt>")[:200] or "rejected"
            raise StoreAccessDeniedError(
                f"Vault JWT login at {client.url} (auth/{self.mount}, role {self.role}) failed: {detail}"
            ) from None
        return _login_lease(response)


class TokenKeeper:
    """Keeps ``client.token`` valid: logs in on first use, re-reads token files, renews or logs in
    again before expiry, and recovers once from a 403. Thread-safe."""

    renew_fraction = 2 / 3
    """Renew (or log in again) once this share of the token's TTL has passed."""

    def __init__(
        self,
        client: hvac.Client,
        auth: VaultAuth,
        *,
        on_token: Callable[[str], None] | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        """``on_token`` is told every new token (e.g. to register it for log redaction)."""
        self._client = client
        self.auth = auth
        self._on_token = on_token
        self._announced: str | None = None
        self._clock = clock
        self._lock = threading.RLock()
        self._logged_in = False
        self._refresh_at: float | None = None
        self._lease: Lease | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def ensure(self) -> None:
        """Call before each request."""
        with self._lock:
            if not self._logged_in:
                self._login()
            else:
                self.auth.refresh_if_changed(self._client)
                if self._refresh_at is not None and self._clock() >= self._refresh_at:
                    self._refresh()
            self._announce()

    def recover(self) -> bool:
        """After a 403: True when a new token was obtained and the request is worth repeating."""
        with self._lock:
            before = self._client.token
            if self.auth.can_login_again:
                self._login()
                self._announce()
                return True
            if isinstance(self.auth, TokenFileAuth):
                self.auth.login(self._client)
                self._announce()
                return bool(self._client.token != before)
            return False

    def close(self) -> None:
        self._stop.set()

    # --- internals ----------------------------------------------------------------------------

    def _announce(self) -> None:
        token = self._client.token
        if self._on_token is not None and isinstance(token, str) and token and token != self._announced:
            self._on_token(token)
            self._announced = token

    def _login(self) -> None:
        self._set_lease(self.auth.login(self._client))
        self._logged_in = True
        if (
            isinstance(self.auth, TokenAuth)
            and self._lease is not None
            and self._lease.renewable
            and self._renewer is None
        ):
            self._start_renewer()

    def _set_lease(self, lease: Lease | None) -> None:
        self._lease = lease
        if lease is None or lease.ttl_s <= 0:
            self._refresh_at = None
        else:
            self._refresh_at = self._clock() + lease.ttl_s * self.renew_fraction

    def _refresh(self) -> None:
        if self.auth.can_login_again:
            self._login()
        elif self._lease is not None and self._lease.renewable:
            self._renew()
        else:
            self._refresh_at = None

    def _renew(self) -> None:
        """Renew the token's lease; when it cannot be extended any more, stop trying."""
        try:
            response = self._client.auth.token.renew_self()
        except hvac.exceptions.Forbidden:
            _log.warning("Vault token renewal was refused: the token was revoked or has expired")
            self._refresh_at = None  # nothing left to renew; requests will report the denial
            return
        except (hvac.exceptions.VaultError, requests.exceptions.RequestException) as exc:
            _log.warning("Vault token renewal failed (%s); retrying later", type(exc).__name__)
            if self._lease is not None:
                self._refresh_at = self._clock() + max(self._lease.ttl_s / 10, 0.5)
            return
        lease = _login_lease(response)
        if lease is not None and self._lease is not None and lease.ttl_s < self._lease.ttl_s:
            _log.warning("Vault token reaches its max TTL in %.0fs; it cannot be renewed past that", lease.ttl_s)
            self._lease = Lease(ttl_s=lease.ttl_s, renewable=False)
            self._refresh_at = None
            return
        self._set_lease(lease)

    def _start_renewer(self) -> None:
        keeper = weakref.ref(self)
        stop = self._stop

        def run() -> None:
            while not stop.is_set():
                current = keeper()
                if current is None:
                    return
                with current._lock:
                    due = current._refresh_at
                    if due is not None and current._clock() >= due:
                        current._renew()
                        due = current._refresh_at
                    if due is None:
                        return
                    wait = max(due - current._clock(), 0.05)
                del current
                stop.wait(min(wait, 60.0))

        self._renewer = threading.Thread(target=run, name="vault-token-renewer", daemon=True)
        self._renewer.start()

    def __del__(self) -> None:
        self._stop.set()


def _lease(ttl: Any, renewable: Any) -> Lease | None:
    if not isinstance(ttl, int | float):
        return None
    return Lease(ttl_s=float(ttl), renewable=bool(renewable))


def _login_lease(response: Any) -> Lease | None:
    auth = response.get("auth") if isinstance(response, dict) else None
    if not isinstance(auth, dict):
        return None
    return _lease(auth.get("lease_duration"), auth.get("renewable"))
