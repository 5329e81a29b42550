"""A Langfuse key pair whose secret half never prints."""

from __future__ import annotations

import re
import uuid

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator

PUBLIC_KEY_PATTERN = re.compile(r"pk-lf-[A-Za-z0-9-]{1,200}")
"""What a public key looks like when shown or taken from outside: ``pk-lf-`` and letters, digits
and dashes (Langfuse's own are ``pk-lf-<uuid4>``)."""


def is_public_key(value: object) -> bool:
    """Whether ``value`` is a public key as ``PUBLIC_KEY_PATTERN`` says (the whole string)."""
    return isinstance(value, str) and PUBLIC_KEY_PATTERN.fullmatch(value) is not None


class KeyPair(BaseModel):
    """A public key and its secret. ``repr``/``str`` show the secret as ``**********``."""

    model_config = ConfigDict(frozen=True)

    public_key: str
    secret_key: SecretStr

    @field_validator("public_key")
    @classmethod
    def _public_key_prefix(cls, value: str) -> str:
        if not value.startswith("pk-lf-"):
            raise ValueError("public key must start with 'pk-lf-'")
        return value

    @field_validator("secret_key")
    @classmethod
    def _secret_key_prefix(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith("sk-lf-"):
            raise ValueError("secret key must start with 'sk-lf-'")
        return value

    @classmethod
    def generate(cls) -> KeyPair:
        """A fresh pair in Langfuse's own format (``pk-lf-<uuid4>`` / ``sk-lf-<uuid4>``)."""
        return cls(public_key=f"pk-lf-{uuid.uuid4()}", secret_key=SecretStr(f"sk-lf-{uuid.uuid4()}"))

    @property
    def display_secret_key(self) -> str:
        """Langfuse's ``displaySecretKey``: first 6 and last 4 characters; safe to show."""
        raw = self.secret_key.get_secret_value()
        return f"{raw[:6]}...{raw[-4:]}"
