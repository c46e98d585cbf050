"""``python -m bench.memory [--quick]``: what churn and a hostile peer cost in memory
(issue 14, findings 5 and 6). A scenario file beside the bench; ``Bench.memory``-style
entry point ``run(bench)`` adds its figures to a ``Bench`` like the other scenarios.

- m1: RSS after 400k claim/release cycles on 100 items (``fsync = never``): memory
  must follow the items held, not the claims made (the deadline heap once kept one
  entry per claim until its threshold passed: ~37 MB per 400k).
- m2: RSS growth while one DEALER sends 60 ``list`` requests for a billion items over
  20k items and never reads, and how long another client's ``status`` takes meanwhile
  (once +543 MB and 357 ms).

Measured on the 2-core dev machine (full sizes), main before issue 14 -> after:
m1 +40.6 MB -> +0.5 MB over 400k cycles; m2 +455 MB, status <= 56 ms -> +22 MB,
status <= 5 ms.
"""

from __future__ import annotations

import argparse
import time

import msgspec
import zmq

from bench.harness import BenchDaemon, pipelined, request
from bench.scenarios import FULL, QUICK, Bench


def claim_release_churn(b: Bench) -> None:
    cycles = 40_000 if b.sizes.quick else 400_000
    d = BenchDaemon({"fsync": "never", "snapshot_interval": 3600}, name="cbm")
    try:
        d.start()
        ctl = d.agent()  # ordered per connection: claim then release of the same item
        ids = [f"m{k:03}" for k in range(100)]
        pipelined(
            ctl, [request("add", work_type="t", description="d", work_item_id=w) for w in ids]
        )
        before = d.rss()
        t0 = time.monotonic()
        for start in range(0, cycles, 10_000):
            payloads = []
            for k in range(start, min(cycles, start + 10_000)):
                w = ids[k % len(ids)]
                payloads.append(request("claim_next", agent_id="churn", work_item_id=w))
                payloads.append(request("release", agent_id="churn", work_item_id=w))
            pipelined(ctl, payloads, timeout=600)
        seconds = time.monotonic() - t0
        after = d.rss()
        ctl.close(0)
        b.add(
            "m1_rss_after_claim_release_cycles",
            after / 2**20,
            "MB",
            n=cycles,
            rss_before_mb=round(before / 2**20, 1),
            growth_mb=round((after - before) / 2**20, 1),
            seconds=round(seconds, 1),
            target="growth < 20 MB",
            met=after - before < 20 * 2**20,
        )
    finally:
        d.close()


def non_reading_peer(b: Bench) -> None:
    items = 2_000 if b.sizes.quick else 20_000
    d = BenchDaemon({"fsync": "never", "snapshot_interval": 3600}, name="cbp")
    try:
        d.start()
        sock = d.agent()
        pipelined(
            sock,
            [
                request("add", work_type="t", description="d" * 100, work_item_id=f"p{k:06}")
                for k in range(items)
            ],
        )
        sock.close(0)
        before = d.rss()
        hostile: zmq.Socket[bytes] = d.ctx.socket(zmq.DEALER)
        hostile.setsockopt(zmq.LINGER, 0)
        hostile.setsockopt(zmq.RCVHWM, 1)
        hostile.connect(d.agent_endpoint)
        big = msgspec.msgpack.encode({"op": "list", "v": 1, "limit": 1_000_000_000})
        waits = []
        for _ in range(60):
            hostile.send(big)
            t0 = time.monotonic()
            d.status()
            waits.append(time.monotonic() - t0)
        after = d.rss()
        hostile.close(0)
        b.add(
            "m2_rss_growth_non_reading_peer",
            (after - before) / 2**20,
            "MB",
            n=60,
            items=items,
            status_max_ms=round(max(waits) * 1000, 1),
            target="growth < 100 MB, status < 1 s",
            met=after - before < 100 * 2**20 and max(waits) < 1.0,
        )
    finally:
        d.close()


def run(b: Bench) -> None:
    claim_release_churn(b)
    non_reading_peer(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    b = Bench(QUICK if args.quick else FULL)
    run(b)
    for r in b.results:
        print(msgspec.json.encode(r).decode())


if __name__ == "__main__":
    main()
