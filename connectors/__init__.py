"""Thin typed clients: Langfuse, secret stores, consumers, notifications. No Prefect imports."""
