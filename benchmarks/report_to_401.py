"""From a secret scanner's report to the first 401 of the leaked key, through the path users run.

    .venv/bin/python benchmarks/report_to_401.py [--runs 6] [--modes worker,worker-poll-1s]

The path (docs/trust-boundary.md point 4 and docs/emergency.md "Emergency trigger"): the scanner POSTs
``/compromised`` to ``langfuse-rotate-forwarder``; the forwarder posts a ``langfuse.key.compromised``
event to the Prefect server; the ``emergency-rotation`` deployment's automation (created by
``prefect deploy`` from ``deployments/prefect.yaml``) creates a flow run; a responder takes it and
contains the key. The stack: the Langfuse simulator, OpenBao, a ``prefect server start`` on
PostgreSQL (at ``LANGFUSE_ROTATE_TEST_PG``; Prefect's default event flush, every 5 s), the pool created from
``deployments/process-work-pool-template.json``, the yaml deployed with ``prefect deploy --all``,
and the forwarder started with the README's command line.

What is measured: from just before the report is POSTed until the leaked key gets 401 from
Langfuse, probed every ``--poll-ms`` from this process. Each run reports a fresh entry whose key was
seeded (in Langfuse and in the store) before the stack started, so no run sees another's dedupe or
``max_per_hour``. The run Prefect records is read back to split the time (same clock): ``event``
(report to the flow run created: forwarder, event, automation), ``poll wait`` (created to Pending:
the worker's next poll), ``process`` (Pending to Running: the run's process starting and importing
Prefect and the flows), ``contain`` (Running to the 401).

Reports fire at random points of the responder's cycle: before each report, once the previous run
has ended, the harness sleeps a random time, uniform over one full cycle (``--seed``).

Modes (what takes the event; each a ``Responder`` below, sharing the harness):

- ``worker``: ``prefect worker start --pool langfuse-rotation --work-queue default`` as the README
  documents it, with Prefect's default poll settings: ``PREFECT_WORKER_QUERY_SECONDS`` 10 (Prefect
  draws each pause from 7-13 s), ``PREFECT_WORKER_PREFETCH_SECONDS`` 10 (irrelevant here: the run is
  due at once).
- ``worker-poll-1s``: the same worker with ``PREFECT_WORKER_QUERY_SECONDS=1`` (0.7-1.3 s): what the
  poll costs.

- ``responder``: ``langfuse-rotate respond`` (docs/responder.md) subscribed to the events
  websocket, next to the same worker with its default poll, as deployed: the responder contains,
  the automation's run the worker starts later ends ``Refused`` as a duplicate. Its run is recorded
  Running when it is created, so ``poll wait`` and ``process`` are 0 and ``event`` is the report
  to the responder's run record (forwarder, event, websocket, checks). The harness waits for both
  runs of each report to end before the next one.
Not a test: the numbers depend on the machine and its load (printed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import yaml  # noqa: E402

from benchmarks.time_to_contain import Stack, entry_name, local_stack  # noqa: E402
from connectors.keypair import KeyPair  # noqa: E402
from connectors.langfuse import LangfuseProjectClient  # noqa: E402
from connectors.store import SecretLocation  # noqa: E402
from devstack.prefect_server import PrefectServer  # noqa: E402

POOL = "langfuse-rotation"
EMERGENCY_DEPLOYMENT = "langfuse-key-emergency/emergency-rotation"
TOKEN_ENV = "BENCH_SCANNER_TOKEN"
PHASES = ("event", "poll wait", "process", "contain")
BIN = Path(sys.executable).parent


# --- the path up to the event: server, deployments, forwarder -------------------------------------


@dataclass
class Leak:
    """A live key of its own entry, reported once."""

    entry: str
    pair: KeyPair
    location: SecretLocation


@dataclass
class Harness:
    """What every mode shares: the local stack, the deployed server, the forwarder and the leaks."""

    stack: Stack
    server: PrefectServer
    config_path: Path
    forwarder_url: str
    token: str
    leaks: list[Leak]
    workdir: Path
    client_env: dict[str, str] = field(default_factory=dict)

    def responder_env(self) -> dict[str, str]:
        """A worker's environment as the README lists it: the server, the configuration, the
        variables it names; no checkout on the path (the package is installed in the venv)."""
        env = self.server.client_env(self.stack.base_env)
        env.update(LANGFUSE_ROTATE_CONFIG=str(self.config_path), PYTHONPATH="")
        return env

    def prefect_cli(self, *args: str) -> None:
        proc = subprocess.run(
            [str(BIN / "prefect"), *args], env=self.client_env, cwd=REPO, capture_output=True, text=True, timeout=300
        )
        if proc.returncode != 0:
            raise RuntimeError(f"prefect {' '.join(args)}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def seed_leaks(stack: Stack, count: int) -> list[Leak]:
    leaks = []
    for _ in range(count):
        pair, location = stack.new_compromised_key()
        leaks.append(Leak(entry=entry_name(location), pair=pair, location=location))
    return leaks


@contextlib.contextmanager
def forwarder(config: Path, env: dict[str, str], log: Path) -> Iterator[str]:
    """``langfuse-rotate-forwarder`` as docs/trust-boundary.md point 4 starts it; yields its URL."""
    argv = [str(BIN / "langfuse-rotate-forwarder"), "--config", str(config), "--listen", "127.0.0.1:0"]
    argv += ["--token-env", TOKEN_ENV]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "listening on http://" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"forwarder did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield log.read_text().split("listening on ", 1)[1].split("/compromised", 1)[0]
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def deployed_stack(workdir: Path, leak_count: int) -> Iterator[Harness]:
    with local_stack(workdir) as stack, PrefectServer() as server:
        leaks = seed_leaks(stack, leak_count)
        config_path = workdir / "rotation.yaml"
        config_path.write_text(yaml.safe_dump(stack.config_dict([leak.location for leak in leaks]), sort_keys=False))
        token = secrets.token_urlsafe(24)
        forwarder_env = server.client_env({k: v for k, v in os.environ.items() if not k.startswith("LANGFUSE_")})
        forwarder_env[TOKEN_ENV] = token
        with forwarder(config_path, forwarder_env, workdir / "forwarder.log") as url:
            harness = Harness(
                stack=stack,
                server=server,
                config_path=config_path,
                forwarder_url=url,
                token=token,
                leaks=leaks,
                workdir=workdir,
                client_env=server.client_env(),
            )
            harness.prefect_cli(
                "work-pool", "create", POOL, "--type", "process",
                "--base-job-template", "deployments/process-work-pool-template.json",
            )  # fmt: skip
            harness.prefect_cli("--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all")
            yield harness


# --- responders: what takes the event and contains ----------------------------------------------


@dataclass
class Responder:
    name: str
    label: str
    cycle_s: float
    """The longest gap between two looks for work: reports are fired uniformly over it."""
    settings: str
    """What the label leaves out: the settings that decide the cycle."""
    running: Callable[[Harness], contextlib.AbstractContextManager[None]]
    runs_per_report: int = 1
    """Flow runs each report ends with (the responder's and the automation's duplicate: 2)."""


def wait_until_queue_polled(harness: Harness, queue: str, timeout_s: float = 120) -> None:
    """Until Prefect marks the queue READY: a worker polls it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import WorkQueueStatus

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while client.read_work_queue_by_name(queue, work_pool_name=POOL).status != WorkQueueStatus.READY:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no worker polled {queue} within {timeout_s}s")
            time.sleep(0.5)


def process_worker(query_seconds: float | None) -> Callable[[Harness], contextlib.AbstractContextManager[None]]:
    """The README's worker command; ``query_seconds`` None leaves Prefect's default (10 s)."""

    @contextlib.contextmanager
    def running(harness: Harness) -> Iterator[None]:
        env = harness.responder_env()
        for name in ("PREFECT_WORKER_QUERY_SECONDS", "PREFECT_WORKER_PREFETCH_SECONDS"):
            env.pop(name, None)
        if query_seconds is not None:
            env["PREFECT_WORKER_QUERY_SECONDS"] = f"{query_seconds:g}"
        cwd = harness.workdir / "worker-cwd"  # not the checkout: the entrypoints load from the package
        cwd.mkdir(exist_ok=True)
        log = harness.workdir / f"worker-{query_seconds or 'default'}.log"
        argv = [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--work-queue", "default"]
        with log.open("wb") as out:
            worker = subprocess.Popen(
                argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_until_queue_polled(harness, "default")
            yield
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(10)

    return running


def warm_responder() -> Callable[[Harness], contextlib.AbstractContextManager[None]]:
    """``langfuse-rotate respond`` next to the README's worker (default poll): both paths up."""
    worker = process_worker(None)

    @contextlib.contextmanager
    def running(harness: Harness) -> Iterator[None]:
        env = harness.responder_env()
        log = harness.workdir / "responder.log"
        argv = [str(BIN / "langfuse-rotate"), "respond", "--config", str(harness.config_path)]
        with worker(harness), log.open("wb") as out:
            responder = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                deadline = time.monotonic() + 60
                while "listening for" not in log.read_text():
                    if responder.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the responder did not subscribe: {log.read_text()[-2000:]}")
                    time.sleep(0.1)
                yield
            finally:
                os.killpg(responder.pid, signal.SIGTERM)
                try:
                    responder.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(responder.pid, signal.SIGKILL)
                    responder.wait(10)

    return running


RESPONDERS = {
    "responder": Responder(
        name="responder",
        label="langfuse-rotate respond (+ worker, default poll)",
        cycle_s=1.0,
        settings="events websocket, no poll; the worker beside it as in mode worker",
        running=warm_responder(),
        runs_per_report=2,
    ),
    "worker": Responder(
        name="worker",
        label="automation + process worker, default poll",
        cycle_s=13.0,
        settings="PREFECT_WORKER_QUERY_SECONDS 10 (7-13 s), PREFECT_WORKER_PREFETCH_SECONDS 10",
        running=process_worker(None),
    ),
    "worker-poll-1s": Responder(
        name="worker-poll-1s",
        label="automation + process worker, 1 s poll",
        cycle_s=1.3,
        settings="PREFECT_WORKER_QUERY_SECONDS 1 (0.7-1.3 s), PREFECT_WORKER_PREFETCH_SECONDS 10",
        running=process_worker(1.0),
    ),
}


# --- one measurement ------------------------------------------------------------------------------


@dataclass
class Sample:
    report_to_401_s: float
    post_s: float
    event_id: str
    run_state: str | None = None
    other_states: list[str] = field(default_factory=list)
    """The other runs of the report (the responder mode: the automation's duplicate, ``Refused``)."""
    phases: dict[str, float] = field(default_factory=dict)


def report_and_wait_for_401(
    harness: Harness, leak: Leak, poll_s: float, timeout_s: float = 180, runs_per_report: int = 1
) -> Sample:
    """POST the scanner's report; probe the leaked key until it gets 401."""
    body = {"project": leak.entry, "public_key": leak.pair.public_key, "source": "benchmark"}
    headers = {"Authorization": f"Bearer {harness.token}"}
    with LangfuseProjectClient(harness.stack.sim_url, leak.pair) as probe, httpx.Client(timeout=30) as http:
        if not probe.probe().accepted:
            raise RuntimeError(f"{leak.entry}: the leaked key is not live before the report")
        reported_at = datetime.now(UTC)
        started = time.perf_counter()
        answer = http.post(f"{harness.forwarder_url}/compromised", json=body, headers=headers)
        posted = time.perf_counter() - started
        if answer.status_code != 202:
            raise RuntimeError(f"forwarder answered {answer.status_code}: {answer.text.strip()}")
        deadline = started + timeout_s
        while probe.probe().accepted:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{leak.entry}: still accepted {timeout_s}s after the report")
            time.sleep(poll_s)
        elapsed = time.perf_counter() - started
    sample = Sample(report_to_401_s=elapsed, post_s=posted, event_id=answer.json()["event_id"])
    rejected_at = reported_at + timedelta(seconds=elapsed)
    sample.run_state, sample.phases, sample.other_states = read_back_run(
        sample.event_id, reported_at, rejected_at, runs_per_report
    )
    return sample


def read_back_run(
    event_id: str, reported_at: datetime, rejected_at: datetime, runs_per_report: int = 1
) -> tuple[str, dict[str, float], list[str]]:
    """Wait for the emergency runs of the event to end; the state of the one that contained (not
    ``Refused``: the other path's duplicate) and the phases of the path."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    deadline = time.monotonic() + 180
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["emergency-rotation"]))
            )
            mine = [r for r in runs if (r.parameters or {}).get("event_id") == event_id]
            ended = [r for r in mine if r.state is not None and r.state.is_final()]
            if len(ended) >= runs_per_report:
                run = next((r for r in ended if r.state is not None and r.state.name != "Refused"), ended[0])
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the run of event {event_id} did not end within 180 s")
            time.sleep(0.5)
        states = client.read_flow_run_states(run.id)
    others = [str(r.state.name) for r in ended if r.id != run.id and r.state is not None]
    first = {}
    for state in sorted(states, key=lambda s: s.timestamp):
        first.setdefault(state.type.value, state.timestamp)
    # A run recorded by the responder is created Running: no poll, no process to start.
    marks = [
        ("event", run.created),
        ("poll wait", first.get("PENDING", run.created)),
        ("process", first.get("RUNNING")),
    ]
    marks.append(("contain", rejected_at))
    phases: dict[str, float] = {}
    previous = reported_at
    for name, mark in marks:
        if mark is None:
            return run.state.name, {}, others
        # A run created Running: its Running state's timestamp may precede ``created`` by a hair.
        phases[name] = round(max(0.0, (mark - previous).total_seconds()), 3)
        previous = mark
    return run.state.name, phases, others


def measure(
    harness: Harness, responder: Responder, leaks: list[Leak], rng: random.Random, poll_s: float
) -> list[Sample]:
    """Warm up on the first leak (untimed), then one timed report per further leak."""
    samples = []
    with responder.running(harness):
        for i, leak in enumerate(leaks):
            time.sleep(rng.uniform(0, responder.cycle_s))  # a random point of the responder's cycle
            sample = report_and_wait_for_401(harness, leak, poll_s, runs_per_report=responder.runs_per_report)
            ok = sample.run_state == "Completed"
            what = "warm-up" if i == 0 else f"run {i}/{len(leaks) - 1}"
            parts = ", ".join(f"{k} {v:.2f}" for k, v in sample.phases.items())
            also = f"; other run(s): {', '.join(sample.other_states)}" if sample.other_states else ""
            print(
                f"{responder.label}: {what}: {sample.report_to_401_s:.3f}s ({parts}) {sample.run_state}{also}",
                flush=True,
            )
            if not ok:
                print(f"  ! the run ended {sample.run_state}", file=sys.stderr)
            if i > 0:
                samples.append(sample)
    return samples


# --- report ---------------------------------------------------------------------------------------


def summarize(responder: Responder, samples: list[Sample], load: tuple[float, float]) -> dict[str, Any]:
    values = sorted(s.report_to_401_s for s in samples)
    phase_names = [name for name in PHASES if all(name in s.phases for s in samples)]
    return {
        "mode": responder.name,
        "label": responder.label,
        "settings": responder.settings,
        "runs": len(values),
        "median_s": round(statistics.median(values), 3),
        "min_s": round(values[0], 3),
        "max_s": round(values[-1], 3),
        "phase_medians_s": {n: round(statistics.median(s.phases[n] for s in samples), 3) for n in phase_names},
        "phase_shares": {n: round(sum(s.phases[n] for s in samples) / sum(values), 3) for n in phase_names},
        "post_median_s": round(statistics.median(s.post_s for s in samples), 3),
        "all_completed": all(s.run_state == "Completed" for s in samples),
        # Both paths up: every report's other run ended Refused (a duplicate), none contained twice.
        "other_runs": sorted({state for s in samples for state in s.other_states}),
        "load_avg_1m_start_end": [round(load[0], 2), round(load[1], 2)],
        "samples_s": [round(v, 3) for v in (s.report_to_401_s for s in samples)],
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    header = f"{'mode':<44} {'runs':>4} {'median':>8} {'min-max':>15}  phases (median s: {', '.join(PHASES)})"
    print(header)
    print("-" * len(header))
    for r in rows:
        phases = ", ".join(f"{v:.2f}" for v in r["phase_medians_s"].values())
        shares = ", ".join(f"{100 * v:.0f}%" for v in r["phase_shares"].values())
        print(
            f"{r['label']:<44} {r['runs']:>4} {r['median_s']:>7.3f}s {r['min_s']:>6.3f}-{r['max_s']:<6.3f}s  "
            f"{phases} (of the total: {shares})"
        )
    for r in rows:
        print(f"{r['label']}: {r['settings']}; load average (1 min) {r['load_avg_1m_start_end']}")
    print(
        "\nseconds from POST /compromised to the leaked key's first 401; phases from the flow run's states:"
        "\nevent = report to flow run created (forwarder, event, automation), poll wait = created to Pending,"
        "\nprocess = Pending to Running (the run's process starts and imports), contain = Running to the 401."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=6, help="timed reports per mode, after one warm-up (default 6)")
    parser.add_argument(
        "--modes", default="responder,worker,worker-poll-1s", help=f"comma-separated: {', '.join(RESPONDERS)}"
    )
    parser.add_argument("--poll-ms", type=float, default=20.0, help="probe interval of the leaked key (default 20 ms)")
    parser.add_argument("--seed", type=int, default=24, help="seed of the random report times")
    parser.add_argument("--json", type=Path, help="also write the table as JSON to this file")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in RESPONDERS]
    if unknown or args.runs < 1:
        parser.error(f"unknown mode(s): {', '.join(unknown)}" if unknown else "--runs must be at least 1")
    rng = random.Random(args.seed)
    rows: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="langfuse-rotate-report-bench-"))
    try:
        with deployed_stack(workdir, len(modes) * (args.runs + 1)) as harness:
            from prefect.settings import PREFECT_API_URL, temporary_settings

            with temporary_settings(updates={PREFECT_API_URL: harness.server.api_url}):
                for index, mode in enumerate(modes):
                    leaks = harness.leaks[index * (args.runs + 1) : (index + 1) * (args.runs + 1)]
                    load_start = os.getloadavg()[0]
                    samples = measure(harness, RESPONDERS[mode], leaks, rng, args.poll_ms / 1000)
                    rows.append(summarize(RESPONDERS[mode], samples, (load_start, os.getloadavg()[0])))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    once = all(r["other_runs"] in ([], ["Refused"]) for r in rows)
    return 0 if once and all(r["all_completed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
