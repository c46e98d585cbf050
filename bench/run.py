"""``python -m bench.run [--quick] [--only NAME ...]``: the whole bench in one run.

The references (raw pyzmq, raw fsync, the Redis peer) run first, in the same run as the
scenarios, so every ratio compares figures from the same machine at the same moment.

What a run writes: ``bench/out/results.json`` (``--out``; bench/out/ is git-ignored) and,
only for a full run of every step, the figures in BENCHMARKS.md and the charts beside it.
``--quick`` (the test suite's smoke check) and ``--only`` never touch a tracked file: their
charts go to bench/out/ too, so the chart code is exercised without rewriting the ones
committed.

A scenario module of its own (a helper's, say) is picked up by name: any
``bench/scenario_<topic>.py`` with ``STEPS = [("name", function), ...]``, each function
taking the ``Bench`` (``bench.sizes.quick``, ``bench.add``, ``bench.skip``, ``bench.refs``).
Its steps run after the built-in ones, in module-name order, and ``--only name`` selects
them like any other.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import bench as bench_pkg
from bench import report
from bench.scenarios import FULL, QUICK, Bench

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
Step = tuple[str, Callable[[Bench], object]]
STEPS: list[Step] = [
    ("ref_one_way", Bench.ref_one_way),
    ("ref_echo", Bench.ref_echo),
    ("ref_fsync", Bench.ref_fsync),
    ("peer", Bench.redis_peer),
    ("s1", lambda b: b.ingest(batched=False)),
    ("s2", lambda b: b.ingest(batched=True)),
    ("sweep", Bench.ingest_sweep),
    ("s3", Bench.claim_rtts),
    ("s4", Bench.claim_throughput),
    ("s5", Bench.tick),
    ("s678", Bench.big_daemon),
    ("s9", Bench.ai_isolation),
]
REFS = {"ref_one_way", "ref_echo", "ref_fsync"}


def all_steps() -> list[Step]:
    """The built-in steps, then those of every ``bench/scenario_*.py`` module."""
    steps = list(STEPS)
    for mod in sorted(pkgutil.iter_modules(bench_pkg.__path__), key=lambda m: m.name):
        if mod.name.startswith("scenario_"):
            module = importlib.import_module(f"bench.{mod.name}")
            steps += list(module.STEPS)
    return steps


def main(argv: list[str] | None = None) -> int:
    steps = all_steps()
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small N, about a minute")
    ap.add_argument("--only", nargs="*", help=f"steps to run: {' '.join(s for s, _ in steps)}")
    ap.add_argument("--out", type=Path, default=OUT / "results.json")
    ap.add_argument("--markdown", type=Path, default=None, help="BENCHMARKS.md to refresh")
    ap.add_argument("--charts", type=Path, default=None, help="where to draw the charts")
    args = ap.parse_args(argv)
    # A bench stopped by SIGTERM (a timeout, CI) unwinds like Ctrl-C, so every daemon
    # and peer it started is stopped by its ``finally`` instead of being left running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    full = not (args.quick or args.only)
    md = args.markdown or (ROOT / "BENCHMARKS.md" if full else None)
    charts_dir = args.charts or (ROOT if full else args.out.parent)
    bench = Bench(QUICK if args.quick else FULL)
    info = report.machine()
    started = time.monotonic()
    failed = []
    try:
        for name, step in steps:
            if args.only and name not in args.only and name not in REFS:
                continue
            print(f"[{time.monotonic() - started:5.1f}s] {name}", flush=True)
            try:
                step(bench)
            except Exception as e:  # one broken scenario must not hide the others
                traceback.print_exc()
                failed.append(name)
                bench.skip(f"{name}_failed", "-", f"{type(e).__name__}: {e}"[:200])
    finally:
        shutil.rmtree(bench.base, ignore_errors=True)
    info["seconds"] = time.monotonic() - started
    version = next((r.params.get("redis") for r in bench.results if r.params.get("redis")), None)
    if version:
        info["redis"] = version
    print()
    print(report.table(bench.results))
    for note in bench.notes:
        print(f"note: {note}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report.write_json(args.out, bench.results)
    print(f"\nwrote {args.out} ({len(bench.results)} figures) in {info['seconds']:.0f} s")
    drawn = report.draw_charts(bench.results, charts_dir)
    if drawn:
        print("drew " + ", ".join(str(p) for p in drawn))
    if md is not None:
        mode = "bench-quick" if args.quick else "bench"
        report.refresh_markdown(md, report.markdown(bench.results, info, bench.notes, mode))
        print(f"refreshed {md}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
