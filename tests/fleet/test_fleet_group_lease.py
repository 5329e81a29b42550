"""A fleet's entry locks, a group at a time (``flows.fleet.group_lease``, docs/fleet-requests.md):
one lease over a group's Prefect slots, all or nothing, held until the group's last entry is done,
and released by the next run on this host when its holder died."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from connectors.prefect_api import PrefectApi
from devstack.prefect_server import PrefectServer
from flows.errors import RotationInProgressError
from flows.fleet.group_lease import GroupLeases, group_size
from flows.rotation.lock import entry_lock, lock_name, release_dead_groups
from tests.fixtures.prefect import slot_taken

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def api(prefect_server: PrefectServer) -> Iterator[PrefectApi]:
    client = PrefectApi(prefect_server.api_url)
    yield client
    client.close()


@pytest.fixture
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LANGFUSE_ROTATE_LOCK_DIR", str(tmp_path / "locks"))
    return tmp_path / "locks"


def _entries(api: PrefectApi, count: int) -> list[str]:
    """New entries whose lock limits exist (a server that has seen the fleet before)."""
    tag = uuid.uuid4().hex[:8]
    entries = [f"group-{tag}-{i}" for i in range(count)]
    api.create_lock_limits([lock_name(e) for e in entries])
    return entries


def test_one_lease_takes_every_slot_of_a_group_and_one_release_frees_them(api: PrefectApi) -> None:
    entries = _entries(api, 3)

    lease = api.acquire_all([lock_name(e) for e in entries], lease_s=60)

    assert lease is not None
    assert [slot_taken(api, e) for e in entries] == [True, True, True]
    api.release(lease.lease_id)
    assert [slot_taken(api, e) for e in entries] == [False, False, False]


def test_a_group_with_one_slot_taken_elsewhere_takes_none_of_them(api: PrefectApi) -> None:
    entries = _entries(api, 3)
    elsewhere = api.acquire(lock_name(entries[1]), lease_s=60, timeout_s=5)
    assert elsewhere is not None

    lease = api.acquire_all([lock_name(e) for e in entries], lease_s=60)

    assert lease is None
    assert [slot_taken(api, e) for e in entries] == [False, True, False]
    api.release(elsewhere.lease_id)


def test_a_group_is_taken_when_its_first_entry_needs_it_and_freed_when_its_last_is_done(
    api: PrefectApi, lock_dir: Path
) -> None:
    entries = _entries(api, 3)
    groups = GroupLeases(api, entries, size=3, lease_s=60)
    assert not slot_taken(api, entries[2]), "nothing is taken before an entry needs it"

    assert groups.holds(entries[0])

    assert [slot_taken(api, e) for e in entries] == [True, True, True], "the entries not started yet are held too"
    assert groups.holds(entries[2]), "the others find their slot held for them"
    groups.done(entries[0])
    groups.done(entries[1])
    assert slot_taken(api, entries[0]), "held until the group's last entry is done"
    groups.done(entries[2])
    assert [slot_taken(api, e) for e in entries] == [False, False, False]
    assert list((lock_dir / "groups").iterdir()) == [], "the group file goes with the lease"
    groups.close()


def test_entries_of_a_group_taken_elsewhere_each_take_their_own_slot(api: PrefectApi, lock_dir: Path) -> None:
    entries = _entries(api, 2)
    elsewhere = api.acquire(lock_name(entries[1]), lease_s=60, timeout_s=5)
    assert elsewhere is not None
    groups = GroupLeases(api, entries, size=2, lease_s=60)

    assert not groups.holds(entries[0])
    assert not groups.holds(entries[1])
    assert not slot_taken(api, entries[0]), "a group that cannot be taken whole is not taken at all"
    api.release(elsewhere.lease_id)
    groups.close()


def test_a_group_with_a_limit_not_created_yet_takes_nothing(api: PrefectApi) -> None:
    tag = uuid.uuid4().hex[:8]
    names = [lock_name(f"new-{tag}-{i}") for i in range(2)]
    api.create_lock_limits(names[:1])

    assert api.acquire_all(names, lease_s=60) is None
    assert not slot_taken(api, f"new-{tag}-0"), "the lease over the limit that exists was given back"


def test_on_a_servers_first_fleet_the_groups_limits_are_made_ahead_and_the_group_taken_whole(
    api: PrefectApi, lock_dir: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    entries = [f"new-{tag}-{i}" for i in range(2)]
    groups = GroupLeases(api, entries, size=2, lease_s=60)

    deadline = time.monotonic() + 10
    while api.missing_limits([lock_name(e) for e in entries]) and time.monotonic() < deadline:
        time.sleep(0.05)

    assert groups.holds(entries[0])
    assert slot_taken(api, entries[1])
    for e in entries:
        groups.done(e)
    groups.close()
    assert not slot_taken(api, entries[1])


def test_a_group_too_small_to_save_a_call_is_not_made() -> None:
    assert [group_size(c) for c in (1, 2, 3, 4, 6, 16, 64)] == [0, 0, 0, 2, 3, 8, 8]


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from connectors.prefect_api import PrefectApi
    from flows.fleet.group_lease import GroupLeases
    groups = GroupLeases(PrefectApi(sys.argv[1]), sys.argv[2:], size=len(sys.argv) - 2, lease_s=300)
    assert groups.holds(sys.argv[2])
    print("held", flush=True)
    time.sleep(600)
    """
)


def _killed_holder(prefect_server: PrefectServer, entries: list[str]) -> None:
    """A fleet process that takes a group's lease (300 s) and is killed (SIGKILL) holding it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, prefect_server.api_url, *entries],
        cwd=REPO,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()


def test_a_group_whose_holder_died_is_released_by_the_next_run_that_needs_one_of_its_slots(
    prefect_server: PrefectServer, api: PrefectApi, lock_dir: Path
) -> None:
    entries = _entries(api, 3)
    _killed_holder(prefect_server, entries)
    assert slot_taken(api, entries[2]), "its lease (300 s) outlives it"

    with entry_lock(entries[2], wait_s=0, lease_s=60, use_prefect=True):
        assert slot_taken(api, entries[2])
        assert not slot_taken(api, entries[0]), "the dead group's other slots are free again"

    assert not slot_taken(api, entries[2])
    assert list((lock_dir / "groups").iterdir()) == []


def test_a_live_groups_slot_is_refused_to_another_run_and_its_file_left_alone(api: PrefectApi, lock_dir: Path) -> None:
    entries = _entries(api, 2)
    groups = GroupLeases(api, entries, size=2, lease_s=60)
    assert groups.holds(entries[0])

    with pytest.raises(RotationInProgressError), entry_lock(entries[1], wait_s=0, lease_s=60, use_prefect=True):
        pass

    assert not release_dead_groups(api)
    assert len(list((lock_dir / "groups").glob("*.group"))) == 1
    groups.done(entries[0])
    groups.done(entries[1])
    groups.close()


def test_a_group_file_names_the_lease_and_its_entries_only(api: PrefectApi, lock_dir: Path) -> None:
    entries = _entries(api, 2)
    groups = GroupLeases(api, entries, size=2, lease_s=60)
    assert groups.holds(entries[0])

    (found,) = (lock_dir / "groups").glob("*.group")

    assert found.stat().st_mode & 0o077 == 0
    body = found.read_text()
    assert all(e in body for e in entries) and found.stem in body
    response = httpx.get(f"{api.api_url}/v2/concurrency_limits/{lock_name(entries[0])}", timeout=10)
    assert response.json()["active_slots"] == 1
    for e in entries:
        groups.done(e)
    groups.close()
