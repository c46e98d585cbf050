"""Scenario cli (issue 16): what one ``coordctl`` call costs a shell agent that calls it in a loop.

``coordctl status`` against a live daemon, as a whole process (interpreter start,
imports, one request, exit), median of several runs, next to two references measured
in the same run: ``python -c pass`` (the interpreter alone) and a Python process that
only imports ``zmq``, ``click`` and ``msgspec`` and exits (the floor of the stack
coordctl needs). Target (issue 16): at most 1.3 x that floor.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from bench.harness import BenchDaemon

if TYPE_CHECKING:
    from bench.scenarios import Bench

TARGET = 1.3
FLOOR = "import zmq, click, msgspec"


class Cost(NamedTuple):
    wall: float  # seconds, median
    cpu: float  # user + system seconds of the process, median (steadier on a busy machine)


def measure(commands: dict[str, list[str]], env: dict[str, str], runs: int) -> dict[str, Cost]:
    """Median wall and CPU time of each command as a fresh process. The commands take
    turns (one run of each per round, after one warm-up round), so a machine that gets
    busier or quieter during the measurement moves every figure alike."""
    walls: dict[str, list[float]] = {name: [] for name in commands}
    cpus: dict[str, list[float]] = {name: [] for name in commands}
    for n in range(runs + 1):
        for name, argv in commands.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            done = subprocess.run(argv, env=env, capture_output=True)
            elapsed = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if done.returncode != 0:
                raise RuntimeError(f"{argv} exited {done.returncode}: {done.stderr[-300:]!r}")
            if n:  # the first round warms the page cache and writes the bytecode cache
                walls[name].append(elapsed)
                cpus[name].append(
                    after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
                )
    return {
        name: Cost(statistics.median(walls[name]), statistics.median(cpus[name]))
        for name in commands
    }


def cli_startup(bench: Bench) -> None:
    runs = 9 if bench.sizes.quick else 31
    python = sys.executable
    coordctl = str(Path(python).parent / "coordctl")
    daemon = BenchDaemon(name="cbcli")
    try:
        daemon.start()
        env = {**os.environ, "COORDD_CONFIG": str(daemon.config_path)}
        env.pop("COORDINATION_DIR", None)
        # As installed (pip, pipx, the .deb): modules run from their bytecode cache. With
        # PYTHONDONTWRITEBYTECODE every call would compile coordd's sources again, which
        # no installed coordctl does; the warm-up run writes the cache.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        costs = measure(
            {
                "bare": [python, "-c", "pass"],
                "floor": [python, "-c", FLOOR],
                "status": [coordctl, "status"],
            },
            env,
            runs,
        )
        bare, floor, status = costs["bare"], costs["floor"], costs["status"]
    finally:
        daemon.close()
    bench.add("cli_python_c_pass", bare.wall * 1000, "ms", n=runs, cpu_ms=round(bare.cpu * 1e3))
    bench.add(
        "cli_coordctl_status",
        status.wall * 1000,
        "ms",
        reference="python -c 'import zmq, click, msgspec'",
        reference_value=floor.wall * 1000,
        n=runs,
        target=f"<= {TARGET} x the floor",
        met=status.wall <= TARGET * floor.wall,
        vs_python_c_pass=round(status.wall / bare.wall, 2),
        cpu_ms=round(status.cpu * 1e3),
        floor_cpu_ms=round(floor.cpu * 1e3),
    )


# Picked up by bench/run.py (any bench/scenario_<topic>.py): ``--only cli``.
STEPS = [("cli", cli_startup)]
