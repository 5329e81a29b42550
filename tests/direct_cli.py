"""``python -m tests.direct_cli rotate|emergency|reconcile|fleet --config FILE --project NAME``.

The command line's ``rotate`` always runs through Prefect (~10 s per process on the CI box); the
crash matrix runs the same checklist with the in-process ``DirectRunner`` instead, in a child
process that can be SIGKILLed, and prints the same output (the ``--json`` object last). ``fleet``
runs ``rotate --all`` without Prefect (``flows.fleet.run.run_fleet``) over the configured entries and
prints the fleet's object; ``--project`` is ignored there.
"""

from __future__ import annotations

import argparse
import sys

from flows.cli.output import print_result
from flows.config.model import load_config
from flows.fleet.run import run_fleet
from flows.rotation.entry_run import execute
from flows.rotation.runners import DirectRunner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="direct_cli")
    parser.add_argument("kind", choices=["rotate", "emergency", "reconcile", "fleet"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--project", required=True)
    args = parser.parse_args(argv)
    if args.kind == "fleet":
        fleet = run_fleet(load_config(args.config), config_path=args.config)
        print(fleet.to_json_line())
        return int(fleet.exit_code)
    result = execute(args.kind, args.project, args.config, DirectRunner())
    print_result(result, as_json=True)
    return int(result.exit_code)


if __name__ == "__main__":
    sys.exit(main())
