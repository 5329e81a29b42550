"""`python -m devstack.langfuse_sim --port PORT [...]`: print one JSON line, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from types import FrameType

from devstack.langfuse_sim.server import Simulator


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devstack.langfuse_sim", description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="TCP port; 0 picks a free one")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--projects", type=int, default=1, help="projects to bootstrap (first start only)")
    parser.add_argument("--state", default=None, help="JSON state file (hashes only); see store.py")
    parser.add_argument("--admin-api-key", default=None, help="ADMIN_API_KEY for /api/admin/*")
    parser.add_argument("--version", default="4.16.0", help="server version reported by /api/public/health")
    args = parser.parse_args(argv)
    if args.projects < 0:
        parser.error("--projects must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    sim = Simulator(
        projects=args.projects,
        admin_api_key=args.admin_api_key,
        host=args.host,
        port=args.port,
        state_file=args.state,
        version=args.version,
    )
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    sim.start()
    sys.stdout.write(json.dumps(sim.bootstrap) + "\n")
    sys.stdout.flush()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
