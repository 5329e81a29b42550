"""Building blocks of the configuration models (``flows.config.model`` and the store models in
``flows.config.stores``): the strict base model and the checked URL, path and mount types."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from connectors.urls import RedactedUrl

Url = Annotated[str, AfterValidator(RedactedUrl)]
"""A URL that may carry credentials (user-info, query token): its ``repr`` hides them."""


RESERVED_LAST_SEGMENT = "rotation-pending"
"""A rotation stages at ``<path>/rotation-pending`` (Vault): no configured path may end in it."""


def _store_path(value: str, *, what: str = "path", reserved_suffix: bool = True) -> str:
    """A store path or mount reaches exactly one place: no ``..``/``.``/empty segments, no leading
    ``/``, no ``%`` (percent-decoding could smuggle any of those in), no ``?``/``#`` (they would end
    the URL path), no whitespace or control characters."""
    if not value:
        raise ValueError(f"the {what} is empty")
    if value.startswith("/"):
        raise ValueError(f"the {what} must not start with '/'")
    for bad in ("%", "?", "#", "\\"):
        if bad in value:
            raise ValueError(f"the {what} must not contain {bad!r}")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"the {what} must not contain whitespace or control characters")
    segments = value.split("/")
    if "" in segments:
        raise ValueError(f"the {what} must not contain empty segments ('//' or a trailing '/')")
    if any(segment in (".", "..") for segment in segments):
        raise ValueError(f"the {what} must not contain '.' or '..' segments")
    if reserved_suffix and segments[-1] == RESERVED_LAST_SEGMENT:
        raise ValueError(f"the {what} must not end in '/{RESERVED_LAST_SEGMENT}' (the staging place of another path)")
    return value


def path_value_problem(value: str, *, what: str) -> str | None:
    """Why ``value`` (e.g. a Langfuse project's name) cannot be put into a store path as it is, or
    None: it must be one segment the path rules accept (no ``/``, not ``.``/``..``/empty, none of
    ``%?#\\``, no whitespace, not ``rotation-pending``). Never rewritten: a rewritten value could
    name another valid path."""
    if "/" in value:
        return f"the {what} must not contain '/'"
    if value in (".", "..", RESERVED_LAST_SEGMENT):
        return f"the {what} must not be {value!r}"
    try:
        _store_path(value, what=what)
    except ValueError as exc:
        return str(exc)
    return None


def _mount(value: str) -> str:
    return _store_path(value, what="mount", reserved_suffix=False)


StorePath = Annotated[str, AfterValidator(_store_path)]
Mount = Annotated[str, AfterValidator(_mount)]


class StrictModel(BaseModel):
    """A configuration section: unknown keys are errors, values are frozen, inputs stay out of errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)
