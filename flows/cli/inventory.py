"""The ``status`` and ``report`` commands of ``langfuse-rotate`` (read-only; no Prefect needed).

Exit codes: ``status`` 0, or 1 when something could not be read (named on stderr); ``report``
0 no findings, 4 findings, 1 could not read what it needs (store or Langfuse unreachable, named),
2 bad input. With ``--json`` stdout holds only the one JSON object (human lines go to stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from flows.models import ExitCode
from flows.redact import scrub

PROG = "langfuse-rotate"
COMMANDS = ("status", "report")


STATUS_EXIT_CODES = """exit codes:
  0  everything was read
  1  something could not be read (a store, Langfuse, the organization key): named on stderr
  2  bad input (usage, configuration, unknown project)
"""
REPORT_EXIT_CODES = """exit codes:
  0  no findings
  1  it could not read what it needs (a store, Langfuse, the organization key): named on stderr
  2  bad input (usage, configuration)
  4  findings
"""


def add_commands(commands: Any) -> None:
    """Register ``status`` and ``report`` on the command line's subparsers."""
    status = commands.add_parser(
        "status",
        help="read-only inventory: each entry's key, age, consumers",
        description="Show every configured key: store, public key, age, last rotation, rotation in flight, "
        "consumers, Langfuse keys of the project, and whether the stored pair authenticates.",
        epilog=STATUS_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument("--config", help="configuration file (default: $LANGFUSE_ROTATE_CONFIG)")
    status.add_argument("--project", help="one configured entry (default: all)")
    status.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    report = commands.add_parser(
        "report",
        help="compliance findings (exit 0 none, 4 findings)",
        description="Check keys and memberships against the policy: key-overdue, key-due-soon, stray-key, "
        "shared-key, wrong-scope, rotation-stuck, consumer-drift, access, location-collision, "
        "unsafe-project-name, plaintext-transport.",
        epilog=REPORT_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument("--config", help="configuration file (default: $LANGFUSE_ROTATE_CONFIG)")
    report.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    report.add_argument("--markdown", metavar="FILE", help="also write the report as markdown to FILE")


def run_command(args: argparse.Namespace) -> int:
    from flows.config.model import load_config
    from flows.errors import ConfigError

    try:
        config = load_config(args.config, warn=False)  # both show the plain-text risks themselves
        if getattr(args, "project", None):
            config.entry(args.project)
    except ConfigError as exc:
        return _bad_input(str(exc), as_json=args.json)
    markdown = getattr(args, "markdown", None)
    if markdown and not Path(markdown).resolve().parent.is_dir():
        return _bad_input(f"--markdown {markdown}: no such directory", as_json=args.json)
    if args.command == "status":
        return _status(config, args)
    return _report(config, args)


def _status(config: Any, args: argparse.Namespace) -> int:
    from flows.compliance.inventory import collect_inventory, problem_lines, status_lines

    inventory = collect_inventory(config, only=args.project)
    _human(status_lines(inventory), as_json=args.json)
    if args.json:
        data = inventory.contract_dict()
        if inventory.errors:
            data["error"] = scrub("; ".join(inventory.errors))
        print(json.dumps(data))
    _could_not_read(problem_lines(inventory))
    return int(ExitCode.FAILED if inventory.errors else ExitCode.OK)


def _report(config: Any, args: argparse.Namespace) -> int:
    from flows.compliance.report import collect_report, report_lines, report_markdown
    from flows.prefect.events import emit_report_events

    report = collect_report(config)
    if args.markdown:
        try:
            Path(args.markdown).write_text(report_markdown(report) + "\n")
        except OSError as exc:
            report.errors.append(f"--markdown {args.markdown}: {exc.strerror}")
    emit_report_events(report, [e.name for e in config.projects])
    _human(report_lines(report), as_json=args.json)
    if args.json:
        print(json.dumps(report.contract_dict()))
    _could_not_read(report.problems)
    return int(report.exit_code)


def _could_not_read(problems: list[str]) -> None:
    """Each problem once, one line each, on stderr (the human output only says what is unknown)."""
    for problem in problems:
        print(f"{PROG}: error: could not read {scrub(problem)}", file=sys.stderr)


def _human(lines: list[str], *, as_json: bool) -> None:
    stream = sys.stderr if as_json else sys.stdout
    for line in lines:
        print(scrub(line), file=stream)


def _bad_input(message: str, *, as_json: bool) -> int:
    print(f"{PROG}: error: {scrub(message)}", file=sys.stderr)
    if as_json:
        print(json.dumps({"error": scrub(message)}))
    return int(ExitCode.BAD_INPUT)
