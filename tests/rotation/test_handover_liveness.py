"""Whether a handover request comes from a live emergency run, asked of a real Prefect server.

A request whose time cannot be believed (another host's clock, or written by hand) still counts
when the flow run it names is an emergency run of the entry (tags ``mode:emergency`` and
``project:<entry>``, as every emergency run is tagged before it asks) that is RUNNING, PENDING or
PAUSED, read over Prefect's REST API (``flows.rotation.handover.PrefectRunCheck``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from connectors.keypair import KeyPair
from connectors.prefect_api import PrefectApi
from connectors.store import HandoverRequest, SecretLocation
from devstack.prefect_server import PrefectServer
from flows.errors import Superseded
from flows.rotation.handover import HandoverWatch, PrefectRunCheck
from tests.fakes import MemoryStore

pytestmark = pytest.mark.slow

ENTRY = "watched"
LOCATION = SecretLocation(path="langfuse/watched")
EMERGENCY_TAGS = ["langfuse-key-rotation", "mode:emergency", f"project:{ENTRY}"]


@pytest.fixture
def api(prefect_server: PrefectServer) -> Iterator[PrefectApi]:
    rest = PrefectApi(prefect_server.api_url)
    yield rest
    rest.close()


def flow_run(api: PrefectApi, tags: list[str], state: str, flow: str = "langfuse-key-emergency") -> str:
    return api.create_flow_run(
        api.flow_id(flow),
        name=f"emergency-{ENTRY}-{uuid.uuid4().hex[:8]}",
        tags=tags,
        parameters={},
        state={"type": state, "name": state.title()},
    )


@pytest.mark.parametrize(
    ("tags", "state", "live"),
    [
        (EMERGENCY_TAGS, "RUNNING", True),
        (EMERGENCY_TAGS, "PAUSED", True),
        (EMERGENCY_TAGS, "COMPLETED", False),
        (EMERGENCY_TAGS, "CRASHED", False),
        (["mode:scheduled", f"project:{ENTRY}"], "RUNNING", False),
        (["mode:emergency", "project:another-entry"], "RUNNING", False),
    ],
    ids=["running", "paused", "completed", "crashed", "a-scheduled-run", "another-entrys-emergency"],
)
def test_a_flow_run_counts_as_a_live_emergency_only_while_it_runs_as_one_of_this_entry(
    api: PrefectApi, tags: list[str], state: str, live: bool
) -> None:
    run_id = flow_run(api, tags, state)

    answer, why = PrefectRunCheck(ENTRY, api)(run_id)

    assert answer is live and run_id in why, why


def test_an_unknown_or_malformed_flow_run_id_is_not_live(api: PrefectApi) -> None:
    unknown = str(uuid.uuid4())
    assert PrefectRunCheck(ENTRY, api)(unknown) == (False, f"flow run {unknown} not found")
    live, why = PrefectRunCheck(ENTRY, api)("../../admin/settings")
    assert not live and "no flow run id" in why


def test_a_stale_request_of_a_running_emergency_run_is_obeyed_and_of_a_finished_one_ignored(
    api: PrefectApi, prefect_server: PrefectServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch asks the server the environment names (``PREFECT_API_URL``), as a worker does."""
    monkeypatch.setenv("PREFECT_API_URL", prefect_server.api_url)
    store = MemoryStore()
    store.seed(LOCATION, KeyPair(public_key="pk-lf-watched", secret_key=SecretStr("sk-lf-watched")), "http://lf")
    running, finished = flow_run(api, EMERGENCY_TAGS, "RUNNING"), flow_run(api, EMERGENCY_TAGS, "COMPLETED")
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)

    def ask(flow_run_id: str) -> None:
        request = HandoverRequest(
            emergency_run=f"run {flow_run_id}",
            nonce=uuid.uuid4().hex,
            requested_at=an_hour_ago,
            flow_run_id=flow_run_id,
        )
        store.request_handover(LOCATION, request)

    watch = HandoverWatch(store, LOCATION, entry=ENTRY)
    try:
        watch.arm()
        ask(finished)
        watch.check()
        ask(running)
        with pytest.raises(Superseded, match=running):
            watch.check()
    finally:
        watch.close()

    assert watch.obeyed_because is not None and f"{running} is a RUNNING emergency run" in watch.obeyed_because
    [note] = watch.ignored()
    assert finished in note and "COMPLETED" in note
