"""The scheduled checklist, run in-process without Prefect, against the real local stack."""

from __future__ import annotations

import pytest

import flows.config.model
import flows.rotation.handover
from flows.rotation.entry_run import execute
from flows.rotation.runners import DirectRunner
from tests.fixtures.calls import recorded_calls
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
    parsed = recorded_calls(monkeypatch, flows.config.model, "parse_config", lambda text, source="<config>": source)

    result = execute("rotate", ENTRY, str(rotation_env.write_config()), DirectRunner())

    assert result.status == "rotated", result.error
    assert len(parsed) == 1, parsed


def test_a_rotation_reads_the_entry_state_only_where_a_decision_needs_it_afresh(
    rotation_env: RotationEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the lock (to notice a rotation finished meanwhile), once the lock is held (the plan
    and the handover watch start from it), and in reconcile (which deletes keys: never on an old
    answer). Between steps, the handover request is asked for at most every ``STEP_CHECK_S``."""
    store_class = type(rotation_env.store.store)
    described = recorded_calls(monkeypatch, store_class, "describe", lambda store, loc: loc.path)
    asked = recorded_calls(monkeypatch, store_class, "read_handover", lambda store, loc: loc.path)
    monkeypatch.setattr(flows.rotation.handover, "STEP_CHECK_S", 3600.0)
    monkeypatch.setattr(flows.rotation.handover, "POLL_S", 3600.0)  # a slow box's waits must not look either

    result = execute("rotate", ENTRY, str(rotation_env.write_config()), DirectRunner())

    assert result.status == "rotated", result.error
    assert len(described) == 3, described
    assert asked == []
