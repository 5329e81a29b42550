"""A faithful local simulator of the Langfuse public API (v4.16.0 snapshot), for tests and demos.

`Simulator` runs it in-process; `python -m devstack.langfuse_sim` runs it as a process and prints one
JSON bootstrap line; `SimulatorControl` (imported lazily: it pulls in httpx) drives the `/_sim/` controls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from devstack.langfuse_sim.server import Simulator

if TYPE_CHECKING:
    from devstack.langfuse_sim.control import SimulatorControl

__all__ = ["Simulator", "SimulatorControl"]


def __getattr__(name: str) -> Any:
    if name == "SimulatorControl":
        from devstack.langfuse_sim.control import SimulatorControl

        return SimulatorControl
    raise AttributeError(name)
