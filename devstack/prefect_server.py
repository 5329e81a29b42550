"""A real ``prefect server start`` on 127.0.0.1, on PostgreSQL (as in production).

Used by the test session, the distributed-mode tests and the benchmarks. PostgreSQL avoids
SQLite's "database is locked" 503s under concurrent runs; each server gets a fresh database.
When PostgreSQL is not reachable the server does not start (``PostgresUnavailable``): nothing
falls back to SQLite behind the caller's back. ``database="sqlite"`` asks for SQLite explicitly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import httpx

from devstack.net import free_port

PG_ADMIN_DSN = os.environ.get("LANGFUSE_ROTATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _psql(sql: str) -> None:
    subprocess.run(["psql", PG_ADMIN_DSN, "-v", "ON_ERROR_STOP=1", "-qc", sql], check=True, capture_output=True)


def database_url(admin_dsn: str, database: str) -> str:
    """The server's connection URL for ``database`` on the PostgreSQL that ``admin_dsn`` names (its user,
    password, host and port), so ``LANGFUSE_ROTATE_TEST_PG`` decides where the server's database lives."""
    return urlunsplit(("postgresql+asyncpg", urlsplit(admin_dsn).netloc, f"/{database}", "", ""))


class PostgresUnavailable(RuntimeError):
    """PostgreSQL (``LANGFUSE_ROTATE_TEST_PG``) does not answer, so no PostgreSQL-backed server can start."""


def postgres_available() -> bool:
    try:
        _psql("select 1")
    except (OSError, subprocess.CalledProcessError):
        return False
    return True


class PrefectServer:
    """``with PrefectServer() as server: server.api_url``; ``server.client_env()`` for subprocesses."""

    def __init__(
        self,
        *,
        database: str = "postgres",
        home: Path | None = None,
        startup_timeout_s: float = 180,
        event_flush_interval_s: float | None = None,
    ) -> None:
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.ui_url = f"http://127.0.0.1:{self.port}"
        self._owns_home = home is None
        self.home = home or Path(tempfile.mkdtemp(prefix="langfuse-rotate-prefect-"))
        self.database = database
        self.db_name: str | None = None
        self.startup_timeout_s = startup_timeout_s
        # How often the server writes the events it received (Prefect's default: every 5 s).
        self.event_flush_interval_s = event_flush_interval_s
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.home / "server.log"

    def _connection_url(self) -> str:
        if self.database == "sqlite":
            return f"sqlite+aiosqlite:///{self.home / 'prefect.db'}"
        if not postgres_available():
            raise PostgresUnavailable(f"PostgreSQL is not reachable at {PG_ADMIN_DSN} (LANGFUSE_ROTATE_TEST_PG)")
        self.db_name = f"langfuse_rotate_{uuid.uuid4().hex[:10]}"
        _psql(f"CREATE DATABASE {self.db_name}")
        return database_url(PG_ADMIN_DSN, self.db_name)

    def server_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_SERVER_DATABASE_CONNECTION_URL=self._connection_url(),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_API_URL=self.api_url,
            PREFECT_API_URL=self.api_url,
            PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE="prefect.server.concurrency.lease_storage.filesystem",
            PREFECT_LOGGING_LEVEL="WARNING",
        )
        if self.event_flush_interval_s is not None:
            env["PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL"] = str(self.event_flush_interval_s)
        return env

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in (base or dict(os.environ)).items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_API_URL=self.api_url,
            PREFECT_HOME=str(self.home / "client"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_LOGGING_LEVEL="INFO",
        )
        return env

    def start(self) -> PrefectServer:
        prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
        try:
            env = self.server_env()
        except PostgresUnavailable:
            self.stop()
            raise
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prefect server exited early; see {self.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"prefect server did not answer within {self.startup_timeout_s}s; see {self.log_path}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, 15)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(10)
        if self.db_name is not None:
            with contextlib.suppress(subprocess.CalledProcessError, OSError):
                _psql(f"DROP DATABASE IF EXISTS {self.db_name} WITH (FORCE)")
            self.db_name = None
        if self._owns_home:
            shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> PrefectServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
