"""``python -m bench.revocation [--n 100] [--out FILE]``: how soon a holder hears that
its lease is lost (issue 15).

Two figures, p50 and p99 over ``n`` recoveries each, against the target "one tick +
50 ms at p99":

- ``revoke_sdk``: from an item's recovery by the tick (its ``recovered_at``) to the SDK's
  ``lease.lost`` being set. The agent declared a short heartbeat interval, then goes
  silent (its heartbeat thread is slowed down), so the tick recovers it while it lives.
- ``revoke_run``: from an operator's ``recover-stale --work`` (the item's
  ``recovered_at``) to ``coordctl run``'s command receiving SIGTERM (the command writes
  the time it got the signal).

Both clocks are this machine's wall clock (``time.time()`` in coordd, the SDK and the
command). A scenario module of its own: the harness (``bench/run.py``) is untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import BIN, BenchDaemon, Result, percentile
from bench.report import table
from coordd.agent import Agent

TICK = 0.05
STALE_AFTER = 0.2  # the item's own threshold: 4 ticks
TARGET_MS = TICK * 1000 + 50

# The command of `coordctl run`: writes when it got SIGTERM, then leaves.
SIGNALLED = """
import signal, sys, time
def on_term(*_):
    open(sys.argv[1], "w").write(repr(time.time()))
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("up", flush=True)
time.sleep(60)
"""


def _ms(values: list[float]) -> tuple[float, float]:
    s = sorted(values)
    return percentile(s, 50) * 1000, percentile(s, 99) * 1000


def _results(name: str, delays: list[float]) -> list[Result]:
    p50, p99 = _ms(delays)
    target = f"p99 <= one tick + 50 ms ({TARGET_MS:g} ms)"
    return [
        Result(f"{name}_p50", p50, "ms", n=len(delays), params={"tick": TICK}),
        Result(
            f"{name}_p99",
            p99,
            "ms",
            n=len(delays),
            params={"tick": TICK, "target": target, "met": p99 <= TARGET_MS},
        ),
    ]


def sdk_delays(daemon: BenchDaemon, n: int) -> list[float]:
    """Tick recoveries of a live but silent SDK agent: recovery -> ``lease.lost``."""
    delays = []
    agent = Agent(daemon.agent_endpoint, "bench_sdk", heartbeat_interval=0.05)
    try:
        agent._register()  # declares 0.05 s: a 0.2 s threshold is accepted
        agent.heartbeat_interval = 3600.0  # then silent: only the claim's announcement
        for _ in range(n):
            lease = agent.lease("bench", "goes silent", stale_after=STALE_AFTER)
            seen = lease.lost.wait(10) and time.time()
            if not seen:
                raise RuntimeError(f"{lease.work_item_id}: lease.lost not set within 10 s")
            shown = daemon.call("show", work_item_id=lease.work_item_id)["data"]
            delays.append(seen - shown["recovered_at"])
    finally:
        agent.close()
    return delays


def run_delays(daemon: BenchDaemon, n: int, base: Path) -> list[float]:
    """Operator recoveries of ``coordctl run``: recovery -> its command's SIGTERM."""
    script = base / "signalled.py"
    script.write_text(SIGNALLED)
    env = {**os.environ, "COORDD_CONFIG": str(daemon.config_path), "AGENT_ID": "bench_run"}
    delays = []
    for i in range(n):
        mark = base / f"term_{i}"
        proc = subprocess.Popen(
            [str(BIN / "coordctl"), "run", "--description", f"run {i}", "--"]
            + [sys.executable, str(script), str(mark)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stderr is not None and proc.stdout is not None
            wid = proc.stderr.readline().split()[1]  # "claimed work_... for ..."
            assert proc.stdout.readline().strip() == "up"
            _wait_announced(daemon, wid)
            daemon.call("recover_stale", strategy="reassign", work_item_id=wid)
            if proc.wait(15) != 6:
                raise RuntimeError(f"run {i} did not exit 6: {proc.stderr.read()}")
            shown = daemon.call("show", work_item_id=wid)["data"]
            delays.append(float(mark.read_text()) - shown["recovered_at"])
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return delays


def _wait_announced(daemon: BenchDaemon, wid: str, timeout: float = 10.0) -> None:
    """Until the SDK's first heartbeat (sent at once from its heartbeat socket, which is
    where coordd pushes the revocation) has arrived."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        item: dict[str, Any] = daemon.call("show", work_item_id=wid)["data"]
        if item["last_heartbeat"] > item["claimed_at"]:
            return
        time.sleep(0.005)
    raise RuntimeError(f"{wid}: no heartbeat from coordctl run within {timeout}s")


def measure(n: int) -> list[Result]:
    daemon = BenchDaemon(
        {"tick_interval": TICK, "heartbeat_interval": 0.05, "recovery": "reassign"}, name="cbv"
    )
    try:
        daemon.start()
        results = _results("revoke_sdk", sdk_delays(daemon, n))
        results += _results("revoke_run", run_delays(daemon, n, daemon.base))
    finally:
        daemon.close()
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="recoveries per figure")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    results = measure(args.n)
    print(table(results))
    if args.out is not None:
        args.out.write_text(json.dumps([_plain(r) for r in results], indent=2))
    return 0 if all(r.params.get("met", True) for r in results) else 1


def _plain(r: Result) -> dict[str, Any]:
    return {f: getattr(r, f) for f in r.__struct_fields__}


if __name__ == "__main__":
    sys.exit(main())
