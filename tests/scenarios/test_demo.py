"""``langfuse-rotate demo`` completes a rotation on the embedded local stack, for both stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from devstack.prefect_server import PrefectServer


@pytest.mark.slow
@pytest.mark.parametrize("store", ["vault", "aws"])
def test_demo_rotates_and_stops_everything(store: str, prefect_server: PrefectServer, tmp_path: object) -> None:
    env = prefect_server.client_env(dict(os.environ))
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli.main", "demo", "--store", store, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == "rotated"
    assert result["verified"] is True and result["old_key_rejected"] is True
    assert proc.stdout.count("\n") == 1, "with --json, stdout holds only the JSON object"
    assert f"consumer 'api' now reports {result['new_public_key']} (all 3 replicas)" in proc.stderr
    evidence = "evidence before revoke: api: 3 replicas sent with the new key, none with the old one for 5 s"
    assert evidence in proc.stderr
    assert "after revoke: api sending (trace at " in proc.stderr
    assert "notification received: [success]" in proc.stderr
    assert "sk-lf-" not in proc.stderr.replace("sk-lf-...", "")
