"""``python -m bench.web [--quick]``: the dashboard's cost and what it delivers.

The same run, one daemon, 8 agents heartbeating at full speed (one-way, unbatched, as
in s1), in turns: without the web process, with ``coordd web`` and 50 connected pages,
and again without and with (the pairs are averaged, so drift on a shared machine falls
on both sides). Figures: the daemon's heartbeat ingest in each case and its ratio
(issue 20: within 10 %), the daemon's CPU time per heartbeat applied in each case (what
the daemon itself spends, whatever else shares the cores), and the views delivered
per second to the 50 pages. Then the
same 50 pages while a claimer creates items as fast as the daemon takes them: the
views per page stay at or under the cap (4/s) however fast events come. Then scale:
``coordd web``'s full view of a daemon holding ``--items`` items (end to end), and the
copy holding ``--mirror`` items (default a million): load, memory, and what each of
the page's queries costs there, first and cached.

A scenario module beside the harness (bench/harness.py, bench/workers.py); it prints
its figures and writes them to ``bench/results-web.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from bench import workers
from bench.harness import BIN, BenchDaemon, load_items, request

HERE = Path(__file__).resolve().parent
PAGES = 50
SENDERS = 8
ITEMS_PER_AGENT = 10
MAX_MSGS = 100_000_000


class WebProcess:
    """``coordd web`` on an ephemeral port, for the bench's daemon."""

    def __init__(self, d: BenchDaemon) -> None:
        self.log_path = d.base / "web.log"
        env = {**os.environ, "COORDD_CONFIG": str(d.config_path)}
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child owns it; one per start
        self.proc = subprocess.Popen(
            [str(BIN / "coordd"), "web", "--listen", "127.0.0.1:0"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 30
        while True:
            m = re.search(r"serving http://(127\.0\.0\.1:\d+)/", self.log_path.read_text())
            if m:
                self.address = m.group(1)
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"coordd web did not start:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        self.token = (Path(d.config["state_dir"]) / "web-read.token").read_text().strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Pages:
    """``n`` websocket pages in a thread of their own; counts the views they receive."""

    def __init__(self, web: WebProcess, n: int) -> None:
        self.web, self.n = web, n
        self.counts = [0] * n
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        if not self.ready.wait(30):
            raise RuntimeError("the pages did not connect")

    async def _page(self, k: int, opened: list[int]) -> None:
        import websockets
        from websockets.typing import Origin

        async with websockets.connect(
            f"ws://{self.web.address}/ws",
            origin=Origin(f"http://{self.web.address}"),
            additional_headers={"Cookie": f"coordd_web={self.web.token}"},
            max_size=None,
        ) as ws:
            await ws.send(json.dumps({"type": "query", "status": "active"}))
            opened.append(k)
            if len(opened) == self.n:
                self.ready.set()
            while not self._stop.is_set():
                try:
                    await asyncio.wait_for(ws.recv(), 0.5)
                except TimeoutError:
                    continue
                self.counts[k] += 1

    async def _main(self) -> None:
        opened: list[int] = []
        await asyncio.gather(*(self._page(k, opened) for k in range(self.n)))

    def total(self) -> int:
        return sum(self.counts)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _heartbeats(
    d: BenchDaemon, payloads: list[list[bytes]], warm: float, seconds: float
) -> tuple[float, float]:
    """Heartbeats/s the daemon applied while 8 senders stream at full speed, and the
    daemon's CPU microseconds per heartbeat applied (what it spent, whoever else ran)."""
    assert d.proc is not None
    pid = d.proc.pid

    def count() -> tuple[float, float]:
        time.sleep(warm)
        c0, t0, cpu0 = d.heartbeats(), time.monotonic(), _cpu_seconds(pid)
        time.sleep(seconds)
        c1, t1, cpu1 = d.heartbeats(), time.monotonic(), _cpu_seconds(pid)
        return (c1 - c0) / (t1 - t0), (cpu1 - cpu0) / max(1, c1 - c0) * 1e6

    args = [(d.agent_endpoint, payloads[k], MAX_MSGS) for k in range(SENDERS)]
    measured, _ = workers.run_workers(workers.one_way_sender, args, warm + seconds + 0.5, count)
    rate, cpu_us = measured
    return float(rate), float(cpu_us)


def run(quick: bool) -> dict[str, Any]:
    warm, seconds = (0.5, 2.0) if quick else (1.0, 8.0)
    d = BenchDaemon({"stale_threshold": 3600, "fsync": "never", "max_items": 5_000_000})
    out: dict[str, Any] = {"pages": PAGES, "senders": SENDERS, "seconds": seconds}
    try:
        d.start()
        items = load_items(d, SENDERS * ITEMS_PER_AGENT, agents=SENDERS)
        payloads: list[list[bytes]] = [[] for _ in range(SENDERS)]
        for a, w, lease in items:
            payloads[int(a[1:]) % SENDERS].append(
                request("heartbeat", agent_id=a, work_item_id=w, lease=lease)
            )
        without: list[tuple[float, float]] = []
        with_web: list[tuple[float, float]] = []
        views = []
        for _turn in range(2 if quick else 3):
            without.append(_heartbeats(d, payloads, warm, seconds))
            web = WebProcess(d)
            pages = Pages(web, PAGES)
            try:
                t0, v0 = time.monotonic(), pages.total()
                with_web.append(_heartbeats(d, payloads, warm, seconds))
                views.append((pages.total() - v0) / (time.monotonic() - t0))
            finally:
                pages.close()
                web.stop()
        for name, turns in (("without_web", without), ("with_web", with_web)):
            out[f"ingest_{name}"] = sum(r for r, _ in turns) / len(turns)
            out[f"daemon_cpu_us_per_hb_{name}"] = sum(c for _, c in turns) / len(turns)
        out["ingest_ratio"] = out["ingest_with_web"] / out["ingest_without_web"]
        out["daemon_cpu_ratio"] = (
            out["daemon_cpu_us_per_hb_with_web"] / out["daemon_cpu_us_per_hb_without_web"]
        )
        out["ingest_turns"] = {
            "without": [round(r) for r, _ in without],
            "with": [round(r) for r, _ in with_web],
        }
        out["views_per_s_50_pages_heartbeats"] = sum(views) / len(views)
        out["views_per_s_per_page_heartbeats"] = out["views_per_s_50_pages_heartbeats"] / PAGES
        out.update(_claim_storm(d, seconds))
    finally:
        d.close()
    return out


def _claim_storm(d: BenchDaemon, seconds: float) -> dict[str, Any]:
    """50 pages while one client claims as fast as the daemon answers (pipelined)."""
    web = WebProcess(d)
    pages = Pages(web, PAGES)
    sock = d.agent()
    try:
        t0, v0, n, sent = time.monotonic(), pages.total(), 0, 0
        window = 200
        while time.monotonic() - t0 < seconds:
            while sent - n < window:
                sock.send(request("claim", agent_id="storm", work_type="storm", description="x"))
                sent += 1
            if sock.poll(1000):
                sock.recv()
                n += 1
        elapsed = time.monotonic() - t0
        while n < sent and sock.poll(2000):
            sock.recv()
            n += 1
        views = (pages.total() - v0) / elapsed
    finally:
        sock.close(0)
        pages.close()
        web.stop()
    return {
        "claims_per_s_storm": n / elapsed,
        "views_per_s_50_pages_storm": views,
        "views_per_s_per_page_storm": views / PAGES,
    }


def mirror_at_scale(n: int) -> dict[str, Any]:
    """The web process's copy holding ``n`` items: load time, memory, and what the
    page's queries cost there (first computation, then the cached answer)."""
    import gc
    import resource

    from coordd.core.model import WorkItem
    from coordd.kinds import Status
    from coordd.web.mirror import Mirror, Query

    statuses = (Status.COMPLETED, Status.PENDING, Status.ACTIVE, Status.COMPLETED)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    items = [
        WorkItem(
            work_item_id=f"w{i:08d}",
            work_type=f"type{i % 20}",
            description=f"step {i % 1000} of change {i // 7}",
            team=f"team{i % 50}",
            status=statuses[i % 4],
            agent_id=f"a{i % 1000}" if statuses[i % 4] != Status.PENDING else None,
            last_heartbeat=1000.0 + i % 600,
            created_at=1000.0,
        )
        for i in range(n)
    ]
    m = Mirror()
    t0 = time.perf_counter()
    m.load(items, [])
    load = time.perf_counter() - t0
    del items
    gc.collect()
    out: dict[str, Any] = {
        "mirror_items": n,
        "mirror_load_s": load,
        "mirror_rss_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024,
    }
    queries = {
        "all": Query(),
        "active": Query(status="active"),
        "team": Query(team="team7"),
        "team_type_agent": Query(team="team7", work_type="type7", agent="a7"),
        "text": Query(text="change 4242"),
    }
    for name, q in queries.items():
        t0 = time.perf_counter()
        page = m.page(q, 2000.0, time.perf_counter)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        m.page(q, 2000.1, time.perf_counter)
        again = time.perf_counter() - t0
        out[f"query_{name}_ms"] = round(first * 1000, 1)
        out[f"query_{name}_cached_ms"] = round(again * 1000, 2)
        out[f"query_{name}_total"] = page["total"]
    return out


def full_view_at(n: int) -> dict[str, Any]:
    """``coordd web``'s full view of a daemon holding ``n`` active items, end to end."""
    d = BenchDaemon({"stale_threshold": 3600, "fsync": "never", "max_items": 5_000_000})
    try:
        d.start()
        load_items(d, n, agents=100)
        web = WebProcess(d)
        try:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                m = re.search(
                    r"web_full_view items=(\d+) agents=\d+ seconds=([\d.]+)",
                    web.log_path.read_text(),
                )
                if m:
                    break
                time.sleep(0.2)
            else:
                raise RuntimeError("no full view within 600 s")
            rss = 0
            for line in Path(f"/proc/{web.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) // 1024
        finally:
            web.stop()
    finally:
        d.close()
    return {
        "full_view_items": int(m.group(1)),
        "full_view_s": float(m.group(2)),
        "web_rss_mb_after_full_view": rss,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 s per measurement")
    ap.add_argument("--out", type=Path, default=HERE / "results-web.json")
    ap.add_argument("--items", type=int, default=None, help="items held for the full view")
    ap.add_argument("--mirror", type=int, default=1_000_000, help="items in the copy's queries")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(143)))
    res = run(args.quick)
    res.update(full_view_at(args.items or (20_000 if args.quick else 200_000)))
    res.update(mirror_at_scale(args.mirror))
    args.out.write_bytes(msgspec.json.format(msgspec.json.encode(res)))
    for key, value in res.items():
        print(f"{key}: {value:,.2f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
