"""``langfuse-rotate``: the command line (CONTRACTS.md pins commands, exit codes and ``--json``).

Prefect is imported only by the commands that use it, so an emergency run without a reachable
Prefect server starts in well under a second.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import NoReturn

from flows import inventory_cli
from flows.models import ExitCode, RotationResult
from flows.redact import scrub

PROG = "langfuse-rotate"


def _defaults_for_prefect() -> None:
    # The embedded server migrates its database on first start (20 s+ on 2 cores): the default
    # 20 s start-up timeout is too tight. An offline machine should not try to send telemetry.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line (and exit code 2, as argparse already does)."""

    def error(self, message: str) -> NoReturn:
        self.exit(int(ExitCode.BAD_INPUT), f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Rotate Langfuse API keys safely (Prefect, Vault, AWS).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    rotate = commands.add_parser(
        "rotate",
        help="scheduled-style rotation of one configured key",
        description="Rotate one configured key: create, store, wait, verify, revoke.",
    )
    _common(rotate)
    rotate.add_argument("--project", required=True, help="the configured entry (one key) to rotate")
    rotate.add_argument("--dry-run", action="store_true", help="check everything and print the plan; change nothing")

    emergency = commands.add_parser(
        "emergency",
        help="contain a compromised key now",
        description="Revoke a compromised key immediately and put a new pair in place.",
    )
    _common(emergency)
    emergency.add_argument("--project", required=True, help="the configured entry whose key leaked")
    emergency.add_argument("--public-key", help="the compromised public key (default: the key in the store)")
    emergency.add_argument(
        "--no-prefect",
        action="store_true",
        help="run in-process without Prefect (automatic when PREFECT_API_URL does not answer)",
    )

    reconcile = commands.add_parser(
        "reconcile",
        help="finish or clean up what crashed runs left",
        description="Roll back or finish unfinished rotations and delete orphan keys.",
    )
    _common(reconcile)
    reconcile.add_argument("--project", help="one configured entry (default: all)")

    demo = commands.add_parser(
        "demo",
        help="the whole thing on the embedded local stack",
        description="Start a Langfuse simulator, a secret store, a demo consumer and a "
        "notification sink on 127.0.0.1, rotate once through Prefect, stop all.",
    )
    demo.add_argument("--store", choices=["vault", "aws"], default="vault", help="secret store to use")
    demo.add_argument("--json", action="store_true", help="print the result as JSON on the last line")
    inventory_cli.add_commands(commands)
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="configuration file (default: $LANGFUSE_ROTATE_CONFIG)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in inventory_cli.COMMANDS:
        return inventory_cli.run_command(args)  # read-only; no Prefect
    _defaults_for_prefect()
    from flows.config import ConfigError
    from flows.procedure import BadInputError

    started = time.monotonic()
    try:
        if args.command == "demo":
            from devstack.demo import run_demo

            return run_demo(store=args.store, as_json=args.json)
        if args.command == "reconcile":
            return _reconcile(args)
        result = _rotate(args) if args.command == "rotate" else _emergency(args)
    except (ConfigError, BadInputError) as exc:
        return _bad_input(args, str(exc), started)
    _print_result(result, as_json=args.json)
    return int(result.exit_code)


def _bad_input(args: argparse.Namespace, message: str, started: float) -> int:
    print(f"{PROG}: error: {scrub(message)}", file=sys.stderr)
    if getattr(args, "json", False):
        project = getattr(args, "project", None) or ""
        result = RotationResult(
            status="failed",
            project=project,
            error=scrub(message),
            duration_s=round(time.monotonic() - started, 3),
            prefect_flow_run_id=None,
        )
        print(result.to_json_line())
    return int(ExitCode.BAD_INPUT)


def _load(args: argparse.Namespace) -> tuple[str, object]:
    from flows.config import load_config, resolve_config_path

    path = str(resolve_config_path(args.config).resolve())
    config = load_config(path)
    if getattr(args, "project", None):
        config.entry(args.project)
    return path, config


def _rotate(args: argparse.Namespace) -> RotationResult:
    path, config = _load(args)
    if args.dry_run:
        from flows.config import RotationConfig
        from flows.context import EntryContext
        from flows.dryrun import dry_run
        from flows.redact import install_redaction

        install_redaction()
        assert isinstance(config, RotationConfig)
        ctx = EntryContext(config, config.entry(args.project), run_label="dry-run")
        try:
            return dry_run(ctx)
        finally:
            ctx.close()
    from flows.rotate import rotate

    state = rotate(project=args.project, config_path=path, return_state=True)
    return _result_from_state(state, args.project)


def _emergency(args: argparse.Namespace) -> RotationResult:
    path, _ = _load(args)
    if args.no_prefect or not _prefect_reachable():
        from flows.execute import execute
        from flows.runner import DirectRunner

        return execute("emergency", args.project, path, DirectRunner(), compromised_public_key=args.public_key)
    from flows.emergency import emergency

    state = emergency(project=args.project, config_path=path, public_key=args.public_key, return_state=True)
    return _result_from_state(state, args.project)


def _reconcile(args: argparse.Namespace) -> int:
    from flows.config import RotationConfig
    from flows.execute import execute
    from flows.runner import DirectRunner

    path, config = _load(args)
    assert isinstance(config, RotationConfig)
    names = [args.project] if args.project else [e.name for e in config.projects]
    # Without Prefect, but under the same per-entry lock as rotations (Prefect's limit too, when a
    # server answers): a reconcile rolls back what it finds staged, which must not be a live run.
    lock_with_prefect = _prefect_reachable()
    results = [execute("reconcile", name, path, DirectRunner(), lock_with_prefect=lock_with_prefect) for name in names]
    for result in results:
        _print_result(result, as_json=False)
    if args.json:
        print(results[0].to_json_line() if len(results) == 1 else _json_many(results))
    return max(int(r.exit_code) for r in results)


def _json_many(results: list[RotationResult]) -> str:
    import json

    worst = max(results, key=lambda r: int(r.exit_code))
    payload = worst.contract_dict() | {"project": None, "projects": [r.contract_dict() for r in results]}
    return json.dumps(payload)


def _prefect_reachable() -> bool:
    """True when Prefect is usable: a configured server answers, or none is configured (embedded)."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return True
    import httpx

    try:
        return httpx.get(f"{url.rstrip('/')}/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        shown = httpx.URL(url).copy_with(username=None, password=None)  # a URL may carry credentials
        print(f"{PROG}: Prefect at {shown} is not reachable: running without Prefect", file=sys.stderr)
        return False


def _result_from_state(state: object, project: str) -> RotationResult:
    from prefect.client.schemas.objects import State

    assert isinstance(state, State)
    data = state.result(raise_on_failure=False)
    if isinstance(data, RotationResult):
        return data
    from flows.config import ConfigError
    from flows.procedure import BadInputError

    if isinstance(data, ConfigError | BadInputError):
        raise data  # bad input found inside the flow run: exit code 2, as without Prefect
    message = scrub(" ".join(str(data).split())) if data is not None else (state.message or state.name)
    return RotationResult(
        status="failed",
        project=project,
        error=message or "the flow run failed",
        prefect_flow_run_id=str(state.state_details.flow_run_id or "") or None,
    )


def _print_result(result: RotationResult, *, as_json: bool) -> None:
    print(
        f"{PROG} {result.mode} {result.project}: {result.status} in {result.duration_s:.2f}s"
        + (" (without Prefect)" if result.orchestrator == "none" else "")
    )
    for step in result.steps:
        print(f"  {step.step:<18} {step.outcome:<12} {step.duration_s:7.2f}s  {step.detail}")
    if result.old_public_key or result.new_public_key:
        print(
            f"  old {result.old_public_key} -> new {result.new_public_key}; "
            f"store {result.store} {result.store_location} version {result.store_version}"
        )
    if result.lagging_consumers:
        print(f"  still on the old key: {', '.join(result.lagging_consumers)}")
    if result.error:
        print(f"  error: {result.error}")
    if as_json:
        print(result.to_json_line())


if __name__ == "__main__":
    sys.exit(main())
