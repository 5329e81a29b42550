"""A demo consuming service: an app that uses Langfuse with the key pair from the secret store.

It behaves like a real deployment of an instrumented app:

- at start it reads the CURRENT key pair (and host) from Vault KV v2 or AWS Secrets Manager,
  directly with hvac/boto3 (it is a separate app; it does not use the project's connectors);
- it sends traces with the real ``langfuse`` SDK (OTLP export, Basic auth with the pair);
- ``GET /health`` reports the public key in use (never the secret):
  ``{"status": "ok", "langfuse_public_key": "pk-lf-...", "restarts": N, "traces_sent": N,
  "last_export_ok": bool | null, "started_at": ..., ...}``;
- ``POST /restart`` is a rollout: after ``--restart-delay-s`` it re-reads the secret and builds a
  new Langfuse client (the SDK fixes its auth header at construction), shutting the old one down;
  with ``--ignore-restart`` it acknowledges the request and never switches;
- ``POST /trace`` sends one trace now and flushes: ``{"trace_id": ..., "export_ok": ...}``;
- ``--trace-interval-s F`` > 0 keeps sending a trace every F seconds.

Command line::

    python -m devstack.consumer --port 0 --name api --store vault --vault-url URL \\
        --vault-token TOKEN [--mount secret] --path langfuse/x
    python -m devstack.consumer --store aws --aws-endpoint-url URL --aws-region us-east-1 --path NAME

When ready it prints one JSON line ``{"url", "health_url", "restart_url", ...}`` and serves until
SIGTERM/SIGINT, then flushes and shuts the SDK down. ``--vault-token`` falls back to
``VAULT_TOKEN``/``BAO_TOKEN``; AWS credentials come from the usual environment.

``start_consumer_process(...)`` runs it as a subprocess (the SDK holds process-global
OpenTelemetry state, so one consumer per process).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr

__all__ = [
    "ConsumerProcess",
    "DemoConsumer",
    "LangfuseSettings",
    "StoreSettings",
    "main",
    "read_settings",
    "start_consumer_process",
]

_log = logging.getLogger("devstack.consumer")

_OTLP_EXPORTER_LOGGER = "opentelemetry.exporter.otlp.proto.http.trace_exporter"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# --- reading the secret store -------------------------------------------------------------------


@dataclass(frozen=True)
class StoreSettings:
    """Where the app's Langfuse credentials live and which fields hold them."""

    kind: Literal["vault", "aws"]
    path: str
    vault_url: str | None = None
    vault_token: SecretStr | None = None
    mount: str = "secret"
    aws_endpoint_url: str | None = None
    aws_region: str = "us-east-1"
    public_key_field: str = "LANGFUSE_PUBLIC_KEY"
    secret_key_field: str = "LANGFUSE_SECRET_KEY"
    host_field: str = "LANGFUSE_HOST"
    fallback_host: str | None = None
    """Used when the secret has no host field."""

    @property
    def label(self) -> str:
        return f"vault {self.mount}/{self.path}" if self.kind == "vault" else f"aws {self.path}"


@dataclass(frozen=True)
class LangfuseSettings:
    public_key: str
    secret_key: SecretStr
    host: str


class StoreReadError(Exception):
    """One line, never a secret."""


def _read_vault(settings: StoreSettings) -> Mapping[str, Any]:
    import hvac
    import hvac.exceptions

    if not settings.vault_url or settings.vault_token is None:
        raise StoreReadError("vault store needs --vault-url and --vault-token (or VAULT_TOKEN)")
    client = hvac.Client(url=settings.vault_url, token=settings.vault_token.get_secret_value(), timeout=10)
    try:
        response = client.secrets.kv.v2.read_secret_version(
            path=settings.path, mount_point=settings.mount, raise_on_deleted_version=True
        )
    except hvac.exceptions.VaultError as exc:
        raise StoreReadError(f"cannot read {settings.label}: {type(exc).__name__}") from None
    except Exception as exc:  # connection errors from requests
        raise StoreReadError(f"cannot reach vault for {settings.label}: {type(exc).__name__}") from None
    data = response.get("data", {}).get("data") if isinstance(response, dict) else None
    if not isinstance(data, dict):
        raise StoreReadError(f"{settings.label} holds no data")
    return data


def _read_aws(settings: StoreSettings) -> Mapping[str, Any]:
    import boto3

    client = boto3.client("secretsmanager", endpoint_url=settings.aws_endpoint_url, region_name=settings.aws_region)
    try:
        response = client.get_secret_value(SecretId=settings.path, VersionStage="AWSCURRENT")
    except Exception as exc:
        error = getattr(exc, "response", None)
        code = error.get("Error", {}).get("Code") if isinstance(error, dict) else None
        raise StoreReadError(f"cannot read {settings.label}: {code or type(exc).__name__}") from None
    try:
        data = json.loads(response.get("SecretString") or "")
    except ValueError:
        raise StoreReadError(f"{settings.label} is not a JSON secret") from None
    if not isinstance(data, dict):
        raise StoreReadError(f"{settings.label} is not a JSON object")
    return data


def read_settings(settings: StoreSettings) -> LangfuseSettings:
    """Read the current key pair and host; raises ``StoreReadError`` (secret-free)."""
    data = _read_vault(settings) if settings.kind == "vault" else _read_aws(settings)
    public_key = data.get(settings.public_key_field)
    secret_key = data.get(settings.secret_key_field)
    host = data.get(settings.host_field) or settings.fallback_host
    for field_name, value in (
        (settings.public_key_field, public_key),
        (settings.secret_key_field, secret_key),
    ):
        if not isinstance(value, str) or not value:
            raise StoreReadError(f"{settings.label} has no field {field_name!r}")
    if not isinstance(host, str) or not host:
        raise StoreReadError(f"{settings.label} has no field {settings.host_field!r} and no --langfuse-host")
    assert isinstance(public_key, str) and isinstance(secret_key, str)
    return LangfuseSettings(public_key=public_key, secret_key=SecretStr(secret_key), host=host.rstrip("/"))


# --- the Langfuse client ------------------------------------------------------------------------


class _ExportFailureCounter(logging.Handler):
    """Counts the OTLP exporter's "Failed to export ..." errors (the SDK never raises on them)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self._lock = threading.Lock()
        self.failures = 0

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock:
            self.failures += 1


def _forget_sdk_client(public_key: str) -> None:
    """Drop the SDK's cached client for ``public_key``.

    The SDK caches one resource manager per public key, even after ``shutdown()``; without this a
    later client for the same key (a rollback to the old pair) would reuse the dead one. Private
    API of langfuse 5.x, used only by this demo app.
    """
    from langfuse._client.resource_manager import LangfuseResourceManager

    with LangfuseResourceManager._lock:
        LangfuseResourceManager._instances.pop(public_key, None)


class _LangfuseApp:
    """One Langfuse client with its own TracerProvider."""

    def __init__(self, settings: LangfuseSettings, environment: str | None = None, stamp_key: bool = False) -> None:
        from langfuse import Langfuse
        from opentelemetry.sdk.trace import TracerProvider

        _forget_sdk_client(settings.public_key)
        self.settings = settings
        self.environment = environment
        self.stamp_key = stamp_key
        self._provider = TracerProvider()
        self.client = Langfuse(
            public_key=settings.public_key,
            secret_key=settings.secret_key.get_secret_value(),
            base_url=settings.host,
            tracer_provider=self._provider,
            flush_interval=3600,  # we flush explicitly after each trace
            environment=environment,
        )

    def send_trace(self, consumer_name: str, sequence: int) -> str:
        from langfuse import propagate_attributes

        # --stamp-key: the one line a service adds where its exporter does not name its key
        # (README "Trace evidence", key_source: metadata); the public key only, never the secret.
        stamp = {"langfuse_public_key": self.settings.public_key} if self.stamp_key else None
        with (
            propagate_attributes(metadata=stamp) if stamp else contextlib.nullcontext(),
            self.client.start_as_current_observation(
                name="demo-request", as_type="span", input={"consumer": consumer_name, "n": sequence}
            ) as span,
        ):
            span.update(output={"ok": True})
            trace_id = str(span.trace_id)
        self.client.flush()
        return trace_id

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.shutdown()
        with contextlib.suppress(Exception):
            self._provider.shutdown()
        _forget_sdk_client(self.settings.public_key)


# --- the app ------------------------------------------------------------------------------------


@dataclass
class _State:
    started_at: str = field(default_factory=_now)
    restarts: int = 0
    restart_requests: int = 0
    restart_pending: bool = False
    traces_sent: int = 0
    last_export_ok: bool | None = None
    last_restart_at: str | None = None
    last_error: str | None = None


class DemoConsumer:
    """The app's behaviour, independent of HTTP."""

    def __init__(
        self,
        name: str,
        store: StoreSettings,
        *,
        restart_delay_s: float = 0.0,
        ignore_restart: bool = False,
        trace_interval_s: float = 0.0,
        environment: str | None = None,
        stamp_key: bool = False,
    ) -> None:
        self.name = name
        self._environment = environment
        self._stamp_key = stamp_key
        self._store = store
        self._restart_delay_s = restart_delay_s
        self._ignore_restart = ignore_restart
        self._trace_interval_s = trace_interval_s
        self._state = _State()
        self._lock = threading.Lock()  # guards _state
        self._client_lock = threading.Lock()  # serialises SDK use and client swaps
        self._stop = threading.Event()
        self._export_failures = _ExportFailureCounter()
        logging.getLogger(_OTLP_EXPORTER_LOGGER).addHandler(self._export_failures)
        self._app = _LangfuseApp(read_settings(store), environment, stamp_key)
        self._threads: list[threading.Thread] = []
        if trace_interval_s > 0:
            self._spawn(self._trace_loop, "trace-loop")

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    # health ---------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        with self._lock:
            state = self._state
            return {
                "status": "ok",
                "name": self.name,
                "langfuse_public_key": self._app.settings.public_key,
                "langfuse_host": self._app.settings.host,
                "restarts": state.restarts,
                "restart_requests": state.restart_requests,
                "restart_pending": state.restart_pending,
                "ignore_restart": self._ignore_restart,
                "traces_sent": state.traces_sent,
                "last_export_ok": state.last_export_ok,
                "started_at": state.started_at,
                "last_restart_at": state.last_restart_at,
                "last_error": state.last_error,
            }

    # traces ---------------------------------------------------------------------------------

    def send_trace(self) -> dict[str, Any]:
        with self._client_lock:
            before = self._export_failures.failures
            with self._lock:
                sequence = self._state.traces_sent + 1
            trace_id = self._app.send_trace(self.name, sequence)
            ok = self._export_failures.failures == before
            public_key = self._app.settings.public_key
        with self._lock:
            self._state.traces_sent += 1
            self._state.last_export_ok = ok
        return {"trace_id": trace_id, "export_ok": ok, "langfuse_public_key": public_key}

    def _trace_loop(self) -> None:
        while not self._stop.wait(self._trace_interval_s):
            try:
                self.send_trace()
            except Exception as exc:  # keep the loop alive like a real app would
                with self._lock:
                    self._state.last_error = f"trace failed: {type(exc).__name__}"

    # restart --------------------------------------------------------------------------------

    def request_restart(self) -> dict[str, Any]:
        with self._lock:
            self._state.restart_requests += 1
            if self._ignore_restart:
                return {"restarting": True, "delay_s": self._restart_delay_s}
            already = self._state.restart_pending
            self._state.restart_pending = True
        if not already:
            self._spawn(self._restart_after_delay, "restart")
        return {"restarting": True, "delay_s": self._restart_delay_s}

    def _restart_after_delay(self) -> None:
        if self._stop.wait(self._restart_delay_s):
            return
        error: str | None = None
        try:
            settings = read_settings(self._store)
        except StoreReadError as exc:
            error = f"restart kept the old client: {exc}"
        else:
            with self._client_lock:
                old = self._app
                # Shut the old client down first: a rollback can bring back the same public key,
                # and the SDK would otherwise hand back the cached, dead client.
                old.close()
                try:
                    self._app = _LangfuseApp(settings, self._environment, self._stamp_key)
                except Exception as exc:
                    error = f"restart failed: {type(exc).__name__}; old client restored"
                    self._app = _LangfuseApp(old.settings, self._environment, self._stamp_key)
        with self._lock:
            self._state.restart_pending = False
            self._state.last_error = error
            if error is None:
                self._state.restarts += 1
                self._state.last_restart_at = _now()
        if error is not None:
            _log.warning("%s: %s", self.name, error)

    # lifecycle ------------------------------------------------------------------------------

    def shutdown(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        with self._client_lock:
            self._app.close()
        logging.getLogger(_OTLP_EXPORTER_LOGGER).removeHandler(self._export_failures)


# --- HTTP ---------------------------------------------------------------------------------------


def _make_server(app: DemoConsumer, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def _reply(self, status: int, payload: Mapping[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _drain(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > 0:
                self.rfile.read(length)

        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] == "/health":
                self._reply(200, app.health())
            else:
                self._reply(404, {"error": "not found"})

        def do_POST(self) -> None:
            self._drain()
            route = self.path.split("?", 1)[0]
            try:
                if route == "/restart":
                    self._reply(202, app.request_restart())
                elif route == "/trace":
                    self._reply(200, app.send_trace())
                else:
                    self._reply(404, {"error": "not found"})
            except Exception as exc:
                self._reply(500, {"error": type(exc).__name__})

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devstack.consumer", description="Demo Langfuse consumer")
    parser.add_argument("--name", default="consumer")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--store", choices=["vault", "aws"], required=True)
    parser.add_argument("--path", required=True, help="Vault KV path or AWS secret name")
    parser.add_argument("--vault-url")
    parser.add_argument("--vault-token", help="default: $VAULT_TOKEN or $BAO_TOKEN")
    parser.add_argument("--mount", default="secret")
    parser.add_argument("--aws-endpoint-url")
    parser.add_argument("--aws-region", default=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    parser.add_argument("--public-key-field", default="LANGFUSE_PUBLIC_KEY")
    parser.add_argument("--secret-key-field", default="LANGFUSE_SECRET_KEY")
    parser.add_argument("--host-field", default="LANGFUSE_HOST")
    parser.add_argument("--langfuse-host", help="used when the secret has no host field")
    parser.add_argument("--trace-interval-s", type=float, default=0.0)
    parser.add_argument("--restart-delay-s", type=float, default=0.0)
    parser.add_argument("--ignore-restart", action="store_true")
    parser.add_argument("--environment", help="the Langfuse environment of its traces (default: the SDK's)")
    parser.add_argument(
        "--stamp-key", action="store_true", help="stamp the public key into trace metadata (langfuse_public_key)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    token = args.vault_token or os.environ.get("VAULT_TOKEN") or os.environ.get("BAO_TOKEN")
    store = StoreSettings(
        kind=args.store,
        path=args.path,
        vault_url=args.vault_url,
        vault_token=SecretStr(token) if token else None,
        mount=args.mount,
        aws_endpoint_url=args.aws_endpoint_url,
        aws_region=args.aws_region,
        public_key_field=args.public_key_field,
        secret_key_field=args.secret_key_field,
        host_field=args.host_field,
        fallback_host=args.langfuse_host,
    )
    try:
        app = DemoConsumer(
            args.name,
            store,
            restart_delay_s=args.restart_delay_s,
            ignore_restart=args.ignore_restart,
            trace_interval_s=args.trace_interval_s,
            environment=args.environment,
            stamp_key=args.stamp_key,
        )
    except StoreReadError as exc:
        print(f"consumer {args.name}: {exc}", file=sys.stderr)
        return 1
    server = _make_server(app, args.host, args.port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="http", daemon=True)
    serving.start()
    url = f"http://{args.host}:{server.server_address[1]}"
    ready = {
        "name": args.name,
        "url": url,
        "health_url": f"{url}/health",
        "restart_url": f"{url}/restart",
        "trace_url": f"{url}/trace",
        "pid": os.getpid(),
    }
    sys.stdout.write(json.dumps(ready) + "\n")
    sys.stdout.flush()
    stop.wait()
    server.shutdown()
    server.server_close()
    app.shutdown()
    return 0


# --- running it as a subprocess -----------------------------------------------------------------


class ConsumerProcess:
    """A demo consumer running in its own process. ``stop()`` sends SIGTERM and waits."""

    def __init__(self, proc: subprocess.Popen[str], ready: Mapping[str, Any], output: _Output) -> None:
        self.proc = proc
        self.name = str(ready.get("name", ""))
        self.url = str(ready["url"])
        self.health_url = str(ready["health_url"])
        self.restart_url = str(ready["restart_url"])
        self.trace_url = str(ready["trace_url"])
        self._output = output

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stdout_text(self) -> str:
        return self._output.text("stdout")

    def stderr_text(self) -> str:
        return self._output.text("stderr")

    def stop(self, timeout_s: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._output.join()
        return int(self.proc.returncode)

    def __enter__(self) -> ConsumerProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


class _Output:
    """Drains a child's stdout/stderr in threads; hands the first stdout line to the starter."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._lock = threading.Lock()
        self.first_stdout: queue.Queue[str | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._drain, args=("stdout", proc.stdout), daemon=True),
            threading.Thread(target=self._drain, args=("stderr", proc.stderr), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _drain(self, stream_name: str, stream: Any) -> None:
        first = stream_name == "stdout"
        for line in stream:
            with self._lock:
                self._lines[stream_name].append(line)
            if first:
                self.first_stdout.put(line)
                first = False
        if first:
            self.first_stdout.put(None)

    def text(self, stream_name: str) -> str:
        with self._lock:
            return "".join(self._lines[stream_name])

    def join(self) -> None:
        for thread in self._threads:
            thread.join(5)


def start_consumer_process(
    *,
    name: str,
    store: Literal["vault", "aws"],
    path: str,
    vault_url: str | None = None,
    vault_token: str | None = None,
    mount: str = "secret",
    aws_endpoint_url: str | None = None,
    aws_region: str = "us-east-1",
    public_key_field: str = "LANGFUSE_PUBLIC_KEY",
    secret_key_field: str = "LANGFUSE_SECRET_KEY",
    host_field: str = "LANGFUSE_HOST",
    langfuse_host: str | None = None,
    trace_interval_s: float = 0.0,
    restart_delay_s: float = 0.0,
    ignore_restart: bool = False,
    environment: str | None = None,
    stamp_key: bool = False,
    env: Mapping[str, str] | None = None,
    startup_timeout_s: float = 30.0,
) -> ConsumerProcess:
    """Start ``python -m devstack.consumer`` and wait for its ready line.

    The Vault token travels in the child's environment, not on its command line. For the AWS
    store, test credentials (``testing``) are filled in when the environment has none.
    Raises ``RuntimeError`` (with the child's stderr, which never holds a secret) if it does not
    come up.
    """
    argv = [
        sys.executable,
        "-m",
        "devstack.consumer",
        "--name",
        name,
        "--port",
        "0",
        "--store",
        store,
        "--path",
        path,
        "--mount",
        mount,
        "--aws-region",
        aws_region,
        "--public-key-field",
        public_key_field,
        "--secret-key-field",
        secret_key_field,
        "--host-field",
        host_field,
        "--trace-interval-s",
        str(trace_interval_s),
        "--restart-delay-s",
        str(restart_delay_s),
    ]
    if vault_url:
        argv += ["--vault-url", vault_url]
    if aws_endpoint_url:
        argv += ["--aws-endpoint-url", aws_endpoint_url]
    if langfuse_host:
        argv += ["--langfuse-host", langfuse_host]
    if ignore_restart:
        argv.append("--ignore-restart")
    if environment:
        argv += ["--environment", environment]
    if stamp_key:
        argv.append("--stamp-key")

    child_env = dict(os.environ)
    child_env.update(env or {})
    repo_root = str(Path(__file__).resolve().parents[1])
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, child_env.get("PYTHONPATH")) if p)
    child_env["PYTHONUNBUFFERED"] = "1"
    if vault_token:
        child_env["VAULT_TOKEN"] = vault_token
    if store == "aws":
        child_env.setdefault("AWS_ACCESS_KEY_ID", "testing")
        child_env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")

    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env,
    )
    output = _Output(proc)
    try:
        line = output.first_stdout.get(timeout=startup_timeout_s)
    except queue.Empty:
        line = None
    ready: Any = None
    if line:
        with contextlib.suppress(ValueError):
            ready = json.loads(line)
    if not isinstance(ready, dict) or "url" not in ready:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        output.join()
        stderr = " | ".join(output.text("stderr").strip().splitlines()[-5:])
        raise RuntimeError(f"demo consumer {name!r} did not start (rc={proc.returncode}): {stderr}")
    return ConsumerProcess(proc, ready, output)


if __name__ == "__main__":
    raise SystemExit(main())
