"""``langfuse-rotate sandbox``: the demo's local stack, kept up until Ctrl-C, with a ready configuration.

Starts on 127.0.0.1 what ``langfuse-rotate demo`` starts: the Langfuse API simulator (three
projects), a secret store (an OpenBao dev server, or moto's Secrets Manager with ``--store aws``),
a JSON notification sink and one demo consumer per entry. Two entries (``chatbot-prod``,
``search-prod``) hold their project's key in the store; the third project has a key no entry
covers, so ``report`` has something to say. It writes ``rotation.yaml`` into a directory of its own
under the state directory (``$XDG_STATE_HOME/langfuse-rotate/sandbox/<store>-<random>/``, else
``~/.local/state/...``; the audit log goes beside it), prints ``export`` lines for that file and
every variable it refers to, and three commands to try. SIGINT or SIGTERM stops everything it
started and removes that directory.

The credentials it prints are the sandbox's own, made up when it starts (the simulator's
organization key, the dev server's root token, moto's ``testing``); they die with it.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from pydantic import SecretStr

from connectors.keypair import KeyPair
from connectors.store import SecretLocation
from devstack import demo
from devstack.demo import say

ENTRIES = ("chatbot-prod", "search-prod")
"""One entry per project, in the simulator's project order; the project after them has no entry."""
PROJECTS = len(ENTRIES) + 1
READY_LINE = "running; Ctrl-C (or SIGTERM) stops everything it started"


class _Stop(Exception):
    """SIGINT or SIGTERM arrived."""


@dataclass(frozen=True)
class Sandbox:
    """What is running: the configuration file and the environment it needs."""

    directory: Path
    config_path: Path
    exports: dict[str, str]


def run_sandbox(*, store: str = "vault") -> int:
    """Start the stack with ``store`` (a kind of ``devstack.demo.DEMO_STORES``), print how to use it,
    serve until SIGINT or SIGTERM, stop everything. The exit code: 0 after a clean stop, 1 when the
    stack could not start."""
    demo._label[0] = "sandbox"
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.ExitStack() as stack:
            try:
                sandbox, sink = _start(stack, store)
                _print_usage(sandbox)
                say(READY_LINE)
                _serve(sink)
            except _Stop:
                pass
            except (OSError, RuntimeError) as exc:
                print(f"langfuse-rotate sandbox: error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
                return 1
            finally:
                for sig in previous:  # a second Ctrl-C must not cut the clean-up short
                    signal.signal(sig, signal.SIG_IGN)
                say("stopping everything the sandbox started")
        say("stopped")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


def _start(stack: contextlib.ExitStack, store_kind: str) -> tuple[Sandbox, Any]:
    from devstack.consumer import start_consumer_process
    from devstack.langfuse_sim import Simulator
    from devstack.sinks import JsonSink
    from flows.state import state_dir

    directory = _own_directory(state_dir() / "sandbox", store_kind)
    stack.callback(shutil.rmtree, directory, ignore_errors=True)

    sim = stack.enter_context(Simulator(projects=PROJECTS))
    boot = sim.bootstrap
    say(f"Langfuse API simulator at {sim.url} with {PROJECTS} projects")
    sink = stack.enter_context(JsonSink())
    say(f"notifications go to a local JSON sink at {sink.url}")
    store, started = demo.start_demo_store(stack, store_kind)

    entries = list(zip(ENTRIES, boot["projects"], strict=False))
    for name, project in entries:
        pair = KeyPair(public_key=project["public_key"], secret_key=SecretStr(project["secret_key"]))
        store.seed(SecretLocation(path=f"langfuse/{name}"), pair, sim.url)

    def consumer(name: str) -> Any:
        return start_consumer_process(
            name=f"{name}-api",
            path=f"langfuse/{name}",
            langfuse_host=sim.url,
            restart_delay_s=1.0,
            **started.consumer_args,
        )

    with ThreadPoolExecutor(max_workers=len(entries)) as pool:  # each loads the langfuse SDK: ~1 s
        futures = [pool.submit(consumer, name) for name, _ in entries]
        consumers = []
        for future in futures:
            with contextlib.suppress(Exception):  # one that failed is raised below, after the others are kept
                consumers.append(stack.enter_context(future.result()))
        for future in futures:
            future.result()

    exports = {"LANGFUSE_ORG_PUBLIC_KEY": boot["org_public_key"], "LANGFUSE_ORG_SECRET_KEY": boot["org_secret_key"]}
    exports |= started.variables(_realistic) | started.client_env
    section = started.file_section(_realistic)
    projects = []
    for (name, project), running in zip(entries, consumers, strict=True):
        projects.append(
            {
                "name": name,
                "project_id": project["id"],
                "store": "main",
                "path": f"langfuse/{name}",
                "consumers": [
                    {
                        "name": running.name,
                        "health_url": running.health_url,
                        "restart_url": running.restart_url,
                        "public_key_field": "langfuse_public_key",
                    }
                ],
                "wait_timeout_s": 60,
                "grace_period_s": 0,
                "canary_timeout_s": 30,
                "revoke_recheck_s": 5,
            }
        )
        say(
            f"entry {name}: project {project['name']} ({project['id']}), key {project['public_key']} in "
            f"{store.location_label(SecretLocation(path=f'langfuse/{name}'))}, consumer {running.name} at {running.url}"
        )
    for project in boot["projects"][len(entries) :]:
        say(f"project {project['name']} ({project['id']}) has a key no entry covers: report names it")
    config = {
        "langfuse": {
            "host": sim.url,
            "org_public_key": "${LANGFUSE_ORG_PUBLIC_KEY}",
            "org_secret_key": "${LANGFUSE_ORG_SECRET_KEY}",
        },
        "stores": {"main": section},
        "projects": projects,
        "notify": {"urls": [sink.apprise_url("/hook")]},
        "audit": {"path": str(directory / "audit.jsonl")},
    }
    config_path = directory / "rotation.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    say(f"configuration: {config_path} (the audit log goes beside it; the folder is removed when the sandbox stops)")
    return Sandbox(directory, config_path, {"LANGFUSE_ROTATE_CONFIG": str(config_path), **exports}), sink


def _realistic(variable: str) -> str:
    """The variable a real configuration would use (``VAULT_TOKEN``, as in the README)."""
    return variable.removeprefix("DEMO_")


def _own_directory(parent: Path, store_kind: str) -> Path:
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{store_kind}-", dir=parent))


def _print_usage(sandbox: Sandbox) -> None:
    prog = _prog()
    lines = [
        "",
        "In another shell (these credentials are the sandbox's own and die with it):",
        "",
        *[f"export {name}={shlex.quote(value)}" for name, value in sandbox.exports.items()],
        "",
        "then try:",
        "",
        f"{prog} status          # each entry's key, age, consumers",
        f"{prog} report          # compliance findings (one on purpose: a key no entry covers)",
        f"{prog} rotate --all    # rotate both entries; run it again: nothing to rotate",
        "",
    ]
    print("\n".join(lines), flush=True)


def _prog() -> str:
    """The command as the user ran it (``.venv/bin/langfuse-rotate`` in the README), so the lines
    printed work as they are."""
    invoked = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    return str(invoked) if invoked is not None and invoked.name == "langfuse-rotate" else "langfuse-rotate"


def _serve(sink: Any) -> None:
    """Until a signal: say each notification as it arrives."""
    for note in _notifications(sink):
        body = note.json if isinstance(note.json, dict) else {}
        say(f"notification: [{body.get('type')}] {body.get('title')}")


def _notifications(sink: Any) -> Iterator[Any]:
    seen = 0
    while True:
        received = sink.received()
        yield from received[seen:]
        seen = len(received)
        time.sleep(0.5)
