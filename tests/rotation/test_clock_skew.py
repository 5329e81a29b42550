"""Another host's clock never blocks containment, and a rotation time in the future is no fresh key.

A rotation on a worker whose clock runs ahead records a ``rotated_at`` in the future; the store's
metadata may also simply say ``2999-...`` (edited by hand, or by anyone allowed to write it).
Whether another run replaced the key while this one waited for the lock is decided by what the
store says (its current key and last rotation id before and after the wait), never by comparing
that time with this host's clock. A ``rotated_at`` more than ``flows.clock.MAX_CLOCK_SKEW_S``
ahead of this host's clock means the key's age is unknown: ``status`` says so, ``report`` finds
it (``key-overdue``), and a fleet run does not skip the entry. The tests write the time straight
into the real store's metadata (OpenBao ``custom_metadata``, moto tags).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flows.clock import MAX_CLOCK_SKEW_S
from flows.config.model import load_config
from flows.fleet.run import run_fleet
from flows.rotation.entry_run import execute
from flows.rotation.runners import DirectRunner
from tests.fixtures.inventory import InventoryEnv
from tests.fixtures.rotation import ENTRY, RotationEnv

YEAR_2999 = "2999-01-01T00:00:00+00:00"


def ten_minutes_ahead() -> str:
    return (datetime.now(UTC) + timedelta(minutes=10)).isoformat()


def recorded_in_the_future(env: RotationEnv, rotated_at: str) -> None:
    """The store says the entry's key was rotated at ``rotated_at`` by a run of its own."""
    env.store.external_metadata(
        env.location, {"rotated_at": rotated_at, "rotation_id": "rotation-on-a-fast-clock", "mode": "scheduled"}
    )


@pytest.mark.parametrize("when", ["ten minutes ahead", "year 2999"])
def test_an_emergency_right_after_a_rotation_dated_in_the_future_contains_the_key(
    rotation_env: RotationEnv, when: str
) -> None:
    env = rotation_env
    assert execute("rotate", ENTRY, str(env.write_config()), DirectRunner()).status == "rotated"
    leaked = env.current()
    recorded_in_the_future(env, ten_minutes_ahead() if when == "ten minutes ahead" else YEAR_2999)

    result = execute("emergency", ENTRY, str(env.write_config()), DirectRunner())

    assert result.status == "contained", result.error
    assert not env.works(leaked), "the leaked key gets 401"


def test_a_rotation_of_a_key_dated_in_the_future_goes_ahead(rotation_env: RotationEnv) -> None:
    env = rotation_env
    old = env.current()
    recorded_in_the_future(env, YEAR_2999)

    result = execute("rotate", ENTRY, str(env.write_config()), DirectRunner())

    assert result.status == "rotated", result.error
    assert not env.works(old) and env.current().public_key != old.public_key


def test_a_fleet_run_does_not_skip_a_key_dated_in_the_future(rotation_env: RotationEnv) -> None:
    env = rotation_env
    old = env.current()
    recorded_in_the_future(env, YEAR_2999)

    fleet = run_fleet(load_config(env.write_config()), config_path=None)

    assert fleet.counts == {"rotated": 1}, fleet.entries
    assert env.current().public_key != old.public_key


def test_a_rotation_recorded_within_the_clock_skew_still_counts_for_the_fleets_skip(rotation_env: RotationEnv) -> None:
    env = rotation_env
    old = env.current()
    recorded_in_the_future(env, (datetime.now(UTC) + timedelta(seconds=MAX_CLOCK_SKEW_S / 2)).isoformat())

    fleet = run_fleet(load_config(env.write_config()), config_path=None)

    assert fleet.counts == {"skipped": 1}, fleet.entries
    assert env.current().public_key == old.public_key


def test_status_says_the_age_of_a_key_dated_in_the_future_is_unknown(inventory_env: InventoryEnv) -> None:
    recorded_in_the_future(inventory_env.rot, YEAR_2999)

    code, data, _ = inventory_env.run("status", "--project", ENTRY)

    assert code == 0
    [entry] = data["entries"]
    assert entry["age_days"] is None and entry["age_source"] is None
    assert "in the future" in entry["age_unknown"] and "2999" in entry["age_unknown"]


def test_report_finds_a_key_dated_in_the_future_as_overdue(inventory_env: InventoryEnv) -> None:
    recorded_in_the_future(inventory_env.rot, YEAR_2999)

    code, data = inventory_env.report()

    assert code == 4
    [finding] = [f for f in data["findings"] if f["entry"] == ENTRY]
    assert finding["rule"] == "key-overdue" and finding["severity"] == "high"
    assert "age unknown" in finding["detail"] and "2999" in finding["detail"]
    assert finding["public_key"] == inventory_env.current().public_key
