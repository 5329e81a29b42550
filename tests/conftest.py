"""Shared fixtures. Each real server starts once per test session; state is reset per test.

Fixture modules (one per part of the local stack) live in tests/fixtures/ and are loaded here.
"""

import pytest

from devstack.prefect_server import PG_ADMIN_DSN, postgres_available

pytest_plugins = [
    "tests.isolation",  # first: the session's own HOME, state and Prefect home before anything else runs
    "tests.fixtures.langfuse_sim",
    "tests.fixtures.stores",
    "tests.fixtures.devstack",
    "tests.fixtures.prefect",
    "tests.fixtures.rotation",
    "tests.fixtures.inventory",
    "tests.fixtures.replicas",
]


def pytest_report_header(config: pytest.Config) -> str:
    """Say up front what the Prefect-server tests run on. Without PostgreSQL they are skipped, each
    with the reason (``LANGFUSE_ROTATE_REQUIRE_POSTGRES=1`` makes that a failure); never SQLite."""
    if postgres_available():
        return f"prefect server tests: PostgreSQL ({PG_ADMIN_DSN})"
    return f"prefect server tests: SKIPPED, PostgreSQL not reachable at {PG_ADMIN_DSN}"
