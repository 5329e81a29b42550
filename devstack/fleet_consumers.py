"""Many consumers in one process, for fleet tests and the fleet benchmark.

One HTTP server stands for a consumer of every stored secret: ``GET /health?path=P`` reports the
public key the consumer of path ``P`` uses (read from the store the first time it is asked, as an
app reads its key at start), ``POST /restart?path=P`` is a rollout: after ``restart_delay_s`` that
consumer re-reads the store's current key. ``POST /_config`` changes ``restart_delay_s`` and
``stuck`` (paths whose consumer acknowledges restarts but never switches). Health answers never
carry a secret.

    python -m devstack.fleet_consumers --store vault --vault-url URL --path-prefix langfuse/
    python -m devstack.fleet_consumers --store aws --aws-endpoint-url URL --aws-region us-east-1

prints one JSON line ``{"url": ...}`` and serves until SIGTERM. ``--vault-token`` falls back to
``VAULT_TOKEN``; AWS credentials come from the usual environment.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pydantic import SecretStr

from connectors.store import SecretLocation, SecretStore


class FleetConsumers:
    """``with FleetConsumers(store) as consumers: consumers.health_url(path)``."""

    def __init__(self, store: SecretStore, *, restart_delay_s: float = 0.0, port: int = 0) -> None:
        self.store = store
        self.restart_delay_s = restart_delay_s
        self.stuck: set[str] = set()
        self.restarts = 0
        #: Rollouts in progress now (restarted, not yet re-read), and the most there were at once.
        self.rolling_out = 0
        self.most_rolling_out_at_once = 0
        self._keys: dict[str, str | None] = {}
        self._lock = threading.Lock()
        fleet = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _reply(self, status: int, payload: Any) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _path(self) -> str | None:
                values = parse_qs(urlsplit(self.path).query).get("path")
                return values[0] if values else None

            def do_GET(self) -> None:
                path = self._path()
                if urlsplit(self.path).path != "/health" or path is None:
                    self._reply(404, {"error": "not found"})
                    return
                self._reply(200, {"status": "ok", "langfuse_public_key": fleet.key_of(path)})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                route = urlsplit(self.path).path
                if route == "/_config":
                    fleet.configure(**json.loads(raw or b"{}"))
                    self._reply(200, {"restart_delay_s": fleet.restart_delay_s, "stuck": sorted(fleet.stuck)})
                    return
                path = self._path()
                if route != "/restart" or path is None:
                    self._reply(404, {"error": "not found"})
                    return
                fleet.restart(path)
                self._reply(200, {"restarting": True})

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fleet-consumers", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def health_url(self, path: str) -> str:
        return f"{self.url}/health?path={path}"

    def restart_url(self, path: str) -> str:
        return f"{self.url}/restart?path={path}"

    def configure(self, restart_delay_s: float | None = None, stuck: list[str] | None = None) -> None:
        with self._lock:
            if restart_delay_s is not None:
                self.restart_delay_s = float(restart_delay_s)
            if stuck is not None:
                self.stuck = set(stuck)

    def _read(self, path: str) -> str | None:
        try:
            return self.store.describe(SecretLocation(path=path)).current_public_key
        except Exception:  # a consumer that cannot read its secret reports no key
            return None

    def key_of(self, path: str) -> str | None:
        with self._lock:
            known = path in self._keys
        if not known:
            key = self._read(path)
            with self._lock:
                self._keys.setdefault(path, key)
        with self._lock:
            return self._keys[path]

    def restart(self, path: str) -> None:
        with self._lock:
            self.restarts += 1
            if path in self.stuck:
                return
            delay = self.restart_delay_s
            self.rolling_out += 1
            self.most_rolling_out_at_once = max(self.most_rolling_out_at_once, self.rolling_out)

        def reload() -> None:
            key = self._read(path)
            with self._lock:
                self._keys[path] = key
                self.rolling_out -= 1

        timer = threading.Timer(delay, reload)
        timer.daemon = True
        timer.start()

    def start(self) -> FleetConsumers:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FleetConsumers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.fleet_consumers")
    parser.add_argument("--store", choices=["vault", "aws"], required=True)
    parser.add_argument("--vault-url")
    parser.add_argument("--vault-token", default=os.environ.get("VAULT_TOKEN"))
    parser.add_argument("--mount", default="secret")
    parser.add_argument("--aws-endpoint-url")
    parser.add_argument("--aws-region", default="us-east-1")
    parser.add_argument("--restart-delay-s", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    store: SecretStore
    if args.store == "vault":
        from connectors.vault import VaultStore
        from connectors.vault_auth import TokenAuth

        store = VaultStore(args.vault_url, auth=TokenAuth(SecretStr(args.vault_token or "")), mount=args.mount)
    else:
        from connectors.aws_secrets import AwsSecretsStore

        store = AwsSecretsStore(region=args.aws_region, endpoint_url=args.aws_endpoint_url)
    consumers = FleetConsumers(store, restart_delay_s=args.restart_delay_s, port=args.port).start()
    print(json.dumps({"url": consumers.url}), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    consumers.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
