"""``langfuse-rotate demo``: one full rotation on the embedded local stack, narrated.

Starts on 127.0.0.1 the Langfuse API simulator, a secret store (OpenBao dev server or moto's
Secrets Manager), a JSON notification sink and three replicas of a demo consumer that uses the real ``langfuse``
SDK; rotates the consumer's key through Prefect (the configured server, or the embedded one);
shows what changed; stops everything it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from pydantic import SecretStr

from connectors.keypair import KeyPair
from connectors.langfuse import LangfuseProjectClient
from connectors.store import SecretLocation, SecretStore

ENTRY = "demo-chatbot"
SECRET_PATH = "langfuse/demo-chatbot"


_human = [sys.stdout]
_label = ["demo"]
"""Who is speaking: ``langfuse-rotate sandbox`` starts the same stack under its own name."""


def say(message: str) -> None:
    print(f"[{_label[0]}] {message}", file=_human[0], flush=True)


def run_demo(*, store: str = "vault", as_json: bool = False) -> int:
    """One narrated rotation with ``store`` (a kind in ``DEMO_STORES``); the exit code."""
    _human[0] = sys.stderr if as_json else sys.stdout  # with --json, stdout holds only the result
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="langfuse-rotate-demo-")))
        return _run(stack, workdir, store, as_json)


def _run(stack: contextlib.ExitStack, workdir: Path, store_kind: str, as_json: bool) -> int:
    from devstack.consumer import start_consumer_process
    from devstack.langfuse_sim import Simulator
    from devstack.sinks import JsonSink

    say("starting the Langfuse API simulator (a real Langfuse needs ClickHouse, Redis and S3)")
    sim = stack.enter_context(Simulator(projects=1))
    boot = sim.bootstrap
    project = boot["projects"][0]
    say(f"  {sim.url}: project {project['id']} with key {project['public_key']}")

    sink = stack.enter_context(JsonSink())
    say(f"notifications go to a local JSON sink at {sink.url}")

    store, store_config, consumer_args = start_store(stack, store_kind)
    location = SecretLocation(path=SECRET_PATH)
    old = KeyPair(public_key=project["public_key"], secret_key=SecretStr(project["secret_key"]))
    version = store.seed(location, old, sim.url)
    say(f"stored the project's key in {store.location_label(location)} (version {version})")

    say(
        f"starting {REPLICAS} replicas of the demo consumer 'api': each reads its key from the store at start "
        "and sends a trace every 0.5 s with the langfuse SDK (nothing stamped: the SDK names its key)"
    )
    replicas = [
        stack.enter_context(
            start_consumer_process(
                name=f"api-{i}",
                path=SECRET_PATH,
                langfuse_host=sim.url,
                restart_delay_s=0.5 * (i + 1),
                trace_interval_s=0.5,
                environment="api",
                **consumer_args,
            )
        )
        for i in range(REPLICAS)
    ]
    say(
        f"  consumer 'api' runs on {_replica_keys(replicas)}; no health endpoint is configured: "
        "the rotation reads the consumer's traces"
    )

    os.environ["DEMO_LANGFUSE_ORG_PUBLIC_KEY"] = boot["org_public_key"]
    os.environ["DEMO_LANGFUSE_ORG_SECRET_KEY"] = boot["org_secret_key"]
    os.environ.setdefault("LANGFUSE_ROTATE_LOCK_DIR", str(workdir / "locks"))
    config_path = workdir / "rotation.yaml"
    config_path.write_text(
        yaml.safe_dump(_config(sim.url, project["id"], store_config, replicas, sink, workdir), sort_keys=False)
    )
    say(f"configuration: {config_path} (secrets come from environment variables, never the file)")

    from flows.cli.output import print_result, result_from_state
    from flows.prefect.rest import first_start_of_embedded_server, prefect_api_url

    api = prefect_api_url()
    if api:
        where = api
    elif first_start_of_embedded_server():
        where = "the embedded Prefect server (its first start migrates its database: 20 s or more)"
    else:
        where = "the embedded Prefect server"
    say(f"rotating '{ENTRY}' through Prefect on {where} ...")
    from flows.rotate import rotate

    started = time.monotonic()
    state = rotate(project=ENTRY, config_path=str(config_path), return_state=True)
    result = result_from_state(state, ENTRY)
    if not result.duration_s:
        result.duration_s = round(time.monotonic() - started, 3)
    print_result(result, command="rotate", file=_human[0])

    new_key = _replica_keys(replicas)
    say(f"consumer 'api' now reports {new_key}")
    for step in result.steps:
        if step.step == "wait_for_restarts":
            say(f"evidence before revoke: {_replica_evidence(step.detail, len(replicas))}")
        if step.step == "check_ingestion":
            say(f"after revoke: {step.detail}")
    with LangfuseProjectClient(sim.url, old, timeout_s=5) as client:
        say(f"the old key {old.public_key} is now {'ACCEPTED (!)' if client.probe().accepted else 'rejected (401)'}")
    received = sink.received()
    for note in received:
        body = note.json if isinstance(note.json, dict) else {}
        say(f"notification received: [{body.get('type')}] {body.get('title')}")
    audit_lines = (workdir / "audit.jsonl").read_text().splitlines() if (workdir / "audit.jsonl").exists() else []
    say(f"audit log: {len(audit_lines)} entries, e.g. {_first_actions(audit_lines)}")
    ok = result.status == "rotated" and new_key.startswith(f"{result.new_public_key} (all") and bool(received)
    say("stopping everything the demo started")
    if as_json:
        print(result.to_json_line())
    return 0 if ok else int(result.exit_code) or 1


@dataclass(frozen=True)
class DemoStore:
    """A store the demo started: its section of the configuration (real values), the arguments the
    demo consumer needs to read it, which values the configuration file names as environment
    variables instead (secrets never go into the file), and what a client's environment needs
    besides (moto's test credentials)."""

    section: dict[str, Any]
    consumer_args: dict[str, Any]
    from_env: dict[str, str] = field(default_factory=dict)
    """section key -> the environment variable the configuration file refers to instead"""
    client_env: dict[str, str] = field(default_factory=dict)

    def file_section(self, rename: Callable[[str], str] = str) -> dict[str, Any]:
        """The section as the configuration file holds it (each ``from_env`` variable's name passed
        through ``rename``); sets those variables in this process's environment."""
        for key, variable in self.from_env.items():
            os.environ[rename(variable)] = str(self.section[key])
        return self.section | {key: f"${{{rename(variable)}}}" for key, variable in self.from_env.items()}

    def variables(self, rename: Callable[[str], str] = str) -> dict[str, str]:
        """The variables ``file_section`` refers to, with their values."""
        return {rename(variable): str(self.section[key]) for key, variable in self.from_env.items()}


def _openbao(stack: contextlib.ExitStack) -> DemoStore:
    from devstack.openbao import OpenBaoServer

    bao = stack.enter_context(OpenBaoServer())
    say(f"started an OpenBao (Vault API) dev server at {bao.url}")
    return DemoStore(
        {"kind": "vault", "url": bao.url, "token": bao.root_token, "mount": "secret"},
        {"store": "vault", "vault_url": bao.url, "vault_token": bao.root_token},
        from_env={"token": "DEMO_VAULT_TOKEN"},
    )


_MOTO_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def _moto(stack: contextlib.ExitStack) -> DemoStore:
    from devstack.moto_server import MotoServer

    for name, value in {**_MOTO_ENV, "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ[name] = value
    moto = stack.enter_context(MotoServer())
    say(f"started AWS Secrets Manager (moto server) at {moto.url}")
    return DemoStore(
        {"kind": "aws", "region": "us-east-1", "endpoint_url": moto.url},
        {"store": "aws", "aws_endpoint_url": moto.url, "aws_region": "us-east-1"},
        client_env=dict(_MOTO_ENV),
    )


DEMO_STORES: dict[str, Callable[[contextlib.ExitStack], DemoStore]] = {"vault": _openbao, "aws": _moto}
"""The local server the demo starts for each store kind of the registry (``flows.config.stores``)."""


def start_store(stack: contextlib.ExitStack, kind: str) -> tuple[SecretStore, dict[str, Any], dict[str, Any]]:
    """Start the local server for ``kind``; connect to it as a rotation does (``flows.config.stores``)."""
    store, started = start_demo_store(stack, kind)
    return store, started.file_section(), started.consumer_args


def start_demo_store(stack: contextlib.ExitStack, kind: str) -> tuple[SecretStore, DemoStore]:
    """Start the local server for ``kind``: the store connected as a rotation connects to it, and
    what the demo started."""
    from flows.config.stores import build_store, store_config

    started = DEMO_STORES[kind](stack)
    return build_store(store_config(started.section)), started


REPLICAS = 3
QUIET_S = 5
"""The demo's ``traces.quiet_s`` (default 30 s): short, so the demo stays quick."""
RESTART_ALL = (
    "import sys, urllib.request\n"
    "for url in sys.argv[1:]:\n"
    "    urllib.request.urlopen(urllib.request.Request(url, method='POST'), timeout=5).read()\n"
)
"""The consumer's restart hook: a rollout of every replica (as ``kubectl rollout restart`` would)."""


def _config(
    host: str, project_id: str, store: dict[str, Any], replicas: list[Any], sink: Any, workdir: Path
) -> dict[str, Any]:
    return {
        "langfuse": {
            "host": host,
            "org_public_key": "${DEMO_LANGFUSE_ORG_PUBLIC_KEY}",
            "org_secret_key": "${DEMO_LANGFUSE_ORG_SECRET_KEY}",
        },
        "stores": {"main": store},
        "projects": [
            {
                "name": ENTRY,
                "project_id": project_id,
                "store": "main",
                "path": SECRET_PATH,
                "consumers": [
                    {
                        "name": "api",
                        "restart_command": [sys.executable, "-c", RESTART_ALL, *(r.restart_url for r in replicas)],
                        "traces": {"match": {"environment": "api"}, "quiet_s": QUIET_S, "after_revoke_s": 30},
                    }
                ],
                "wait_timeout_s": 60,
                "canary_timeout_s": 30,
                "revoke_recheck_s": 5,
            }
        ],
        "notify": {"urls": [sink.apprise_url("/hook")]},
        "audit": {"path": str(workdir / "audit.jsonl")},
    }


def _consumer_key(health_url: str) -> str | None:
    try:
        data = httpx.get(health_url, timeout=5).json()
    except (httpx.HTTPError, json.JSONDecodeError):
        return None
    value = data.get("langfuse_public_key") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _replica_keys(replicas: list[Any]) -> str:
    """The key every replica reports (the demo asks each one; the rotation never does), or each one's."""
    keys = [_consumer_key(r.health_url) for r in replicas]
    if len(set(keys)) == 1:
        return f"{keys[0]} (all {len(keys)} replicas)"
    return ", ".join(f"replica {i}: {key}" for i, key in enumerate(keys))


def _replica_evidence(detail: str, count: int) -> str:
    """``api: 3 replicas sent with the new key, ...``: the rotation's evidence line, with the number
    of replicas the demo started (traces do not say how many processes sent them)."""
    return detail.replace("api: sent with", f"api: {count} replicas sent with").replace(
        f"for {QUIET_S}s", f"for {QUIET_S} s"
    )


def _first_actions(lines: list[str]) -> str:
    actions = []
    for line in lines[:6]:
        with contextlib.suppress(json.JSONDecodeError):
            actions.append(json.loads(line).get("event", {}).get("action", "?"))
    return ", ".join(actions)


if __name__ == "__main__":
    start = time.monotonic()
    code = run_demo(store="aws" if "--store=aws" in sys.argv else "vault")
    print(f"[demo] finished in {time.monotonic() - start:.1f}s", flush=True)
    sys.exit(code)
