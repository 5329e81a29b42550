"""Run history as a person reads it: headless Chromium (Debian's ``/usr/bin/chromium``, driven by
Playwright; never a downloaded browser) on the Prefect UI of the session's real server, after a
real rotation. Screenshots land in ``test-output/test_ui/`` (gitignored) for a human to look at.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.prefect_server import PrefectServer
from tests.fixtures.rotation import ENTRY, RotationEnv

CHROMIUM = Path("/usr/bin/chromium")
# Flags that work on this machine's closed network (no background connections, no sandbox as root).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "test-output" / "test_ui"
UI_TIMEOUT_MS = 60_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
    ),
    pytest.mark.parametrize("any_store", ["vault"], indirect=True),
]


@pytest.fixture
def browser_page() -> Iterator[Any]:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=UI_TIMEOUT_MS)
    profile = tempfile.mkdtemp(prefix="langfuse-rotate-chromium-")  # a new, empty --user-data-dir
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_FLAGS,
                viewport={"width": 1400, "height": 1000},
            )
            context.set_default_timeout(UI_TIMEOUT_MS)
            try:
                yield context.new_page()
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def screenshots(request: pytest.FixtureRequest) -> Path:
    folder = OUTPUT / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def test_a_completed_rotation_shows_its_name_tags_and_step_table_in_the_prefect_ui(
    rotation_env: RotationEnv, prefect_server: PrefectServer, browser_page: Any, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    rotation_env.prefect_env = prefect_server.client_env(rotation_env.env)
    proc = rotation_env.cli("rotate", "--config", str(rotation_env.write_config()), "--project", ENTRY, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    run_name = _flow_run_name(result["prefect_flow_run_id"])
    page = browser_page

    page.goto(f"{prefect_server.ui_url}/runs/flow-run/{result['prefect_flow_run_id']}")

    expect(page.get_by_text(run_name, exact=True).first).to_be_visible()
    expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
    expect(page.get_by_text(f"project:{ENTRY}").first).to_be_visible()
    page.get_by_text("Artifacts", exact=True).first.click()
    card = page.get_by_text(f"langfuse-rotation-{ENTRY}", exact=True).first
    expect(card).to_be_visible()
    page.screenshot(path=str(screenshots / "flow-run-artifacts-tab.png"), full_page=True)
    card.click()
    steps = page.locator("table").filter(has=page.get_by_role("columnheader", name="outcome"))
    expect(steps.get_by_role("columnheader", name="step")).to_be_visible()
    for step in ("create", "store", "verify", "revoke"):
        expect(steps.get_by_role("cell", name=step, exact=True)).to_be_visible()
    expect(page.get_by_role("cell", name=result["new_public_key"], exact=True)).to_be_visible()
    page.screenshot(path=str(screenshots / "rotation-artifact.png"), full_page=True)


def _flow_run_name(flow_run_id: str) -> str:
    from uuid import UUID

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        name: str = client.read_flow_run(UUID(flow_run_id)).name
    assert re.fullmatch(rf"rotate-{ENTRY}-\d{{8}}-\d{{4}}", name)
    return name


def test_a_person_approves_a_paused_rotation_with_the_resume_form_in_the_prefect_ui(
    rotation_env: RotationEnv, prefect_server: PrefectServer, browser_page: Any, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    rotation_env.prefect_env = prefect_server.client_env(rotation_env.env)
    rotation_env.entry_overrides = {"approval": "required", "approval_timeout_s": 600}
    config_path = str(rotation_env.write_config())
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli.main", "rotate", "--config", config_path, "--project", ENTRY, "--json"],
        env=rotation_env.prefect_env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        run_id = _paused_run_id(config_path, proc)
        new_public_key = rotation_env.store.store.describe(rotation_env.location).pending.new_public_key  # type: ignore[union-attr]
        page = browser_page
        page.goto(f"{prefect_server.ui_url}/runs/flow-run/{run_id}")

        page.get_by_role("button", name="Resume").click()
        form = page.get_by_role("dialog")
        expect(form.get_by_text(new_public_key)).to_be_visible()  # the plan is shown above the form
        expect(form.get_by_text(rotation_env.path)).to_be_visible()
        form.get_by_role("switch").click()
        form.locator(".schema-form-property").filter(has_text="Approver").locator("textarea").fill("ui-approver")
        form.locator(".schema-form-property").filter(has_text="Reason").locator("textarea").fill("change 42")
        page.screenshot(path=str(screenshots / "resume-form.png"), full_page=True)
        form.get_by_role("button", name="Submit").click()

        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out + err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == "rotated"
    assert rotation_env.current().public_key == new_public_key
    approval = next(s for s in result["steps"] if s["step"] == "approval")
    assert approval["detail"] == "approved by ui-approver: change 42"


def _paused_run_id(config_path: str, proc: subprocess.Popen[str]) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    with get_client(sync_client=True) as client:
        for _ in range(240):
            for run in client.read_flow_runs(flow_run_filter=paused):
                if run.parameters.get("config_path") == config_path:
                    return str(run.id)
            assert proc.poll() is None, "the rotation ended without pausing"
            time.sleep(0.5)
    raise AssertionError("the rotation did not pause")
