"""Time to contain a compromised Langfuse key, on the local stack (Langfuse simulator + OpenBao).

    .venv/bin/python benchmarks/time_to_contain.py [--runs 5] [--cold-runs 3] [--modes floor,server,...]

What is measured: from the moment the command is started (just before the subprocess is spawned)
until BOTH the compromised key gets 401 from Langfuse AND the new pair is the current secret in
the store. The benchmark watches both from its own process, polling every ``--poll-ms`` (a probe
of the compromised key; once it is rejected, a store read). The simulator runs in its normal mode (no cache
race), where probing a key before or after its deletion does not change when it is rejected.

Modes (each run contains a fresh key of its own, seeded in the store just before the run):

- ``floor``: the same HTTP calls the emergency makes up to that point (store describe, key list,
  stage, create, promote, find + delete, probe), made directly from this process with the
  connectors, already imported: no Prefect, no command line, no new process.
- ``server``: ``langfuse-rotate emergency`` with ``PREFECT_API_URL`` pointing at a running
  Prefect server (``prefect server start``, PostgreSQL when available, warmed up by one untimed
  emergency run): the command runs the emergency flow through that server.
- ``no-prefect``: the command with ``PREFECT_API_URL`` pointing at a closed port: it notices that
  no server answers and runs the same checklist in-process.
- ``cold``: the command with no ``PREFECT_API_URL`` and no server running, so Prefect starts its
  ephemeral API server (a uvicorn subprocess, SQLite under ``PREFECT_HOME``) inside the command,
  as on a fresh shell of an operator's laptop. The database under the benchmark's
  ``PREFECT_HOME`` is migrated once by an untimed warm-up run (a first-ever start migrates for
  20 s+; ``--cold-fresh-home`` measures that too, one run, no target).

Targets: server <= 1 s (issue 11; issue 6 asked <= 3 s), no-prefect <= 1.5 s, cold <= 15 s (medians). Not a test.
The path from a scanner's report through the forwarder, the automation and a worker is measured by
``report_to_401.py``, which reuses this module's stack.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from connectors.keypair import KeyPair  # noqa: E402
from connectors.langfuse import LangfuseAdminClient, LangfuseProjectClient  # noqa: E402
from connectors.store import RotationRecord, SecretLocation  # noqa: E402
from connectors.vault import VaultStore  # noqa: E402
from connectors.vault_auth import TokenAuth  # noqa: E402
from devstack.net import free_port  # noqa: E402
from devstack.openbao import OpenBaoServer  # noqa: E402
from devstack.prefect_server import PrefectServer  # noqa: E402
from devstack.sinks import JsonSink  # noqa: E402

ENTRY = "bench-chatbot"


def entry_name(location: SecretLocation) -> str:
    """One entry per run, so a run never finds (and deletes) the keys an earlier run created."""
    return f"bench-{location.path.rsplit('-', 1)[-1]}"


TARGETS = {"server": 1.0, "no-prefect": 1.5, "cold": 15.0}
LABELS = {
    "floor": "floor (direct HTTP calls)",
    "server": "emergency, Prefect server running",
    "no-prefect": "emergency, no Prefect reachable",
    "cold": "emergency, cold (ephemeral Prefect)",
    "cold-fresh": "emergency, cold + fresh PREFECT_HOME",
}


@dataclass
class Sample:
    contained_s: float
    exit_s: float | None = None
    exit_code: int | None = None
    status: str | None = None


@dataclass
class Stack:
    sim_url: str
    org_public_key: str
    org_secret_key: str
    project_id: str
    bao: OpenBaoServer
    sink: JsonSink
    workdir: Path
    base_env: dict[str, str]
    admin: LangfuseAdminClient = field(init=False)
    store: VaultStore = field(init=False)

    def __post_init__(self) -> None:
        self.admin = LangfuseAdminClient(self.sim_url, self.org_public_key, SecretStr(self.org_secret_key))
        self.store = VaultStore(self.bao.url, auth=TokenAuth(SecretStr(self.bao.root_token)))

    def new_compromised_key(self) -> tuple[KeyPair, SecretLocation]:
        """A fresh key of the project, stored as the entry's current pair at a fresh path."""
        pair = KeyPair.generate()
        self.admin.create_api_key(self.project_id, pair, "benchmark: the key that leaks")
        location = SecretLocation(path=f"langfuse/bench-{uuid.uuid4().hex[:10]}")
        self.store.seed(location, pair, self.sim_url)
        return pair, location

    def write_config(self, location: SecretLocation) -> Path:
        path = self.workdir / f"rotation-{location.path.rsplit('/', 1)[-1]}.yaml"
        path.write_text(yaml.safe_dump(self.config_dict([location]), sort_keys=False))
        return path

    def config_dict(self, locations: list[SecretLocation]) -> dict[str, Any]:
        """The rotation configuration: one entry per location (``entry_name``), secrets as ``${VAR}``s
        of ``base_env``."""
        return {
            "langfuse": {
                "host": self.sim_url,
                "org_public_key": "${BENCH_LANGFUSE_ORG_PUBLIC_KEY}",
                "org_secret_key": "${BENCH_LANGFUSE_ORG_SECRET_KEY}",
            },
            "stores": {"main": {"kind": "vault", "url": self.bao.url, "token": "${BENCH_VAULT_TOKEN}"}},
            "projects": [
                {
                    "name": entry_name(location),
                    "project_id": self.project_id,
                    "store": "main",
                    "path": location.path,
                    "grace_period_s": 0,
                    "canary_timeout_s": 30,
                }
                for location in locations
            ],
            "notify": {"urls": [self.sink.apprise_url("/pager")]},
            "audit": {"path": str(self.workdir / "audit.jsonl")},
        }


# --- the local stack ----------------------------------------------------------------------------


@contextlib.contextmanager
def local_stack(workdir: Path) -> Iterator[Stack]:
    sim = subprocess.Popen(
        [sys.executable, "-m", "devstack.langfuse_sim", "--port", "0", "--projects", "1"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert sim.stdout is not None
        boot = json.loads(sim.stdout.readline())
        from devstack.langfuse_sim.control import SimulatorControl

        control = SimulatorControl(boot["url"])
        control.configure(otel_delay_s=0.05, ingestion_delay_s=0.05)  # the canary comes after containment
        control.close()
        with OpenBaoServer() as bao, JsonSink() as sink:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LANGFUSE_ROTATE_"))}
            env.update(
                BENCH_LANGFUSE_ORG_PUBLIC_KEY=boot["org_public_key"],
                BENCH_LANGFUSE_ORG_SECRET_KEY=boot["org_secret_key"],
                BENCH_VAULT_TOKEN=bao.root_token,
                LANGFUSE_ROTATE_LOCK_DIR=str(workdir / "locks"),
                PYTHONPATH=str(REPO),
            )
            yield Stack(
                sim_url=boot["url"],
                org_public_key=boot["org_public_key"],
                org_secret_key=boot["org_secret_key"],
                project_id=boot["projects"][0]["id"],
                bao=bao,
                sink=sink,
                workdir=workdir,
                base_env=env,
            )
    finally:
        sim.terminate()
        sim.wait(10)


# --- one measurement ----------------------------------------------------------------------------


def floor_run(stack: Stack) -> Sample:
    """The emergency's HTTP calls up to containment, made directly (connectors already imported)."""
    old, location = stack.new_compromised_key()
    started = time.perf_counter()
    store = VaultStore(stack.bao.url, auth=TokenAuth(SecretStr(stack.bao.root_token)))
    with LangfuseAdminClient(stack.sim_url, stack.org_public_key, SecretStr(stack.org_secret_key)) as admin:
        desc = store.describe(location)
        admin.list_api_keys(stack.project_id)
        new = KeyPair.generate()
        record = RotationRecord(
            rotation_id=str(uuid.uuid4()),
            entry=ENTRY,
            mode="emergency",
            old_public_key=old.public_key,
            new_public_key=new.public_key,
            old_version=desc.current_version,
            started_at=datetime.now(UTC),
        )
        store.stage(location, record, new, stack.sim_url)
        admin.create_api_key(stack.project_id, new, "benchmark floor")
        store.promote(location, record)
        summary = admin.find_api_key(stack.project_id, old.public_key)
        assert summary is not None
        admin.delete_api_key(stack.project_id, summary.id)
        with LangfuseProjectClient(stack.sim_url, old) as client:
            rejected = not client.probe().accepted
    elapsed = time.perf_counter() - started
    assert rejected, "the deleted key must be rejected"
    return Sample(contained_s=elapsed, exit_s=elapsed, exit_code=0, status="contained")


def command_run(stack: Stack, env: dict[str, str], poll_s: float, timeout_s: float = 180) -> Sample:
    """Start ``langfuse-rotate emergency`` and watch for containment from outside."""
    old, location = stack.new_compromised_key()
    config = stack.write_config(location)
    argv = [
        sys.executable,
        "-m",
        "flows.cli.main",
        "emergency",
        "--config",
        str(config),
        "--project",
        entry_name(location),
    ]
    argv.append("--json")
    with LangfuseProjectClient(stack.sim_url, old) as probe:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        rejected_at = stored_at = None
        deadline = started + timeout_s
        while rejected_at is None or stored_at is None:
            now = time.perf_counter()
            if now > deadline:
                proc.kill()
                raise RuntimeError(f"not contained within {timeout_s}s")
            # One request per poll while waiting (the store is promoted before the key is deleted, so
            # it is read only once the key is rejected): the watcher must not starve the command.
            if rejected_at is None and not probe.probe().accepted:
                rejected_at = time.perf_counter()
            if (
                rejected_at is not None
                and stored_at is None
                and stack.store.describe(location).current_public_key != old.public_key
            ):
                stored_at = time.perf_counter()
            if rejected_at is None or stored_at is None:
                time.sleep(poll_s)
        contained = max(rejected_at, stored_at) - started
        stdout, stderr = proc.communicate(timeout=timeout_s)
        exited = time.perf_counter() - started
    status = None
    with contextlib.suppress(ValueError, IndexError):
        status = json.loads(stdout.strip().splitlines()[-1]).get("status")
    if proc.returncode != 0 or status != "contained":
        print(f"  ! exit {proc.returncode}, status {status}: {stderr.strip()[-500:]}", file=sys.stderr)
    return Sample(contained_s=contained, exit_s=exited, exit_code=proc.returncode, status=status)


# --- report -------------------------------------------------------------------------------------


def summarize(name: str, samples: list[Sample], floor: float | None) -> dict[str, Any]:
    values = sorted(s.contained_s for s in samples)
    median = statistics.median(values)
    q = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
    exits = [s.exit_s for s in samples if s.exit_s is not None]
    target = TARGETS.get(name)
    return {
        "mode": name,
        "label": LABELS[name],
        "runs": len(values),
        "median_s": round(median, 3),
        "min_s": round(values[0], 3),
        "max_s": round(values[-1], 3),
        "iqr_s": round(q[2] - q[0], 3),
        "ratio_to_floor": round(median / floor, 1) if floor else None,
        "target_s": target,
        "meets_target": None if target is None else median <= target,
        "command_exit_median_s": round(statistics.median(exits), 3) if exits else None,
        "all_contained": all(s.status == "contained" and s.exit_code == 0 for s in samples),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'mode':<38} {'runs':>4} {'median':>8} {'min-max':>15} {'IQR':>7} {'x floor':>8} "
        f"{'target':>7} {'met':>4} {'exit':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = "1.0" if r["mode"] == "floor" else (f"{r['ratio_to_floor']:g}" if r["ratio_to_floor"] else "-")
        target = f"<={r['target_s']:g}s" if r["target_s"] else "-"
        met = "-" if r["meets_target"] is None else ("yes" if r["meets_target"] else "NO")
        exit_text = f"{r['command_exit_median_s']:.2f}s" if r["command_exit_median_s"] is not None else "-"
        print(
            f"{r['label']:<38} {r['runs']:>4} {r['median_s']:>7.3f}s "
            f"{r['min_s']:>6.3f}-{r['max_s']:<6.3f}s {r['iqr_s']:>6.3f}s {ratio:>8} {target:>7} {met:>4} {exit_text:>7}"
        )
    print(
        "\nmedian/min-max/IQR: seconds from spawning the command to (compromised key 401 AND new pair current);"
        "\nexit: median seconds until the command exited (restarts, canary, notification and Prefect teardown"
        " come after containment)."
    )


def measure(name: str, runs: int, fn: Callable[[], Sample], warmup: Callable[[], Sample] | None = None) -> list[Sample]:
    if warmup is not None:
        print(f"{LABELS[name]}: untimed warm-up run ...", flush=True)
        warmup()
    samples = []
    for i in range(runs):
        sample = fn()
        samples.append(sample)
        print(
            f"{LABELS[name]}: run {i + 1}/{runs}: {sample.contained_s:.3f}s (exit {sample.exit_s or 0:.2f}s)",
            flush=True,
        )
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per mode (default 5)")
    parser.add_argument("--cold-runs", type=int, default=3, help="timed runs of the cold mode (default 3)")
    parser.add_argument("--modes", default="floor,server,no-prefect,cold", help="comma-separated subset")
    parser.add_argument("--cold-fresh-home", action="store_true", help="also one cold run on a fresh PREFECT_HOME")
    parser.add_argument("--poll-ms", type=float, default=20.0, help="watcher poll interval (default 20 ms)")
    parser.add_argument("--json", type=Path, help="also write the table as JSON to this file")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    poll_s = args.poll_ms / 1000
    rows: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="langfuse-rotate-bench-"))
    try:
        with local_stack(workdir) as stack:
            floor_median: float | None = None
            if "floor" in modes:
                samples = measure("floor", args.runs, lambda: floor_run(stack), warmup=lambda: floor_run(stack))
                rows.append(summarize("floor", samples, None))
                floor_median = rows[-1]["median_s"]
            if "server" in modes:
                with PrefectServer() as server:
                    env = server.client_env(stack.base_env)
                    env["PREFECT_LOGGING_LEVEL"] = "WARNING"
                    run = lambda: command_run(stack, env, poll_s)  # noqa: E731
                    rows.append(summarize("server", measure("server", args.runs, run, warmup=run), floor_median))
            if "no-prefect" in modes:
                env = dict(stack.base_env, PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api")
                run = lambda: command_run(stack, env, poll_s)  # noqa: E731
                rows.append(summarize("no-prefect", measure("no-prefect", args.runs, run, warmup=run), floor_median))
            if "cold" in modes:
                env = dict(stack.base_env, PREFECT_HOME=str(workdir / "prefect-home"))
                env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
                run = lambda: command_run(stack, env, poll_s)  # noqa: E731
                rows.append(summarize("cold", measure("cold", args.cold_runs, run, warmup=run), floor_median))
            if args.cold_fresh_home:
                home = workdir / "prefect-home-fresh"
                env = dict(stack.base_env, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
                rows.append(
                    summarize(
                        "cold-fresh", measure("cold-fresh", 1, lambda: command_run(stack, env, poll_s)), floor_median
                    )
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if all(r["all_contained"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
