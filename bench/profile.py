"""``python -m bench.profile [--seconds S]``: where the daemon spends its hot path.

Attaches ``py-spy`` (the ``bench`` extra) to a real ``coordd run`` while the bench's
own clients load it, one load at a time (unbatched heartbeats, batched heartbeats,
16-client claims), and prints the functions holding the most samples, by own time and
by total time. The raw collapsed stacks are kept in ``bench/out/profile-<load>.txt``.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import workers
from bench.harness import BenchDaemon, load_items, request
from bench.scenarios import MAX_MSGS

HERE = Path(__file__).resolve().parent


def _loads(d: BenchDaemon) -> dict[str, tuple[Callable[..., Any], list[tuple[Any, ...]]]]:
    items = load_items(d, 800, agents=8)
    single = [
        [request("heartbeat", agent_id=a, work_item_id=w, lease=lease) for a, w, lease in items
         if a == f"a{k}"]
        for k in range(8)
    ]  # fmt: skip
    batch = [
        [request("heartbeat_batch", agent_id=f"a{k}", items=[[w, lease] for a, w, lease in items
                 if a == f"a{k}"])]
        for k in range(8)
    ]  # fmt: skip
    claim = request("claim", agent_id="a0", work_type="bench", description="d" * 100)
    return {
        "unbatched": (workers.one_way_sender, [(d.agent_endpoint, p, MAX_MSGS) for p in single]),
        "batched": (workers.one_way_sender, [(d.agent_endpoint, p, MAX_MSGS) for p in batch]),
        "claims": (
            workers.closed_loop,
            [(d.agent_endpoint, [claim], 8, MAX_MSGS, False) for _ in range(2)],
        ),
    }


def summarize(collapsed: Path, top: int = 15) -> str:
    """Top functions by own samples and by inclusive samples from py-spy's raw output."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    out = [f"{samples} samples", "own time:"]
    out += [f"  {100 * n / samples:5.1f}%  {f}" for f, n in own.most_common(top)]
    out.append("total time:")
    out += [f"  {100 * n / samples:5.1f}%  {f}" for f, n in total.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy is missing: pip install -e '.[bench]'", file=sys.stderr)
        return 1
    d = BenchDaemon({"stale_threshold": 3600, "fsync": "always"})
    try:
        d.start()
        assert d.proc is not None
        for name, (target, args_list) in _loads(d).items():
            if args.only and name not in args.only:
                continue
            out = HERE / "out" / f"profile-{name}.txt"
            out.parent.mkdir(exist_ok=True)
            cmd = [
                spy, "record", "--pid", str(d.proc.pid), "--duration", str(int(args.seconds)),
                "--rate", "500", "--format", "raw", "--output", str(out), "--nonblocking",
            ]  # fmt: skip

            def spy_on(cmd: list[str] = cmd) -> int:
                return subprocess.run(
                    cmd, capture_output=True, timeout=args.seconds + 60
                ).returncode

            rc, _ = workers.run_workers(target, args_list, args.seconds + 1.0, spy_on)
            print(f"== {name} (py-spy rc {rc})")
            if out.exists():
                print(summarize(out))
    finally:
        d.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
