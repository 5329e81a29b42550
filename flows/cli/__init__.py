"""The ``langfuse-rotate`` command line: the main parser, the fleet and inventory commands and their output.

The public names below are imported from their module on first use (PEP 562): importing the
package loads none of its modules, so a command pays only for what it uses.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flows.cli.fleet import bad_input_json as bad_input_json
    from flows.cli.fleet import concurrency_arg as concurrency_arg
    from flows.cli.fleet import print_fleet as print_fleet
    from flows.cli.fleet import rotate_all_command as rotate_all_command
    from flows.cli.inventory import COMMANDS as COMMANDS
    from flows.cli.inventory import add_commands as add_commands
    from flows.cli.inventory import run_command as run_command
    from flows.cli.main import DEMO_STORE_CHOICES as DEMO_STORE_CHOICES
    from flows.cli.main import build_parser as build_parser
    from flows.cli.output import PROG as PROG
    from flows.cli.output import keys_line as keys_line
    from flows.cli.output import print_result as print_result
    from flows.cli.output import result_from_state as result_from_state
    from flows.cli.output import say_if_embedded as say_if_embedded
    from flows.cli.respond import add_arguments as add_arguments
    from flows.cli.respond import run as run

_EXPORTS = {
    "bad_input_json": "fleet",
    "concurrency_arg": "fleet",
    "print_fleet": "fleet",
    "rotate_all_command": "fleet",
    "COMMANDS": "inventory",
    "add_commands": "inventory",
    "run_command": "inventory",
    "DEMO_STORE_CHOICES": "main",
    "build_parser": "main",
    "PROG": "output",
    "keys_line": "output",
    "print_result": "output",
    "result_from_state": "output",
    "say_if_embedded": "output",
    "add_arguments": "respond",
    "run": "respond",
}
"""Each public name and the module that defines it."""

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
