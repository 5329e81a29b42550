"""Run history as a person reads it: headless Chromium (Debian's ``/usr/bin/chromium``, driven by
Playwright; never a downloaded browser) on the Prefect UI of the session's real server, after a
real rotation. Screenshots land in ``test-output/test_ui/`` (gitignored) for a human to look at.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
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
OUTPUT = Path(__file__).resolve().parents[1] / "test-output" / "test_ui"
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
