"""The rotation flow on a Prefect server: what the server records of it.

Operators find a rotation's steps in the UI by their names; these are part of the contract
(README), whatever the functions behind them are called.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest

import flows.config.model
from devstack.prefect_server import PrefectServer
from tests.fixtures.calls import recorded_calls
from tests.fixtures.replicas import Replicas, traced_consumer
from tests.fixtures.rotation import ENTRY, RotationEnv


def rotate_on_prefect(env: RotationEnv) -> Any:
    from flows.rotate import rotate

    return rotate(project=ENTRY, config_path=str(env.write_config()), return_state=True)


def task_run_names(flow_run_id: UUID) -> list[str]:
    """The flow run's task runs, oldest first, by the name of their task (Prefect suffixes each
    task run's name with a counter: ``create-0`` is a run of ``create``)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
        )
    return [run.name.rsplit("-", 1)[0] for run in runs]


def test_a_rotations_task_runs_are_its_seven_checklist_steps_in_order(
    rotation_env: RotationEnv, prefect_server: PrefectServer
) -> None:
    state = rotate_on_prefect(rotation_env)

    assert state.is_completed(), state.message
    names = task_run_names(state.state_details.flow_run_id)
    assert names == ["reconcile", "create", "store", "wait_for_restarts", "verify", "revoke", "finish"]


def test_a_rotation_on_prefect_reads_its_configuration_once(
    rotation_env: RotationEnv, prefect_server: PrefectServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed = recorded_calls(monkeypatch, flows.config.model, "parse_config", lambda text, source="<config>": source)

    state = rotate_on_prefect(rotation_env)

    assert state.is_completed(), state.message
    assert len(parsed) == 1, parsed


@pytest.mark.slow
@pytest.mark.parametrize("any_store", ["vault"], indirect=True)
def test_an_emergency_on_prefect_checks_ingestion_after_the_revoke_as_a_task_and_names_the_silent_service(
    rotation_env: RotationEnv, prefect_server: PrefectServer, replicas: Replicas
) -> None:
    """The after-revoke check runs under Prefect too (its own task run, the run's message): a service
    that ignores its restart stays on the revoked key and goes silent; the run ends needing attention."""
    from flows.emergency import emergency

    leaked = rotation_env.current()
    batch = replicas.start(1, ignore_restart=True, environment="batch").sending()
    consumer = traced_consumer(batch.restart_command(), "none", after_revoke_s=4, match={"environment": "batch"})
    rotation_env.consumers = [consumer | {"name": "batch"}]
    rotation_env.entry_overrides = {"grace_period_s": 1}

    state: Any = emergency(
        project=ENTRY, config_path=str(rotation_env.write_config()), public_key=leaked.public_key, return_state=True
    )

    assert not rotation_env.works(leaked)
    assert state.name == "NeedsAttention" and "batch" in (state.message or ""), state.message
    assert task_run_names(state.state_details.flow_run_id)[-2:] == ["finish", "check_ingestion"]
