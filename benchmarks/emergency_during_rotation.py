"""Time to contain while a scheduled rotation of the same entry holds its lock (issue 10 item 1).

    .venv/bin/python benchmarks/emergency_during_rotation.py [--runs 3]

Each run seeds a fresh key, starts a scheduled rotation of it in-process (no Prefect) whose only
consumer never switches (so the rotation holds the entry's lock, waiting up to 120 s for it),
waits until the rotation has promoted its new pair, then starts ``langfuse-rotate emergency
--no-prefect`` on the same host and measures, from just before that process is spawned, until the
compromised key gets 401 from Langfuse. The rotation must hand over (exit 3, "superseded") and the
emergency carry its staged pair through. Target: <= 10 s. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.time_to_contain import Stack, entry_name, local_stack  # noqa: E402
from connectors.langfuse import LangfuseProjectClient  # noqa: E402

TARGET_S = 10.0
HOLDER = "import sys; from flows.rotation.entry_run import execute; from flows.rotation.runners import DirectRunner; from flows.cli.output import print_result; r = execute('rotate', sys.argv[1], sys.argv[2], DirectRunner()); print_result(r, as_json=True); sys.exit(int(r.exit_code))"  # noqa: E501


class StuckConsumer:
    """A consumer whose health endpoint reports ``public_key`` whatever restarts it gets."""

    def __init__(self, public_key: str) -> None:
        self.public_key = public_key
        consumer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps({"langfuse_public_key": consumer.public_key}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def one_run(stack: Stack) -> dict[str, Any]:
    old, location = stack.new_compromised_key()
    consumer = StuckConsumer(old.public_key)
    try:
        config_path = stack.write_config(location)
        config = yaml.safe_load(config_path.read_text())
        api = {"name": "api", "health_url": f"{consumer.url}/health", "restart_url": f"{consumer.url}/restart"}
        config["projects"][0].update(wait_timeout_s=120, consumers=[api])
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        entry = entry_name(location)
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, entry, str(config_path)],
            cwd=REPO,
            env=stack.base_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while not stack.store.describe(location).pending_promoted:
            if time.monotonic() > deadline or holder.poll() is not None:
                raise RuntimeError(f"the rotation did not get to wait for its consumer: {holder.communicate()}")
            time.sleep(0.1)
        staged = stack.store.describe(location).pending
        assert staged is not None
        argv = [sys.executable, "-m", "flows.cli.main", "emergency", "--config", str(config_path), "--project", entry]
        with LangfuseProjectClient(stack.sim_url, old) as probe:
            started = time.perf_counter()
            emergency = subprocess.Popen(
                [*argv, "--no-prefect", "--json"],
                cwd=REPO,
                env=stack.base_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            while probe.probe().accepted:
                if time.perf_counter() - started > 120:
                    emergency.kill()
                    raise RuntimeError("not contained within 120 s")
                time.sleep(0.05)
            contained = time.perf_counter() - started
        consumer.public_key = staged.new_public_key  # let the emergency's own wait end
        out, _ = emergency.communicate(timeout=180)
        held, _ = holder.communicate(timeout=180)
        result = json.loads(out.strip().splitlines()[-1])
        rotation = json.loads(held.strip().splitlines()[-1])
        return {
            "contained_s": round(contained, 3),
            "emergency": result["status"],
            "carried_through": result["new_public_key"] == staged.new_public_key,
            "rotation": f"{rotation['status']} (exit {holder.returncode}): {rotation['error']}",
        }
    finally:
        consumer.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-handover-") as tmp, local_stack(Path(tmp)) as stack:
        samples = [one_run(stack) for _ in range(args.runs)]
    for sample in samples:
        print(json.dumps(sample))
    times = [s["contained_s"] for s in samples]
    print(
        f"emergency during a rotation waiting on consumers: median {statistics.median(times):.3f} s, "
        f"min-max {min(times):.3f}-{max(times):.3f} s over {len(times)} runs (target <= {TARGET_S:g} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
