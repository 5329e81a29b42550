"""Shared fixtures. Each real server starts once per test session; state is reset per test.

Fixture modules (one per part of the local stack) live in tests/fixtures/ and are loaded here.
"""

pytest_plugins = [
    "tests.fixtures.langfuse_sim",
    "tests.fixtures.stores",
    "tests.fixtures.devstack",
    "tests.fixtures.prefect",
    "tests.fixtures.rotation",
]
