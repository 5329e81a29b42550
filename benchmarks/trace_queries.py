"""Trace queries a consumer with ``traces`` costs per rotation (docs/trace-evidence.md, "Budget").

    .venv/bin/python benchmarks/trace_queries.py [--replicas 3] [--quiet-s 5] [--scenarios sdk,none,stuck]

Local stack: the Langfuse simulator (Langfuse 4.16: reads go to ``GET /api/public/v2/observations``),
OpenBao, and ``--replicas`` processes of the demo consumer (``devstack.consumer``: the real SDK, a
trace every 0.5 s, restarted 0.5 s apart by one restart command). One rotation per scenario, run
in-process without Prefect:

- ``sdk``: ``key_source: sdk``, every replica restarts: queries before revoke (until switched) and
  after it (until each consumer sent again);
- ``none``: ``key_source: none``: no query before revoke (grace period), the after-revoke check only;
- ``stuck``: ``key_source: sdk``, one replica ignores its restart: the wait polls until
  ``--wait-timeout-s``, then the rollback's check that the consumer is back on the old key.

Figures per scenario: the queries each check made for the consumer (counted by the checks
themselves), and what the simulator logged: trace reads (v2 observations + traces list) and
version reads (health). Every query goes through the same Langfuse client and, in a fleet run, its
limiter (``langfuse.max_requests_per_min``). Not a test: the counts depend on timing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from connectors.keypair import KeyPair  # noqa: E402
from connectors.store import SecretLocation  # noqa: E402
from flows.rotation import trace_evidence  # noqa: E402

RESTART_ALL = (
    "import sys, urllib.request\n"
    "for url in sys.argv[1:]:\n"
    "    urllib.request.urlopen(urllib.request.Request(url, method='POST'), timeout=5).read()\n"
)


def _counting(calls: list[tuple[str, int]]) -> None:
    """Record the query count of every check (``TraceWait`` counts its own queries)."""
    wait_switched: Callable[..., Any] = trace_evidence.TraceWait.wait_switched
    after_revoke: Callable[..., Any] = trace_evidence.TraceWait.check_after_revoke

    def counted_wait(self: Any, *args: Any, **kwargs: Any) -> Any:
        verdicts = wait_switched(self, *args, **kwargs)
        calls.append(("before revoke" if not calls else "rollback", sum(v.queries for v in verdicts.values())))
        return verdicts

    def counted_after(self: Any, *args: Any, **kwargs: Any) -> Any:
        outcome = after_revoke(self, *args, **kwargs)
        calls.append(("after revoke", sum(c.queries for c in outcome.consumers)))
        return outcome

    trace_evidence.TraceWait.wait_switched = counted_wait  # type: ignore[method-assign]
    trace_evidence.TraceWait.check_after_revoke = counted_after  # type: ignore[method-assign]


def run_scenario(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from devstack.consumer import start_consumer_process
    from devstack.demo import start_store
    from devstack.langfuse_sim import Simulator
    from devstack.langfuse_sim.control import SimulatorControl
    from flows.rotation.entry_run import execute
    from flows.rotation.runners import DirectRunner

    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="langfuse-rotate-bench-")))
        sim = stack.enter_context(Simulator(projects=1))
        project = sim.bootstrap["projects"][0]
        store, store_config, consumer_args = start_store(stack, "vault")
        path = f"langfuse/bench-{name}"
        old = KeyPair(public_key=project["public_key"], secret_key=SecretStr(project["secret_key"]))
        store.seed(SecretLocation(path=path), old, sim.url)
        replicas = [
            stack.enter_context(
                start_consumer_process(
                    name=f"api-{i}",
                    path=path,
                    langfuse_host=sim.url,
                    restart_delay_s=0.5 * i,
                    trace_interval_s=0.5,
                    environment="api",
                    ignore_restart=name == "stuck" and i == args.replicas - 1,
                    **consumer_args,
                )
            )
            for i in range(args.replicas)
        ]
        time.sleep(2.0)  # the replicas have sent for a while before the rotation starts
        os.environ["BENCH_ORG_PK"] = sim.bootstrap["org_public_key"]
        os.environ["BENCH_ORG_SK"] = sim.bootstrap["org_secret_key"]
        os.environ.setdefault("LANGFUSE_ROTATE_LOCK_DIR", str(workdir / "locks"))
        config = {
            "langfuse": {"host": sim.url, "org_public_key": "${BENCH_ORG_PK}", "org_secret_key": "${BENCH_ORG_SK}"},
            "stores": {"main": store_config},
            "projects": [
                {
                    "name": "bench",
                    "project_id": project["id"],
                    "store": "main",
                    "path": path,
                    "consumers": [
                        {
                            "name": "api",
                            "restart_command": [sys.executable, "-c", RESTART_ALL, *(r.restart_url for r in replicas)],
                            "traces": {
                                "match": {"environment": "api"},
                                "key_source": "none" if name == "none" else "sdk",
                                "quiet_s": args.quiet_s,
                                "after_revoke_s": args.after_revoke_s,
                            },
                        }
                    ],
                    "wait_timeout_s": args.wait_timeout_s,
                    "grace_period_s": 2,
                    "revoke_recheck_s": 2,
                }
            ],
            "audit": {"path": str(workdir / "audit.jsonl")},
        }
        config_path = workdir / "rotation.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        control = SimulatorControl(sim.url)
        since = int(control.requests(0)["next"])
        calls: list[tuple[str, int]] = []
        _counting(calls)
        started = time.monotonic()
        result = execute("rotate", "bench", str(config_path), DirectRunner())
        seconds = time.monotonic() - started
        logged: Counter[str] = Counter()
        for request in control.requests(since)["requests"]:
            if request["method"] == "GET" and request["path"].split("?")[0] in (
                "/api/public/v2/observations",
                "/api/public/traces",
                "/api/public/health",
            ):
                logged[request["path"].split("?")[0]] += 1
        return {
            "scenario": name,
            "status": result.status,
            "seconds": round(seconds, 1),
            "checks": calls,
            "logged": dict(logged),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--quiet-s", type=float, default=5.0)
    parser.add_argument("--after-revoke-s", type=float, default=30.0)
    parser.add_argument("--wait-timeout-s", type=float, default=60.0)
    parser.add_argument("--scenarios", default="sdk,none,stuck")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for name in args.scenarios.split(","):
        row = run_scenario(name, args)
        rows.append(row)
        checks = "; ".join(f"{phase} {count}" for phase, count in row["checks"]) or "none"
        print(
            f"{name:<6} {row['status']:<12} {row['seconds']:6.1f}s  trace queries by check: {checks}; "
            f"logged by the simulator: {row['logged']}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
