"""``python -m flows.cli`` runs the same command line as the installed ``langfuse-rotate``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_python_dash_m_flows_cli_prints_the_usage() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("usage: langfuse-rotate")
