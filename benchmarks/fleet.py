"""Fleet rotation on the local stack: ``rotate --all`` for 100, 1,000 and 2,000 entries.

    .venv/bin/python benchmarks/fleet.py [--sizes 100,1000,2000] [--concurrency N] [--paced 100]
                                         [--ingestion-delay 0.1] [--store vault|aws] [--json FILE]
                                         [--profile FILE] [--prefect-calls]

The stack: the Langfuse simulator (one subprocess, ``--projects 100``, entries spread over the
projects as several keys each), OpenBao (or moto with ``--store aws``), a Prefect server on
PostgreSQL (``LANGFUSE_ROTATE_TEST_PG``; the benchmark stops when it is not reachable), and
``devstack.fleet_consumers`` (one subprocess standing for every entry's consumer, switching at
once on restart); no grace period, canaries visible after ``--ingestion-delay`` seconds (0.1 by
default; Langfuse's asynchronous ingestion takes about 1 s for OTel and 5 s for ``/ingestion``).
Each size is seeded fresh (keys created in Langfuse, pairs stored), then
``langfuse-rotate rotate --all --json`` runs as a subprocess against the Prefect server.

Figures per size: wall time of the command, time per entry, the fleet run's own ``duration_s``
(``fleet_s``: the wall time less start-up and the last records), peak RSS of the command's process
tree (sampled every 0.1 s), Langfuse requests per entry by request type (method and route, from
the simulator's request log; printed as a table after each size),
store requests per entry (the rotator's own count, ``connectors.pacing``, written by the command
when ``LANGFUSE_ROTATE_REQUEST_COUNTS`` names a file), 429s, the 2,000/1,000 ratio, and CPU
milliseconds per entry of each process (the command with its children, OpenBao, the simulator,
the consumers, the Prefect server; PostgreSQL counted over the whole box, so with whatever else
runs there) with the load average at the end: the run is CPU-bound, this says where it goes.
``--prefect-calls`` turns the server's access log on and prints its requests per entry by route
(the log costs the server CPU: compare CPU figures only between runs without it). The
``--paced`` run rotates that many entries with the simulator limiting the ``public-api`` and
``ingestion`` buckets to 1,200/min and ``langfuse.max_requests_per_min: 1000``: it must see zero 429s.

Targets (issue 11): 1,000 entries <= 120 s, peak RSS <= 600 MB, <= 8 Langfuse requests per
entry (canary and revocation probe included), zero 429s when paced below the server's limit,
2,000-entry time <= 2.1 x the 1,000-entry time. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import yaml  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from connectors.keypair import KeyPair  # noqa: E402
from connectors.langfuse import LangfuseAdminClient  # noqa: E402
from connectors.store import SecretLocation, SecretStore  # noqa: E402
from devstack.langfuse_sim.control import SimulatorControl  # noqa: E402
from devstack.openbao import OpenBaoServer  # noqa: E402
from devstack.prefect_server import PrefectServer  # noqa: E402

PROJECTS = 100
_ID = re.compile(r"/(c[a-z0-9]{20,}|[0-9a-f-]{32,36}|pk-lf-[0-9a-f-]+)")


def endpoint(method: str, path: str) -> str:
    return f"{method} {_ID.sub('/{id}', path.split('?')[0])}"


_ACCESS = re.compile(r'"(GET|POST|PATCH|PUT|DELETE) (/api/[^ ?"]*)[^"]* HTTP/[0-9.]+" (\d{3})')
_PREFECT_ID = re.compile(r"/([0-9a-f]{8}-[0-9a-f-]{27}|langfuse-rotate-[^/]+)(?=/|$)")


class LoggedPrefectServer(PrefectServer):
    """The benchmark's Prefect server with uvicorn's access log on (``--prefect-calls``): one line
    per request in ``server.log``, counted by route (it costs the server a little CPU)."""

    def server_env(self) -> dict[str, str]:
        return {**super().server_env(), "PREFECT_SERVER_LOGGING_LEVEL": "INFO"}


def prefect_calls(log: Path, start: int) -> Counter[str]:
    """Requests to the Prefect API logged in ``log`` past byte ``start``, by method and route."""
    with log.open("rb") as file:
        file.seek(start)
        text = file.read().decode(errors="replace")
    return Counter(
        f"{m.group(1)} {_PREFECT_ID.sub('/{id}', m.group(2))}"
        for m in _ACCESS.finditer(text)
        if not m.group(2).endswith("/health")
    )


@contextlib.contextmanager
def process(
    cmd: list[str], env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    try:
        yield proc, json.loads(line)
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()


_TICK = os.sysconf("SC_CLK_TCK")


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    return children


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its live descendants (and the
    children they waited for)."""
    children, total, todo = _children(), 0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
        todo += children.get(current, [])
    return total / _TICK


def postgres_cpu_s() -> float:
    """CPU seconds of every PostgreSQL process on the box (shared with whatever else runs)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                head, _, rest = (entry / "stat").read_text().rpartition(")")
                if head.split("(", 1)[1].startswith("postgres"):  # ended backends: the postmaster's cutime
                    total += sum(int(f) for f in rest.split()[11:15])
    return total / _TICK


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, in MB."""
    children, total, todo = _children(), 0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        todo += children.get(current, [])
    return total / 1024


def seed(count: int, sim: dict[str, Any], store: SecretStore, tag: str) -> dict[str, str]:
    """``count`` keys spread over the simulator's projects, each stored at its own path."""
    projects = sim["projects"]
    paths: dict[str, str] = {}
    lock = threading.Lock()

    def one(i: int, admin: LangfuseAdminClient) -> None:
        project = projects[i % len(projects)]
        pair = KeyPair.generate()
        admin.create_api_key(project["id"], pair, note=f"bench seed {i}")
        path = f"bench/{tag}/svc-{i:04d}"
        store.seed(SecretLocation(path=path), pair, sim["url"])
        with lock:
            paths[f"svc-{i:04d}|{project['id']}"] = path

    def worker(indices: list[int]) -> None:
        with LangfuseAdminClient(sim["url"], sim["org_public_key"], SecretStr(sim["org_secret_key"])) as admin:
            for i in indices:
                one(i, admin)

    threads = [threading.Thread(target=worker, args=(list(range(k, count, 8)),)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return paths


def config_for(
    sim: dict[str, Any],
    store_config: dict[str, Any],
    paths: dict[str, str],
    consumers_url: str,
    tmp: Path,
    **langfuse: Any,
) -> Path:
    entries = []
    for key, path in sorted(paths.items()):
        name, project_id = key.split("|")
        entries.append(
            {
                "name": name,
                "project_id": project_id,
                "store": "main",
                "path": path,
                "consumers": [
                    {
                        "name": "app",
                        "health_url": f"{consumers_url}/health?path={path}",
                        "restart_url": f"{consumers_url}/restart?path={path}",
                    }
                ],
                "wait_timeout_s": 60,
                "grace_period_s": 0,
                "canary_timeout_s": 30,
                "revoke_recheck_s": 1,
            }
        )
    config = {
        "langfuse": {
            "host": sim["url"],
            "org_public_key": sim["org_public_key"],
            "org_secret_key": "${BENCH_ORG_SECRET_KEY}",
            "timeout_s": 30,
            **langfuse,
        },
        "stores": {"main": store_config},
        "projects": entries,
        "audit": {"path": str(tmp / "audit.jsonl")},
        "fleet": {"skip_if_rotated_within": 0},
    }
    path = tmp / f"fleet-{len(entries)}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_fleet(
    config: Path,
    env: dict[str, str],
    concurrency: int | None,
    tmp: Path,
    pids: dict[str, int],
    py_spy: str | None = None,
    profile: str | None = None,
) -> dict[str, Any]:
    """``pids``: the stack's processes, whose CPU time during the run is reported; ``py_spy``: record
    the command's stacks there (``py-spy record --format raw``); ``profile``: write a cProfile of
    every thread of the command there (``benchmarks/profile_threads.py``; it slows the command)."""
    counts_file = tmp / f"counts-{time.monotonic_ns()}.json"
    env = {**env, "LANGFUSE_ROTATE_REQUEST_COUNTS": str(counts_file)}
    cmd = [
        sys.executable,
        "-m",
        "flows.cli.main",
        "rotate",
        "--all",
        "--config",
        str(config),
        "--json",
        *(["--concurrency", str(concurrency)] if concurrency is not None else []),
    ]
    if profile:
        cmd = [sys.executable, str(REPO / "benchmarks" / "profile_threads.py"), profile, *cmd[1:]]
    if py_spy:
        cmd = ["py-spy", "record", "--nonblocking", "--format", "raw", "--rate", "100", "-o", py_spy, "--", *cmd]
    services = {name: tree_cpu_s(pid) for name, pid in pids.items()}
    postgres = postgres_cpu_s()
    children_cpu = _children_cpu_s()
    started = time.monotonic()
    stderr_path = tmp / f"stderr-{time.monotonic_ns()}.log"
    stdout_path = tmp / f"stdout-{time.monotonic_ns()}.log"
    with stderr_path.open("w") as stderr, stdout_path.open("w") as stdout:  # files: a full pipe would block it
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=stdout, stderr=stderr, text=True)
    peak = 0.0
    try:
        while proc.poll() is None:
            peak = max(peak, tree_rss_mb(proc.pid))
            time.sleep(0.1)
    finally:
        if proc.poll() is None:  # the benchmark was stopped
            proc.kill()
    wall = time.monotonic() - started
    proc.wait()
    cpu = {"rotator": _children_cpu_s() - children_cpu}
    cpu.update({name: tree_cpu_s(pid) - services[name] for name, pid in pids.items()})
    cpu["postgres (whole box)"] = postgres_cpu_s() - postgres
    out, err = stdout_path.read_text(errors="replace"), stderr_path.read_text(errors="replace")
    lines = [line for line in out.strip().splitlines() if line.startswith("{")]  # py-spy adds its own
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise SystemExit(
            f"rotate --all printed no JSON (exit {proc.returncode}):\n{out[-2000:]}\n{err[-3000:]}"
        ) from None
    counts = json.loads(counts_file.read_text()) if counts_file.exists() else {}
    return {
        "wall_s": wall,
        "peak_rss_mb": peak,
        "exit": proc.returncode,
        "result": result,
        "store_counts": counts,
        "cpu_s": cpu,
    }


def measure(size: int, args: argparse.Namespace, stack: dict[str, Any], paced: bool = False) -> dict[str, Any]:
    sim, control, store, store_config = stack["sim"], stack["control"], stack["store"], stack["store_config"]
    control.reset()
    delay = args.ingestion_delay
    control.configure(ingestion_delay_s=delay, otel_delay_s=delay, cache_mode="off")
    tag = f"{size}-{time.monotonic_ns()}"
    began = time.monotonic()
    paths = seed(size, sim, store, tag)
    seeded = time.monotonic() - began
    langfuse: dict[str, Any] = {}
    if paced:
        control.configure(rate_limits={"public-api": [1200, 60], "ingestion": [1200, 60]})
        langfuse["max_requests_per_min"] = 1000
    config = config_for(sim, store_config, paths, stack["consumers_url"], stack["tmp"], **langfuse)
    mark = control.requests(0)["next"]
    profile = f"{args.profile}.{size}" if args.profile else None
    server_log: Path = stack["server_log"]
    server_mark = server_log.stat().st_size if server_log.exists() else 0
    figures = run_fleet(config, stack["env"], args.concurrency, stack["tmp"], stack["pids"], args.py_spy, profile)
    log = _requests_since(control, mark)
    calls = prefect_calls(server_log, server_mark) if args.prefect_calls else Counter()
    by_endpoint = Counter(endpoint(r["method"], r["path"]) for r in log)
    result = figures["result"]
    store_requests = sum(
        v for k, v in figures["store_counts"].items() if k.startswith("store ") and not k.endswith((" paced", " 429"))
    )
    row = {
        "entries": size,
        "paced": paced,
        "ingestion_delay_s": delay,
        "seed_s": round(seeded, 1),
        "wall_s": round(figures["wall_s"], 1),
        "per_entry_ms": round(1000 * figures["wall_s"] / size, 1),
        "fleet_s": result.get("duration_s"),
        "peak_rss_mb": round(figures["peak_rss_mb"]),
        "status": result["status"],
        "counts": result["counts"],
        "exit": figures["exit"],
        "langfuse_per_entry": round(len(log) / size, 2),
        "langfuse_by_endpoint": {k: round(v / size, 2) for k, v in sorted(by_endpoint.items())},
        "store_per_entry": round(store_requests / size, 2),
        "store_writes_per_entry": round(
            sum(v for k, v in figures["store_counts"].items() if k.endswith(" paced") and k.startswith("store")) / size,
            2,
        ),
        "http_429": sum(1 for r in log if r["status"] == 429),
        "cpu_ms_per_entry": {k: round(1000 * v / size, 1) for k, v in figures["cpu_s"].items()},
        **(
            {
                "prefect_per_entry": round(sum(calls.values()) / size, 2),
                "prefect_by_route": {k: round(v / size, 3) for k, v in sorted(calls.items())},
            }
            if args.prefect_calls
            else {}
        ),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(row), flush=True)
    print(request_table(row), flush=True)
    control.configure(rate_limits=None)
    return row


def request_table(row: dict[str, Any]) -> str:
    """The Langfuse requests per entry of one measurement, one line per request type."""
    lines = [
        f"Langfuse requests per entry: {row['entries']} entries, ingestion delay {row['ingestion_delay_s']:g} s",
        f"  {'request':<48} {'per entry':>9}",
    ]
    lines += [f"  {name:<48} {count:>9.2f}" for name, count in row["langfuse_by_endpoint"].items()]
    lines.append(f"  {'total':<48} {row['langfuse_per_entry']:>9.2f}")
    if "prefect_by_route" in row:
        lines.append(f"Prefect server requests per entry: {row['entries']} entries")
        lines += [f"  {name:<60} {count:>9.3f}" for name, count in row["prefect_by_route"].items()]
        lines.append(f"  {'total':<60} {row['prefect_per_entry']:>9.2f}")
    return "\n".join(lines)


def _requests_since(control: SimulatorControl, mark: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        page = control.requests(mark)
        out += page["requests"]
        if not page["requests"] or page["next"] == mark:
            return out
        mark = page["next"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,2000")
    parser.add_argument("--concurrency", type=int, help="default: the configuration's (fleet.concurrency)")
    parser.add_argument("--paced", type=int, default=100, help="entries in the paced run (0: skip it)")
    parser.add_argument(
        "--ingestion-delay",
        type=float,
        default=0.1,
        help="seconds until the simulator makes a sent trace readable (OTel and /ingestion); 1 and 5 are realistic",
    )
    parser.add_argument("--store", choices=["vault", "aws"], default="vault")
    parser.add_argument("--json", help="write the rows to this file")
    parser.add_argument("--profile", help="write a cProfile of the command (all threads) to FILE.<entries>")
    parser.add_argument("--py-spy", help="record the command's stacks to this file (py-spy on PATH)")
    parser.add_argument(
        "--prefect-calls",
        action="store_true",
        help="log the Prefect server's requests (uvicorn access log) and print them per entry by route",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the stack on the way out
    tmp = Path(tempfile.mkdtemp(prefix="langfuse-rotate-fleet-bench-"))
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        sim_proc, sim = stack.enter_context(
            process([sys.executable, "-m", "devstack.langfuse_sim", "--port", "0", "--projects", str(PROJECTS)])
        )
        pids = {"simulator": sim_proc.pid}
        control = SimulatorControl(sim["url"])
        if args.store == "vault":
            from connectors.vault import VaultStore
            from connectors.vault_auth import TokenAuth

            bao = stack.enter_context(OpenBaoServer())
            pids["openbao"] = bao._proc.pid if bao._proc is not None else 0
            store: SecretStore = VaultStore(
                bao.url, auth=TokenAuth(SecretStr(bao.root_token)), mount="secret", timeout_s=30
            )
            store_config: dict[str, Any] = {"kind": "vault", "url": bao.url, "token": bao.root_token, "timeout_s": 30}
            consumer_args = ["--store", "vault", "--vault-url", bao.url, "--vault-token", bao.root_token]
        else:
            from connectors.aws_secrets import AwsSecretsStore
            from devstack.moto_server import MotoServer

            os.environ.update(
                AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
            )
            moto = stack.enter_context(MotoServer())
            pids["moto (in the benchmark)"] = os.getpid()
            store = AwsSecretsStore(region="us-east-1", endpoint_url=moto.url, timeout_s=30)
            store_config = {"kind": "aws", "region": "us-east-1", "endpoint_url": moto.url, "timeout_s": 30}
            consumer_args = ["--store", "aws", "--aws-endpoint-url", moto.url]
        consumers_proc, consumers = stack.enter_context(
            process([sys.executable, "-m", "devstack.fleet_consumers", *consumer_args])
        )
        pids["consumers"] = consumers_proc.pid
        server = stack.enter_context(LoggedPrefectServer() if args.prefect_calls else PrefectServer())
        pids["prefect server"] = server.process.pid if server.process is not None else 0
        env = server.client_env()
        env.update(
            BENCH_ORG_SECRET_KEY=sim["org_secret_key"],
            PREFECT_LOGGING_LEVEL="WARNING",
            LANGFUSE_ROTATE_LOCK_DIR=str(tmp / "locks"),
        )
        bench = {
            "sim": sim,
            "control": control,
            "store": store,
            "store_config": store_config,
            "tmp": tmp,
            "consumers_url": consumers["url"],
            "env": env,
            "pids": pids,
            "server_log": server.log_path,
        }
        httpx.get(f"{consumers['url']}/health?path=warmup", timeout=5)
        for size in [int(s) for s in args.sizes.split(",") if s]:
            rows.append(measure(size, args, bench))
        if args.paced:
            rows.append(measure(args.paced, args, bench, paced=True))
    by_size = {r["entries"]: r for r in rows if not r["paced"]}
    if 1000 in by_size and 2000 in by_size:
        print(f"2,000/1,000 ratio: {by_size[2000]['wall_s'] / by_size[1000]['wall_s']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
