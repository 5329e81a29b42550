"""``langfuse-rotate``: the command line (docs/command-line.md pins commands, exit codes and ``--json``).

Each subcommand is one ``Command`` in ``COMMANDS``: its arguments and the function that runs it.
Prefect is imported only by the commands that use it, so an emergency run without a reachable
Prefect server starts in well under a second.

Output: the tool's own human lines go to stdout, or to stderr with ``--json`` (stdout then holds
only the one JSON object, so ``| jq`` works). Every run writes exactly one final audit line,
bad input included (``flows.audit``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

from flows.cli import inventory as inventory_cli
from flows.cli.output import PROG, print_result, result_from_state, say_if_embedded
from flows.models import ExitCode, RotationResult
from flows.redact import scrub

EXIT_CODES = """exit codes:
  0  done: rotated, contained, reconciled, or a clean dry run
  1  failed; everything was rolled back and the old pair is still current and valid
  2  bad input (usage, configuration, unknown project); nothing was changed
  3  another rotation of the same key is in progress; nothing was changed
  4  done but needs a person (revoked key still accepted, consumers that did not switch after an
     emergency, an audit line that could not be written, a dry run that finds the rotation cannot
     proceed; nothing was changed by a dry run)
"""


def _defaults_for_prefect() -> None:
    # The embedded server migrates its database on first start (20 s+ on 2 cores): the default
    # 20 s start-up timeout is too tight. An offline machine should not try to send telemetry.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's console lines (server start-up, flow and task run states) belong in the run's
    # logs (they still go there through Prefect's API handler), not between the tool's lines.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line (and exit code 2, as argparse already does), and are audited."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}
        """The subcommands' parsers, by name (the top-level parser's)."""

    def check_options(self, argv: Sequence[str]) -> None:
        """A mistyped option is named first, with the closest known one (argparse would first say
        that a required option is missing: ``rotate --projct a`` is about ``--projct``)."""
        import difflib

        unknown: list[str] = []
        takes_value = False
        for token in argv:
            if token == "--":
                break
            if takes_value:
                takes_value = False
                continue
            if not token.startswith("--"):
                continue
            name, has_value, _ = token.partition("=")
            action = self._option(name)
            if action is None:
                unknown.append(name)
            else:
                takes_value = action.nargs != 0 and not has_value
        if unknown:
            known = sorted(o for o in self._option_string_actions if o.startswith("--"))
            close = difflib.get_close_matches(unknown[0], known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            self.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")

    def _option(self, name: str) -> argparse.Action | None:
        """The action ``name`` selects: exactly, or as argparse's unique abbreviation."""
        if name in self._option_string_actions:
            return self._option_string_actions[name]
        matches = {a for o, a in self._option_string_actions.items() if o.startswith(name)}
        return matches.pop() if len(matches) == 1 else None

    def error(self, message: str) -> NoReturn:
        from flows.audit import audit_failure

        audit_failure(self.prog.removeprefix(f"{PROG} ") or "usage", None, message, outcome="bad_input")
        self.exit(int(ExitCode.BAD_INPUT), f"{self.prog}: error: {message} (see --help)\n")


@dataclass(frozen=True)
class Command:
    """One subcommand: its help, its arguments and what runs it (returns the exit code)."""

    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Output], int]
    exit_codes: str = EXIT_CODES


class Output:
    """Where the tool's human lines go: stdout, or stderr when ``--json`` keeps stdout for JSON."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.human: TextIO = sys.stderr if as_json else sys.stdout
        self.started = time.monotonic()

    def say(self, line: str) -> None:
        print(line, file=self.human, flush=True)

    def json(self, line: str) -> None:
        print(line, file=sys.stdout, flush=True)

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 3)


# --- commands -----------------------------------------------------------------------------------


def _rotate_arguments(parser: argparse.ArgumentParser) -> None:
    from flows.cli.fleet import concurrency_arg

    _common(parser)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--project", help="the configured entry (one key) to rotate")
    target.add_argument("--all", action="store_true", help="every entry, concurrently (README: Fleet rotation)")
    parser.add_argument("--dry-run", action="store_true", help="check everything and print the plan; change nothing")
    parser.add_argument(
        "--concurrency", type=concurrency_arg, help="with --all: entries in flight at once (default fleet.concurrency)"
    )


def _emergency_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--project", required=True, help="the configured entry whose key leaked")
    parser.add_argument("--public-key", help="the compromised public key (default: the key in the store)")
    parser.add_argument(
        "--no-prefect",
        action="store_true",
        help="run in-process without Prefect (automatic when the configured Prefect server does not answer)",
    )


def _reconcile_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--project", help="one configured entry (default: all)")


DEMO_STORE_CHOICES = ["vault", "aws"]
"""The stores the demo can start (``devstack.demo.DEMO_STORES``, not imported here: ~0.5 s at each start)."""


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", choices=DEMO_STORE_CHOICES, default="vault", help="secret store to use")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")


def _sandbox_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", choices=DEMO_STORE_CHOICES, default="vault", help="secret store to use")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="configuration file (default: $LANGFUSE_ROTATE_CONFIG)")
    parser.add_argument(
        "--json", action="store_true", help="print only the result as one JSON object on stdout (the rest on stderr)"
    )


def _run_rotate(args: argparse.Namespace, out: Output) -> int:
    if args.all:
        from flows.cli.fleet import rotate_all_command

        return rotate_all_command(args, PROG, say=out.say, emit_json=out.json)
    path, config = _load(args)
    if args.dry_run:
        return _print_and_exit(_dry_run(args, config), "rotate --dry-run", out)
    if not _prefect_usable(out, fallback=None):
        return _prefect_down(args, out)
    say_if_embedded(out.say)
    from flows.rotate import rotate

    try:
        state = rotate(project=args.project, config_path=path, return_state=True)
    except RuntimeError as exc:  # the server went away during the run
        return _prefect_failed(args, out, exc)
    return _print_and_exit(result_from_state(state, args.project), "rotate", out)


def _run_emergency(args: argparse.Namespace, out: Output) -> int:
    path, config = _load(args)
    if args.no_prefect or not _prefect_usable(out, fallback="running without Prefect"):
        from flows.rotation.entry_run import execute
        from flows.rotation.runners import DirectRunner

        result = execute(
            "emergency", args.project, path, DirectRunner(), compromised_public_key=args.public_key, config=config
        )
        return _print_and_exit(result, "emergency", out)
    from flows.prefect.rest import prefect_api_url

    url = prefect_api_url()
    if url:
        # A server answered: contain in this process now, recorded as a flow run over REST
        # (flows.prefect.recorded); importing prefect first would cost ~2 s before anything is contained.
        from connectors.prefect_api import PrefectApi
        from flows.prefect.recorded import emergency_recorded

        auth, key = os.environ.get("PREFECT_API_AUTH_STRING"), os.environ.get("PREFECT_API_KEY")
        api = PrefectApi(url, auth_string=auth, api_key=key)
        recorded = emergency_recorded(api, config, args.project, path, args.public_key)
        return _print_and_exit(recorded, "emergency", out)
    say_if_embedded(out.say)
    from flows.emergency import emergency

    try:
        state = emergency(project=args.project, config_path=path, public_key=args.public_key, return_state=True)
    except RuntimeError as exc:
        return _prefect_failed(args, out, exc)
    return _print_and_exit(result_from_state(state, args.project), "emergency", out)


def _respond_arguments(parser: argparse.ArgumentParser) -> None:
    from flows.cli import respond as respond_cli

    respond_cli.add_arguments(parser)


def _run_respond(args: argparse.Namespace, out: Output) -> int:
    from flows.cli import respond as respond_cli

    path, config = _load(args)
    return respond_cli.run(args, path, config, out.say)


def _run_reconcile(args: argparse.Namespace, out: Output) -> int:
    from flows.config.model import RotationConfig
    from flows.rotation.entry_run import execute
    from flows.rotation.runners import DirectRunner

    path, config = _load(args)
    assert isinstance(config, RotationConfig)
    names = [args.project] if args.project else [e.name for e in config.projects]
    # Without Prefect, but under the same per-entry lock as rotations (Prefect's limit too, when a
    # server answers): a reconcile rolls back what it finds staged, which must not be a live run.
    lock_with_prefect = _prefect_usable(out, fallback="reconciling without Prefect's lock")
    results = [
        execute("reconcile", name, path, DirectRunner(), lock_with_prefect=lock_with_prefect, config=config)
        for name in names
    ]
    for result in results:
        _fill_duration(result, out)
        print_result(result, command="reconcile", file=out.human)
    if out.as_json:
        out.json(results[0].to_json_line() if len(results) == 1 else _json_many(results))
    return max(int(r.exit_code) for r in results)


def _run_demo(args: argparse.Namespace, out: Output) -> int:
    from devstack.demo import run_demo

    return run_demo(store=args.store, as_json=args.json)


def _run_sandbox(args: argparse.Namespace, out: Output) -> int:
    from devstack.sandbox import run_sandbox

    return run_sandbox(store=args.store)


SANDBOX_EXIT_CODES = """exit codes:
  0  stopped by Ctrl-C or SIGTERM, everything it started stopped
  1  the local stack could not start
  2  bad input (usage)
"""


RESPOND_EXIT_CODES = """exit codes:
  0  stopped by SIGTERM or Ctrl-C (containments in flight finished first)
  1  the Prefect server refused the events subscription (authentication)
  2  bad input (usage, configuration, no PREFECT_API_URL); nothing was changed
"""

COMMANDS: list[Command] = [
    Command(
        "rotate",
        "scheduled-style rotation of one configured key",
        "Rotate one configured key: create, store, wait, verify, revoke.",
        _rotate_arguments,
        _run_rotate,
    ),
    Command(
        "emergency",
        "contain a compromised key now",
        "Revoke a compromised key immediately and put a new pair in place.",
        _emergency_arguments,
        _run_emergency,
    ),
    Command(
        "reconcile",
        "finish or clean up what crashed runs left",
        "Roll back or finish unfinished rotations and delete orphan keys.",
        _reconcile_arguments,
        _run_reconcile,
    ),
    Command(
        "respond",
        "contain keys reported by langfuse.key.compromised events, warm (long-running)",
        "Subscribe to langfuse.key.compromised events on the Prefect server (PREFECT_API_URL) and contain each "
        "reported key in this already running process, with the emergency deployment's checks, recorded as a run "
        "of that deployment; runs until SIGTERM or Ctrl-C (docs/responder.md).",
        _respond_arguments,
        _run_respond,
        RESPOND_EXIT_CODES,
    ),
    Command(
        "demo",
        "the whole thing on the embedded local stack",
        "Start a Langfuse simulator, a secret store, a demo consumer and a notification sink on 127.0.0.1, "
        "rotate once through Prefect, stop all.",
        _demo_arguments,
        _run_demo,
    ),
    Command(
        "sandbox",
        "the local stack kept up until Ctrl-C, with a ready config and export lines",
        "Start the demo's local stack (Langfuse simulator with three projects, a secret store, demo consumers, "
        "a notification sink) on 127.0.0.1, write a ready configuration, print the export lines that make "
        "'langfuse-rotate status' work, and keep it up until Ctrl-C or SIGTERM; then stop everything it started.",
        _sandbox_arguments,
        _run_sandbox,
        SANDBOX_EXIT_CODES,
    ),
]


def build_parser() -> _Parser:
    parser = _Parser(
        prog=PROG,
        description="Rotate Langfuse API keys safely (Prefect, Vault, AWS).",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        sub = commands.add_parser(
            command.name,
            help=command.help,
            description=command.description,
            epilog=command.exit_codes,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(sub)
    inventory_cli.add_commands(commands)  # status, report (read-only)
    parser.commands = dict(commands.choices)
    return parser


def _check_options(parser: _Parser, argv: list[str]) -> None:
    """Before argparse's own checks: a mistyped option of the command named, with a close match."""
    at = next((i for i, token in enumerate(argv) if token in parser.commands), None)
    if at is not None:
        command = parser.commands[argv[at]]
        if isinstance(command, _Parser):
            command.check_options(argv[at + 1 :])


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("langfuse-key-rotation")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    _check_options(parser, list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return int(ExitCode.BAD_INPUT)
    if getattr(args, "concurrency", None) is not None and not getattr(args, "all", False):
        parser.error("--concurrency goes with --all")
    if args.command in inventory_cli.COMMANDS:
        return _read_only(args)
    _defaults_for_prefect()
    from flows.audit import cli_initiator, run_context, send_stdout_lines_to
    from flows.errors import BadInputError, ConfigError
    from flows.rotation.progress import print_progress_with

    out = Output(bool(getattr(args, "json", False)))
    fleet = args.command == "rotate" and getattr(args, "all", False)
    print_progress_with(None if fleet else out.say)  # steps and consumer poll rounds (a fleet has its bar)
    if out.as_json:
        send_stdout_lines_to(sys.stderr)  # audit.path "-" must not mix with the JSON object
    command = next(c for c in COMMANDS if c.name == args.command)
    with run_context(args.command, initiator=cli_initiator()):
        try:
            return command.run(args, out)
        except (ConfigError, BadInputError) as exc:
            return _bad_input(args, exc, out)


def _read_only(args: argparse.Namespace) -> int:
    """``status`` and ``report``: no Prefect; one final audit line like every other command."""
    from flows.audit import AuditLog, cli_initiator, run_context
    from flows.config.model import audit_path_for

    with run_context(args.command, initiator=cli_initiator()):
        code = inventory_cli.run_command(args)
        outcome = {0: "done", 2: "bad_input", 4: "needs_attention"}.get(code, "failed")
        entry = getattr(args, "project", None)
        AuditLog(audit_path_for(args.config)).final(args.command, entry, outcome, exit_code=code)
    return code


def _audit_path(args: argparse.Namespace) -> Path:
    from flows.config.model import audit_path_for

    return audit_path_for(getattr(args, "config", None))


def _bad_input(args: argparse.Namespace, exc: Exception, out: Output) -> int:
    from flows.audit import audit_failure
    from flows.errors import exit_code_of

    message = scrub(" ".join(str(exc).split()))
    audit_failure(args.command, getattr(args, "project", None), exc, path=_audit_path(args))
    print(f"{PROG}: error: {message}", file=sys.stderr)
    if out.as_json and getattr(args, "all", False):
        from flows.cli.fleet import bad_input_json

        out.json(bad_input_json(message, out.elapsed()))
    elif out.as_json:
        result = RotationResult(
            status="failed",
            project=getattr(args, "project", None) or "",
            error=message,
            duration_s=out.elapsed(),
            prefect_flow_run_id=None,
        )
        out.json(result.to_json_line())
    return int(exit_code_of(exc))


def _load(args: argparse.Namespace) -> tuple[str, Any]:
    """The configuration, loaded from the path as given (so errors name it as the person typed it),
    and that path made absolute (what a flow run is handed)."""
    from flows.config.model import load_config, resolve_config_path

    given = resolve_config_path(args.config)
    config = load_config(given)
    path = str(given.resolve())
    if getattr(args, "project", None):
        config.entry(args.project)
    return path, config


def _dry_run(args: argparse.Namespace, config: Any) -> RotationResult:
    from flows.audit import audit_result
    from flows.redact import install_redaction
    from flows.rotation.context import EntryContext
    from flows.rotation.dryrun import dry_run

    install_redaction()
    ctx = EntryContext(config, config.entry(args.project), run_label="dry-run")
    try:
        result = dry_run(ctx)
    finally:
        ctx.close()
    audit_result("rotate", result, path=config.audit.path, dry_run=True)
    return result


def _print_and_exit(result: RotationResult, command: str, out: Output) -> int:
    _fill_duration(result, out)
    print_result(result, command=command, file=out.human)
    if out.as_json:
        out.json(result.to_json_line())
    return int(result.exit_code)


def _fill_duration(result: RotationResult, out: Output) -> None:
    """A run that stopped before its checklist timed itself still took time: report it."""
    if not result.duration_s:
        result.duration_s = out.elapsed()


def _json_many(results: list[RotationResult]) -> str:
    import json

    worst = max(results, key=lambda r: int(r.exit_code))
    payload = worst.contract_dict() | {"project": None, "projects": [r.contract_dict() for r in results]}
    return json.dumps(payload)


# --- Prefect reachability -----------------------------------------------------------------------


def _shown(url: str) -> str:
    import httpx

    return str(httpx.URL(url).copy_with(username=None, password=None))  # a URL may carry credentials


def _prefect_usable(out: Output, *, fallback: str | None) -> bool:
    """True when Prefect is usable: the configured server answers, or none is configured
    (the embedded server). ``fallback`` says what the command does instead when it does not."""
    from flows.prefect.rest import prefect_api_url

    url = prefect_api_url()
    if not url:
        return True
    import httpx

    from connectors.tls import shared_ssl_context

    try:
        # The shared TLS context: a context of its own costs ~50 ms before an emergency contains.
        health = httpx.get(f"{url.rstrip('/')}/health", timeout=2.0, verify=shared_ssl_context())
        if health.status_code == 200:
            return True
    except httpx.HTTPError:
        pass
    if fallback:
        out.say(f"{PROG}: Prefect at {_shown(url)} is not reachable: {fallback}")
    return False


def _prefect_down(args: argparse.Namespace, out: Output) -> int:
    from flows.prefect.rest import prefect_api_url

    url = prefect_api_url() or ""
    message = (
        f"Prefect at {_shown(url)} is not reachable: start it, or point PREFECT_API_URL (or the active "
        "Prefect profile) at a server that answers; nothing was changed"
    )
    return _failed_outside_the_run(args, message, out)


def _prefect_failed(args: argparse.Namespace, out: Output, exc: Exception) -> int:
    message = f"Prefect failed during the run: {' '.join(str(exc).split())[:300]}"
    return _failed_outside_the_run(args, message, out)


def _failed_outside_the_run(args: argparse.Namespace, message: str, out: Output) -> int:
    """One line (no traceback), one audit line, exit 1."""
    from flows.audit import audit_failure

    message = scrub(message)
    audit_failure(args.command, args.project, message, path=_audit_path(args), outcome="failed")
    print(f"{PROG}: error: {message}", file=sys.stderr)
    if out.as_json and getattr(args, "all", False):
        from flows.cli.fleet import bad_input_json

        out.json(bad_input_json(message, out.elapsed()))
    elif out.as_json:
        result = RotationResult(status="failed", project=args.project, error=message, duration_s=out.elapsed())
        out.json(result.to_json_line())
    return int(ExitCode.FAILED)


if __name__ == "__main__":
    sys.exit(main())
