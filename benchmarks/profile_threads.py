"""Run a module under cProfile in every thread: ``python benchmarks/profile_threads.py OUT -m MODULE ARGS``.

cProfile sees only the thread that enabled it, and a fleet rotates its entries in a thread pool:
the profilers count each thread's CPU time (``time.thread_time``), not the time it waits;
each new thread gets its own profiler, and all of them are written together to ``OUT`` (a pstats
file: ``python -m pstats OUT``, or ``pstats.Stats(OUT).sort_stats("cumulative")``) at exit.
"""

from __future__ import annotations

import atexit
import cProfile
import os
import pstats
import runpy
import sys
import threading
import time
from types import FrameType
from typing import Any

_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()


def _start(frame: FrameType, event: str, arg: Any) -> None:
    """The first profile event of a new thread: hand the thread to a profiler of its own."""
    sys.setprofile(None)
    profile = cProfile.Profile(time.thread_time)
    with _lock:
        _profiles.append(profile)
    profile.enable()


def _write(out: str) -> None:
    with _lock:
        profiles = list(_profiles)
    stats = pstats.Stats(profiles[0])
    for profile in profiles[1:]:
        stats.add(profile)
    stats.dump_stats(out)


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[2] != "-m":
        raise SystemExit(__doc__)
    out, module = sys.argv[1], sys.argv[3]
    sys.path.insert(0, os.getcwd())  # the checkout the command runs in, as `python -m` would
    sys.argv = [module, *sys.argv[4:]]
    threading.setprofile(_start)
    main_profile = cProfile.Profile(time.thread_time)
    _profiles.append(main_profile)
    atexit.register(_write, out)
    main_profile.enable()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
