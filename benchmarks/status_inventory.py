"""How long ``langfuse-rotate status`` takes on 100 entries, on the local stack.

    .venv/bin/python benchmarks/status_inventory.py [--entries 100] [--projects 10] [--runs 5] [--json FILE]

Set-up (untimed): a Langfuse simulator subprocess with ``--projects`` projects, an OpenBao dev
server, and one consumer health server. Each entry gets a key of its own in Langfuse (entries
spread round-robin over the projects), its pair in Vault KV v2 at ``bench/entry-<n>``, and one
consumer whose health endpoint reports that key.

What is measured, per run:

- ``command``: ``langfuse-rotate status --config FILE --json`` as a subprocess, from spawning it to
  its exit (Python start-up and imports included; the target is < 5 s for 100 entries);
- ``in-process``: ``flows.compliance.inventory.collect_inventory`` alone (the reads, already imported);
- ``sequential``: the same with one worker, to show what the parallel reads buy.

Per entry the inventory makes 3 Vault reads (metadata, current version, staging path), one more
for the pair, one Langfuse auth check and one consumer health check; plus one key list per
project. Not a test: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from connectors.keypair import KeyPair  # noqa: E402
from connectors.langfuse import LangfuseAdminClient  # noqa: E402
from connectors.store import SecretLocation  # noqa: E402
from connectors.vault import VaultStore  # noqa: E402
from connectors.vault_auth import TokenAuth  # noqa: E402
from devstack.openbao import OpenBaoServer  # noqa: E402

TARGET_S = 5.0


class HealthServer:
    """``GET /health/<n>`` answers ``{"langfuse_public_key": <key of entry n>}``."""

    def __init__(self, keys: list[str]) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                index = int(self.path.rsplit("/", 1)[-1])
                body = json.dumps({"status": "ok", "langfuse_public_key": keys[index]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_simulator(projects: int) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "devstack.langfuse_sim", "--port", "0", "--projects", str(projects)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


def build_stack(
    tmp: Path, bao: OpenBaoServer, boot: dict[str, Any], entries: int, health: HealthServer | None
) -> tuple[Path, list[str]]:
    """Create the keys, store the pairs and write the configuration; returns (config, keys)."""
    store = VaultStore(bao.url, auth=TokenAuth(SecretStr(bao.root_token)), mount="secret")
    admin = LangfuseAdminClient(boot["url"], boot["org_public_key"], SecretStr(boot["org_secret_key"]))
    projects = boot["projects"]
    keys: list[str] = []
    config_entries = []
    for n in range(entries):
        pair = KeyPair(public_key=f"pk-lf-{uuid.uuid4()}", secret_key=SecretStr(f"sk-lf-{uuid.uuid4()}"))
        project = projects[n % len(projects)]
        admin.create_api_key(project["id"], pair, note=f"bench entry {n}")
        store.seed(SecretLocation(path=f"bench/entry-{n}"), pair, boot["url"])
        keys.append(pair.public_key)
        config_entries.append(
            {
                "name": f"entry-{n}",
                "project_id": project["id"],
                "store": "main",
                "path": f"bench/entry-{n}",
                "consumers": [{"name": "api", "health_url": f"{health.url if health else ''}/health/{n}"}],
            }
        )
    admin.close()
    config = {
        "langfuse": {
            "host": boot["url"],
            "org_public_key": boot["org_public_key"],
            "org_secret_key": "${BENCH_ORG_SECRET_KEY}",
        },
        "stores": {"main": {"kind": "vault", "url": bao.url, "token": "${BENCH_VAULT_TOKEN}", "mount": "secret"}},
        "projects": config_entries,
        "audit": {"path": str(tmp / "audit.jsonl")},
    }
    path = tmp / "rotation.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, keys


def time_command(config: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli.main", "status", "--config", str(config), "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"status exited {proc.returncode}: {proc.stderr[-2000:]}")
    return elapsed


def time_in_process(config: Path, workers: int) -> float:
    import flows.compliance.inventory as inventory
    from flows.config.model import load_config

    loaded = load_config(config)
    previous, inventory.MAX_WORKERS = inventory.MAX_WORKERS, workers
    try:
        started = time.perf_counter()
        result = inventory.collect_inventory(loaded)
        elapsed = time.perf_counter() - started
    finally:
        inventory.MAX_WORKERS = previous
    if result.errors or not all(e.authenticates for e in result.entries):
        raise RuntimeError(f"inventory incomplete: {result.errors}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100)
    parser.add_argument("--projects", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    sim, boot = start_simulator(args.projects)
    keys: list[str] = []
    health = HealthServer(keys)
    tmp_dir = tempfile.TemporaryDirectory(prefix="bench-status-")
    with OpenBaoServer() as bao:
        try:
            config, created = build_stack(Path(tmp_dir.name), bao, boot, args.entries, health)
            keys.extend(created)
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
                "BENCH_ORG_SECRET_KEY": boot["org_secret_key"],
                "BENCH_VAULT_TOKEN": bao.root_token,
            }
            os.environ.update(BENCH_ORG_SECRET_KEY=boot["org_secret_key"], BENCH_VAULT_TOKEN=bao.root_token)
            time_command(config, env)  # warm-up: file caches, first imports
            figures = {
                "command": [time_command(config, env) for _ in range(args.runs)],
                "in-process": [time_in_process(config, 16) for _ in range(args.runs)],
                "sequential": [time_in_process(config, 1) for _ in range(max(args.runs // 2, 1))],
            }
        finally:
            health.stop()
            sim.terminate()
            sim.wait(10)
            tmp_dir.cleanup()
    print(f"status on {args.entries} entries ({args.projects} projects, 1 consumer each), runs: {args.runs}")
    print("| measurement | runs | median | min-max | target |")
    print("|---|---|---|---|---|")
    for name, values in figures.items():
        target = f"< {TARGET_S:g} s" if name == "command" else "-"
        print(
            f"| {name} | {len(values)} | {statistics.median(values):.3f} s | "
            f"{min(values):.3f}-{max(values):.3f} s | {target} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"entries": args.entries, "projects": args.projects, **figures}))
    return 0 if statistics.median(figures["command"]) < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
