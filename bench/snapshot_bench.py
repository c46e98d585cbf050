"""How long a snapshot takes, and how long it holds the event loop.

    .venv/bin/python bench/snapshot_bench.py [ITEMS ...]   (default: 100000)

For each size: a state with that many items (half active, a completion per
fourth item), then a synchronous snapshot (what SIGTERM does) and a background
one (fork; what the timer and `coordctl snapshot` do), on real files with fsync,
then how long a start-up takes to load it back.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

from coordd.core.state import State
from coordd.storage.store import FileStore

T0 = 1_750_000_000.0


def build(n: int) -> State:
    st = State()
    for k in range(n):
        now = T0 + k * 0.001
        if k % 2:
            item = st.claim(f"agent_{k % 500}", "build", f"work item number {k}", now, team="core")
            if k % 4 == 1:
                st.complete(item.work_item_id, now, item.agent_id, item.lease, velocity=3)
        else:
            st.add("build", f"work item number {k}", now, priority="high", team="core")
        st.drain()
    return st


def measure(n: int) -> None:
    st = build(n)
    with tempfile.TemporaryDirectory(prefix="snapbench") as d:
        jr = FileStore(Path(d))
        jr.load(State())
        sync = jr.snapshot(st, T0)
        started = time.monotonic()
        assert jr.snapshot_background(st, T0)
        blocked = time.monotonic() - started
        result = None
        while result is None:
            result = jr.poll_snapshot()
            time.sleep(0.001)
        jr.close()
        assert sync.ok and result.ok, (sync, result)
        t0 = time.monotonic()
        loaded = State()
        FileStore(Path(d)).load(loaded)
        load = time.monotonic() - t0
        assert len(loaded.items) == n
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"{n:>9} items  {sync.bytes / 1e6:7.1f} MB  synchronous {sync.seconds * 1000:7.1f} ms"
            f"  | fork: loop blocked {blocked * 1000:6.2f} ms, durable after"
            f" {result.seconds * 1000:7.1f} ms  | start-up load {load * 1000:7.1f} ms"
            f"  (rss {rss:.0f} MB)"
        )


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["100000"]:
        measure(int(arg))
