"""``python -m bench.run [--quick] [--only NAME ...]``: the whole bench in one run.

The references (raw pyzmq, raw fsync, the Redis peer) run first, in the same run as the
scenarios, so every ratio compares figures from the same machine at the same moment.
A full run refreshes the figures in BENCHMARKS.md; ``--quick`` (the test suite's smoke
check) writes only ``bench/results.json`` unless ``--markdown`` is given.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import report
from bench.scenarios import FULL, QUICK, Bench

HERE = Path(__file__).resolve().parent
STEPS: list[tuple[str, Callable[[Bench], object]]] = [
    ("ref_one_way", Bench.ref_one_way),
    ("ref_echo", Bench.ref_echo),
    ("ref_fsync", Bench.ref_fsync),
    ("peer", Bench.redis_peer),
    ("s1", lambda b: b.ingest(batched=False)),
    ("s2", lambda b: b.ingest(batched=True)),
    ("s3", Bench.claim_rtts),
    ("s4", Bench.claim_throughput),
    ("s5", Bench.tick),
    ("s678", Bench.big_daemon),
    ("s9", Bench.ai_isolation),
]
REFS = {"ref_one_way", "ref_echo", "ref_fsync"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small N, about a minute")
    ap.add_argument("--only", nargs="*", help=f"steps to run: {' '.join(s for s, _ in STEPS)}")
    ap.add_argument("--out", type=Path, default=HERE / "results.json")
    ap.add_argument("--markdown", type=Path, default=None, help="BENCHMARKS.md to refresh")
    args = ap.parse_args(argv)
    # A bench stopped by SIGTERM (a timeout, CI) unwinds like Ctrl-C, so every daemon
    # and peer it started is stopped by its ``finally`` instead of being left running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sizes = QUICK if args.quick else FULL
    md = args.markdown or (None if args.quick or args.only else HERE.parent / "BENCHMARKS.md")
    bench = Bench(sizes)
    info = report.machine()
    started = time.monotonic()
    failed = []
    try:
        for name, step in STEPS:
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
    report.write_json(args.out, bench.results)
    print(f"\nwrote {args.out} ({len(bench.results)} figures) in {info['seconds']:.0f} s")
    if md is not None:
        mode = "bench-quick" if args.quick else "bench"
        report.refresh_markdown(md, report.markdown(bench.results, info, bench.notes, mode))
        print(f"refreshed {md}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
