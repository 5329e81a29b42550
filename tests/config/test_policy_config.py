"""The ``policy`` section: defaults, the example's values, and one-line errors naming the field."""

from __future__ import annotations

import re

import pytest

from flows.config.model import load_config, parse_config
from flows.errors import ConfigError
from tests.config.test_config import EXAMPLE, MINIMAL, env  # noqa: F401  (env: the autouse variables)


def test_without_a_policy_section_the_defaults_apply() -> None:
    policy = parse_config(MINIMAL).policy
    assert (policy.max_key_age_days, policy.warn_days, policy.max_pending_hours) == (90, 14, 24)
    assert policy.access is None  # memberships are not checked unless asked for


def test_the_example_configuration_shows_a_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in set(re.findall(r"\$\{([A-Z_]+)", EXAMPLE.read_text())):  # whatever variables it names
        monkeypatch.setenv(name, "pk-lf-x" if "PUBLIC" in name else "value")
    policy = load_config(EXAMPLE).policy
    assert policy.access is not None
    assert (policy.access.default_role, policy.access.max_owners) == ("VIEWER", 2)
    assert policy.access.projects["cm0abc123project"].max_owners == 1


def test_the_contract_policy_parses() -> None:
    text = MINIMAL + (
        "policy:\n  max_key_age_days: 90\n  warn_days: 14\n  max_pending_hours: 24\n  access:\n"
        "    default_role: VIEWER\n    max_owners: 2\n    owners: [engineering-lead@acme.com]\n"
        "    admins: [senior-dev@acme.com]\n    members: []\n"
    )
    access = parse_config(text).policy.access
    assert access is not None and access.owners == ["engineering-lead@acme.com"]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("  max_key_age_days: 0\n", "policy.max_key_age_days: Input should be greater than 0"),
        ("  warn_days: 90\n", "policy: warn_days must be smaller than max_key_age_days"),
        ("  access: {default_role: GUEST}\n", "policy.access.default_role: Input should be"),
        ("  access: {owner: [a@b.c]}\n", "policy.access.owner: unknown key"),
    ],
)
def test_a_bad_policy_is_one_line_naming_the_field(policy: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(MINIMAL + "policy:\n" + policy, source="rotation.yaml")
    assert expected in str(caught.value) and "rotation.yaml:" in str(caught.value)
