"""Failures that nobody hears about (issue 13): every failed run notifies, once; the reconcile flow
ends Failed when an entry failed; cancelled runs notify. Against the real Prefect server."""

from __future__ import annotations

from typing import Any

import pytest

from devstack.prefect_server import PrefectServer, free_port
from tests.fixtures.rotation import ENTRY, RotationEnv

vault_only = pytest.mark.parametrize("any_store", ["vault"], indirect=True)


def org_key_in_a_dead_store(env: RotationEnv) -> None:
    broken = env.store.config() | {"url": f"http://127.0.0.1:{free_port()}", "timeout_s": 1}
    langfuse = {k: v for k, v in env.config_dict()["langfuse"].items() if not k.startswith("org_")}
    env.top_overrides = {
        "stores": {"main": env.store.config(), "broken": broken},
        "langfuse": langfuse | {"org_key": {"store": "broken", "path": "langfuse/org"}},
    }


@vault_only
def test_a_setup_failure_under_prefect_fails_the_run_and_notifies_exactly_once(
    rotation_env: RotationEnv, prefect_server: PrefectServer
) -> None:
    from flows.rotate import rotate

    org_key_in_a_dead_store(rotation_env)

    state: Any = rotate(project=ENTRY, config_path=str(rotation_env.write_config()), return_state=True)

    assert state.is_failed() and (state.message or "").startswith("failed: setup:")
    # The run and its hooks sent what they sent before the call returned.
    (note,) = rotation_env.sink.received()
    assert note.json["type"] == "failure" and "setup" in note.json["message"]


@vault_only
def test_the_reconcile_flow_fails_when_an_entry_could_not_be_reconciled(
    rotation_env: RotationEnv, prefect_server: PrefectServer
) -> None:
    from flows.reconcile import reconcile

    rotation_env.extra_entries = [
        {"name": "no-secret", "project_id": rotation_env.project.id, "store": "main", "path": "langfuse/none-here"}
    ]

    state: Any = reconcile(config_path=str(rotation_env.write_config()), return_state=True)

    assert state.is_failed()
    assert (state.message or "").startswith("failed: 1 of 2 entries not reconciled: no-secret failed")


def every_flow() -> dict[str, Any]:
    """Every flow a deployment runs, by name, with the parameters it needs besides ``config_path``."""
    from flows.emergency import emergency
    from flows.reconcile import reconcile
    from flows.report_flow import compliance_report
    from flows.rotate import rotate, rotate_all

    return {
        "rotate": (rotate, {"project": ENTRY}),
        "rotate_all": (rotate_all, {}),
        "emergency": (emergency, {"project": ENTRY}),
        "reconcile": (reconcile, {}),
        "compliance_report": (compliance_report, {}),
    }


def test_every_flow_has_the_notifying_hook_for_failure_crash_and_cancellation() -> None:
    from flows.prefect.hooks import notify_unhandled_failure

    for flow, _ in every_flow().values():
        for hooks in (flow.on_failure_hooks, flow.on_crashed_hooks, flow.on_cancellation_hooks):
            assert notify_unhandled_failure in hooks, flow.name


@pytest.mark.parametrize("name", list(every_flow()))
def test_every_flow_run_to_failure_notifies_exactly_once(
    name: str, prefect_server: PrefectServer, json_sink: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """The configuration is missing where the run looks for it (as on a worker set up wrong): the
    run fails, and the worker's ``LANGFUSE_ROTATE_NOTIFY_URLS`` hears about it once. Cancellation is
    run for every flow in tests/scenarios/test_distributed.py (it takes a worker)."""
    monkeypatch.setenv("LANGFUSE_ROTATE_NOTIFY_URLS", json_sink.apprise_url("/hook"))
    monkeypatch.delenv("LANGFUSE_ROTATE_CONFIG", raising=False)
    flow, parameters = every_flow()[name]

    state: Any = flow(config_path=str(tmp_path / "absent.yaml"), **parameters, return_state=True)

    assert state.is_failed(), (state.name, state.message)
    assert "cannot read configuration" in (state.message or "")
    # The hooks run before the flow call returns: what the sink holds now is all there is.
    (note,) = json_sink.received()
    assert note.json["type"] == "failure" and "cannot read configuration" in note.json["message"]


def test_a_cancelled_run_is_notified_with_a_link_to_the_run(json_sink: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from flows.prefect.hooks import notify_unhandled_failure

    monkeypatch.setenv("LANGFUSE_ROTATE_NOTIFY_URLS", json_sink.apprise_url("/hook"))
    monkeypatch.delenv("LANGFUSE_ROTATE_CONFIG", raising=False)
    from prefect.settings import PREFECT_UI_URL, temporary_settings

    run = SimpleNamespace(id="1b2c", name="rotate-x-20261129-2000", parameters={"project": "x"})
    state = SimpleNamespace(name="Cancelled", message="Cancelled by a person")

    with temporary_settings(updates={PREFECT_UI_URL: "http://prefect.example:4200"}):
        notify_unhandled_failure(SimpleNamespace(name="langfuse-key-rotation"), run, state)

    (note,) = json_sink.wait_for(1, timeout_s=10)
    assert note.json["type"] == "failure" and "Cancelled" in note.json["title"]
    assert "http://prefect.example:4200/runs/flow-run/1b2c" in note.json["message"]
    assert "resource: langfuse.project.x" in note.json["message"]
