"""The Prefect server's CPU per call a fleet entry makes, one call type at a time.

    .venv/bin/python benchmarks/prefect_calls.py [--count 200] [--group 8]

Against a fresh ``prefect server start`` on PostgreSQL (``devstack.prefect_server``), ``--count``
calls of each kind the fleet makes per entry, in turn: the entry's flow run created Running, its
step-table artifact, its final state (one ``set_state`` each, and through ``bulk_set_state`` 50 at
a time), and the entry's lock taken and released one lease per entry, then one lease per group of
``--group`` entries (``flows.fleet.group_lease``). Prints the server's CPU and PostgreSQL's (the
whole box's) per entry; each window includes a few seconds of the server's background work
(its event flush), the same for every row, so compare rows with each other. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from benchmarks.fleet import postgres_cpu_s, tree_cpu_s  # noqa: E402
from devstack.prefect_server import PrefectServer  # noqa: E402

SETTLE_S = 6.0
"""After each kind of call: the server writes the events it received every 5 s."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--group", type=int, default=8)
    args = parser.parse_args()
    count: int = args.count
    with PrefectServer() as server, httpx.Client(base_url=server.api_url + "/", timeout=30) as api:
        assert server.process is not None
        pid = server.process.pid
        flow_id = api.post("flows/", json={"name": "prefect-calls-benchmark"}).json()["id"]
        names = [f"benchmark-lock-{i}" for i in range(count)]
        for name in names:
            api.post("v2/concurrency_limits/", json={"name": name, "limit": 1}).raise_for_status()
        runs: list[str] = []

        def measure(label: str, calls: int, work: Callable[[], None]) -> None:
            time.sleep(2)
            server_before, postgres_before = tree_cpu_s(pid), postgres_cpu_s()
            work()
            time.sleep(SETTLE_S)
            server_ms = 1000 * (tree_cpu_s(pid) - server_before) / calls
            postgres_ms = 1000 * (postgres_cpu_s() - postgres_before) / calls
            print(f"  {label:<52} {server_ms:7.1f} {postgres_ms:7.1f}", flush=True)

        def create_runs() -> None:
            for i in range(count):
                body = {
                    "flow_id": flow_id,
                    "name": f"rotate-svc-{i}",
                    "tags": ["project:svc", "mode:scheduled"],
                    "parameters": {"project": f"svc-{i}"},
                    "state": {"type": "RUNNING", "name": "Running"},
                }
                response = api.post("flow_runs/", json=body)
                response.raise_for_status()
                runs.append(response.json()["id"])

        def artifacts() -> None:
            table = "| step | outcome | duration (s) | detail |\n|---|---|---|---|\n" + "| plan | ok | 0.01 | - |\n" * 8
            for run in runs:
                body = {"key": "langfuse-rotation-svc", "type": "markdown", "data": table, "flow_run_id": run}
                api.post("artifacts/", json=body).raise_for_status()

        half = count // 2

        def states_one_by_one() -> None:
            for run in runs[:half]:
                body = {"state": {"type": "COMPLETED", "name": "Completed"}, "force": True}
                api.post(f"flow_runs/{run}/set_state", json=body).raise_for_status()

        def states_in_bulk() -> None:
            rest = runs[half:]
            for start in range(0, len(rest), 50):
                body = {"flow_runs": {"id": {"any_": rest[start : start + 50]}}, "state": {"type": "COMPLETED"}}
                api.post("flow_runs/bulk_set_state", json=body).raise_for_status()

        def leases(size: int) -> Callable[[], None]:
            def work() -> None:
                for start in range(0, count, size):
                    body = {"names": names[start : start + size], "slots": 1, "lease_duration": 60}
                    taken = api.post("v2/concurrency_limits/increment-with-lease", json=body)
                    taken.raise_for_status()
                    released = {"lease_id": taken.json()["lease_id"]}
                    api.post("v2/concurrency_limits/decrement-with-lease", json=released).raise_for_status()

            return work

        print(f"Prefect server CPU per entry, ms ({count} entries; then PostgreSQL's, the whole box)")
        print(f"  {'call':<52} {'server':>7} {'pg':>7}")
        measure("flow run created Running", count, create_runs)
        measure("step-table artifact", count, artifacts)
        measure("final state, set_state", half, states_one_by_one)
        measure("final state, bulk_set_state 50 at a time", count - half, states_in_bulk)
        measure("lock, one lease per entry (take + release)", count, leases(1))
        measure(f"lock, one lease per group of {args.group} (take + release)", count, leases(args.group))
        measure("nothing (the server's background work)", count, lambda: time.sleep(10))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
