"""The tests' Prefect server (devstack/prefect_server.py) keeps its database on the PostgreSQL that
``LANGFUSE_ROTATE_TEST_PG`` names (docs/development.md), not on a fixed address."""

from __future__ import annotations

from devstack.prefect_server import database_url


def test_the_servers_database_is_on_the_postgresql_the_admin_dsn_names() -> None:
    url = database_url("postgresql://rotator:s3cret@db.internal:6543/postgres", "langfuse_rotate_abc")

    assert url == "postgresql+asyncpg://rotator:s3cret@db.internal:6543/langfuse_rotate_abc"


def test_the_default_dsn_gives_the_local_postgresql() -> None:
    url = database_url("postgresql://postgres@127.0.0.1:5432/postgres", "langfuse_rotate_abc")

    assert url == "postgresql+asyncpg://postgres@127.0.0.1:5432/langfuse_rotate_abc"
