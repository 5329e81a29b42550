"""``deployments/prefect.yaml`` as Prefect users expect it (issue 13): schedules that never fall in a
daylight-saving gap or overlap, entrypoints that do not depend on the worker's directory."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

SPEC = yaml.safe_load((Path(__file__).resolve().parents[2] / "deployments" / "prefect.yaml").read_text())


def schedules() -> list[tuple[str, dict[str, Any]]]:
    return [(d["name"], s) for d in SPEC["deployments"] for s in d.get("schedules", [])]


def _times(cron: str) -> list[tuple[int, int]]:
    minute, hour = cron.split()[:2]
    return [(int(h), int(m)) for h in hour.split(",") for m in minute.split(",")]


def test_no_schedule_falls_in_a_daylight_saving_gap_or_overlap() -> None:
    assert schedules()
    for name, schedule in schedules():
        zone = ZoneInfo(schedule["timezone"])
        for hour, minute in _times(schedule["cron"]):
            day = date(2026, 1, 1)
            while day < date(2031, 1, 1):
                local = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
                earlier, later = local.replace(fold=0), local.replace(fold=1)
                assert earlier.utcoffset() == later.utcoffset(), f"{name} {hour:02}:{minute:02} repeats on {day}"
                round_trip = local.astimezone(ZoneInfo("UTC")).astimezone(zone)
                assert (round_trip.hour, round_trip.minute) == (hour, minute), f"{name} skipped on {day}"
                day += timedelta(days=1)


def test_entrypoints_are_modules_of_the_installed_package_not_paths_in_a_checkout() -> None:
    for deployment in SPEC["deployments"]:
        module, _, function = deployment["entrypoint"].partition(":")
        assert not module.endswith(".py") and module.startswith("flows.") and function
    assert SPEC["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "."}}]
    assert "LANGFUSE_ROTATE_HOME" not in yaml.safe_dump(SPEC)


def test_fleet_batches_have_their_own_work_queue_and_everything_else_stays_on_the_default_queue() -> None:
    """docs/fleet.md "Spread over workers": the batch workers (``--limit 1``) poll only ``fleet-batch``, so
    the quarterly run, which waits for its batches, and emergencies never take one of their slots."""
    queues = {d["name"]: d["work_pool"].get("work_queue_name", "default") for d in SPEC["deployments"]}
    assert queues.pop("fleet-batch") == "fleet-batch"
    assert set(queues.values()) == {"default"}
