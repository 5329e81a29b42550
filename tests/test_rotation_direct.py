"""The scheduled checklist, run in-process without Prefect, against the real local stack."""

from __future__ import annotations

import pytest

import flows.config
from flows.entry_run import execute
from flows.step_runners import DirectRunner
from tests.fixtures.rotation import ENTRY, RotationEnv


def test_rotation_replaces_the_stored_pair_and_revokes_the_old_one(rotation_env: RotationEnv) -> None:
    old = rotation_env.current()
    config = rotation_env.write_config()

    result = execute("rotate", ENTRY, str(config), DirectRunner())

    assert result.status == "rotated", result.error
    new = rotation_env.current()
    assert new.public_key == result.new_public_key != old.public_key
    assert rotation_env.works(new)
    assert not rotation_env.works(old)
    assert result.verified and result.old_key_rejected is True


def test_a_run_reads_its_configuration_once(rotation_env: RotationEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []
    parse = flows.config.parse_config

    def counting(text: str, *, source: str = "<config>") -> flows.config.RotationConfig:
        parsed.append(source)
        return parse(text, source=source)

    monkeypatch.setattr(flows.config, "parse_config", counting)

    result = execute("rotate", ENTRY, str(rotation_env.write_config()), DirectRunner())

    assert result.status == "rotated", result.error
    assert len(parsed) == 1, parsed
