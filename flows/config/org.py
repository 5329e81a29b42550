"""The organization key, read from where the configuration says it is (README "Configuration")."""

from __future__ import annotations

from pydantic import SecretStr

from connectors.store import SecretStore
from flows.config.model import RotationConfig
from flows.redact import register_secret


def org_key(config: RotationConfig, stores: dict[str, SecretStore]) -> tuple[str, SecretStr]:
    """The organization key: inline (env-interpolated) or read from a store."""
    lf = config.langfuse
    if lf.org_key is not None:
        pair = stores[lf.org_key.store].read_current(lf.org_key.location())
        register_secret(pair.secret_key)
        return pair.public_key, pair.secret_key
    assert lf.org_public_key is not None and lf.org_secret_key is not None
    register_secret(lf.org_secret_key)
    return lf.org_public_key, lf.org_secret_key
