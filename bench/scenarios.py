"""The references (the ceiling and the Redis peer) and the nine scenarios of the bench.

Every figure is a ``Result`` whose ratio is ``value / reference_value``; ``params``
says the target (on that ratio or on the value) and whether it was met. Loops are
bounded in count and in time; the sizes come from ``Sizes`` (full or quick).
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import zmq

from bench import peer, workers
from bench.harness import (
    DECODE,
    BenchDaemon,
    Result,
    load_items,
    percentile,
    pipelined,
    request,
    short_dir,
)
from coordd.core import recovery
from coordd.core.rules import Policy
from coordd.core.state import State


class Sizes(msgspec.Struct, frozen=True):
    quick: bool
    senders: int = 8
    ingest_seconds: float = 10.0
    warm_seconds: float = 1.0
    rtt_n: int = 5000
    fsync_n: int = 2000
    claim_clients: int = 16
    throughput_seconds: float = 10.0
    tick_sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    snapshot_sizes: tuple[int, ...] = (100_000, 1_000_000)
    held_sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)  # claims vs items held
    held_rtt_n: int = 3000
    sweep_senders: tuple[int, ...] = (1, 2, 4)  # ingest vs senders (plus `senders`)
    sweep_seconds: float = 3.0
    restart_records: int = 100_000
    ai_wait: float = 5.0


FULL = Sizes(quick=False)
QUICK = Sizes(
    quick=True,
    ingest_seconds=2.0,
    warm_seconds=0.5,
    rtt_n=300,
    fsync_n=200,
    throughput_seconds=2.0,
    tick_sizes=(10_000, 100_000),
    snapshot_sizes=(2_000, 20_000),
    held_sizes=(2_000, 20_000),
    held_rtt_n=300,
    sweep_senders=(2,),
    sweep_seconds=1.0,
    restart_records=2_000,
    ai_wait=1.0,
)

BIG_LIMITS = {"max_items": 5_000_000, "max_batch": 10_000}
MAX_MSGS = 100_000_000  # a bound no run reaches in its time window
RECORD = b"r" * 200  # what the fsync references write


def us(seconds: float) -> float:
    return round(seconds * 1e6, 1)


def ratio(value: float | None, ref: float | None) -> float | None:
    if value is None or not ref:
        return None
    return float(f"{value / ref:.4g}")


class Bench:
    """Runs the references and scenarios, collecting ``results``."""

    def __init__(self, sizes: Sizes, log: Callable[[str], None] = print) -> None:
        self.sizes = sizes
        self.log = log
        self.results: list[Result] = []
        self.refs: dict[str, float] = {}
        self.notes: list[str] = []
        self.base = short_dir("cbr")

    # --- bookkeeping -----------------------------------------------------------------

    def add(
        self,
        name: str,
        value: float | None,
        unit: str,
        reference: str | None = None,
        reference_value: float | None = None,
        n: int = 0,
        target: str | None = None,
        met: bool | None = None,
        **params: Any,
    ) -> Result:
        if target is not None:
            params["target"] = target
        if met is not None:
            params["met"] = met
        r = Result(
            name=name,
            value=None if value is None else round(value, 3),
            unit=unit,
            reference=reference,
            reference_value=None if reference_value is None else round(reference_value, 3),
            ratio=ratio(value, reference_value),
            n=n,
            params=params,
        )
        self.results.append(r)
        self.log(f"  {name}: {r.value} {unit}  (ref {r.reference_value}, ratio {r.ratio})")
        return r

    def skip(self, name: str, unit: str, why: str, **params: Any) -> None:
        self.add(name, None, unit, skipped=why, **params)
        self.notes.append(f"{name}: skipped, {why}")

    # --- the ceiling ---------------------------------------------------------------

    def heartbeat_payloads(
        self, items: list[tuple[str, str, int]], senders: int
    ) -> list[list[bytes]]:
        """One list of single-item heartbeats per sender (its agent's items)."""
        per: list[list[bytes]] = [[] for _ in range(senders)]
        for a, w, lease in items:
            k = int(a[1:]) % senders
            per[k].append(request("heartbeat", agent_id=a, work_item_id=w, lease=lease))
        return per

    def ref_one_way(self) -> float:
        """Raw pyzmq: 8 DEALER senders into a Python ROUTER that only receives and counts."""
        s = self.sizes
        rate = self.one_way_rate(s.senders, s.ingest_seconds)
        self.refs["one_way"] = rate
        self.add(
            "ref_raw_one_way", rate, "msg/s", n=s.senders, senders=s.senders,
            chart="ingest_vs_senders", x=s.senders, series="raw pyzmq one-way (reference)",
        )  # fmt: skip
        return rate

    def one_way_rate(self, senders: int, seconds: float) -> float:
        """Messages/s from ``senders`` DEALER processes into a receive-only ROUTER."""
        s = self.sizes
        endpoint = f"ipc://{self.base}/raw{senders}.sock"
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 100)
        sock.bind(endpoint)
        fake = [(f"a{k}", f"w{k:08d}", 7) for k in range(senders)]
        payloads = self.heartbeat_payloads(fake, senders)

        def receive() -> float:
            t_warm = time.monotonic() + s.warm_seconds
            t_end = t_warm + seconds
            n = counted = 0
            t0 = t1 = 0.0
            recv = sock.recv
            while True:
                # The fastest exact raw receive we know, the same as coordd's _drain: the
                # routing id as bytes, then Frames until one says no more follow.
                try:
                    frames = [recv()]
                    frame = recv(copy=False)
                    while frame.more:
                        frames.append(frame.bytes)
                        frame = recv(copy=False)
                    frames.append(frame.bytes)
                except zmq.Again:
                    pass
                n += 1
                if n & 63 == 0:
                    now = time.monotonic()
                    if not t0 and now >= t_warm:
                        t0, counted = now, n
                    elif now >= t_end:
                        t1 = now
                        break
            return (n - counted) / (t1 - t0)

        run_for = s.warm_seconds + seconds + 0.5
        args = [(endpoint, payloads[k], MAX_MSGS) for k in range(senders)]
        rate, _ = workers.run_workers(workers.one_way_sender, args, run_for, receive)
        sock.close(0)
        return float(rate)

    def ref_echo(self) -> None:
        """Raw pyzmq: DEALER<->ROUTER echo round trip, one message in flight."""
        n = self.sizes.rtt_n
        endpoint = f"ipc://{self.base}/echo.sock"
        payload = request("claim", agent_id="a0", work_type="bench", description="d" * 100)

        def measure() -> list[float]:
            sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            return _round_trips(sock, payload, n, warm=100)

        lat, _ = workers.run_workers(
            workers.echo_server, [(endpoint, n + 100)], run_for=60.0, during=measure
        )
        self.refs["echo_p50"] = percentile(lat, 50)
        self.refs["echo_p99"] = percentile(lat, 99)
        self.add("ref_echo_rtt_p50", us(percentile(lat, 50)), "us", n=n)
        self.add("ref_echo_rtt_p99", us(percentile(lat, 99)), "us", n=n)

    def ref_fsync(self) -> None:
        """``write`` of 200 bytes + ``fsync`` on the disk the state directories live on
        (the reference the claim targets use), and the same 200 bytes written into a
        preallocated file (as coordd's journal is since format 2) made durable with
        ``fdatasync`` or written with ``O_DSYNC``: the journal lever weighed in the run."""

        def appended(path: Path) -> int:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

        def fsync(fd: int, off: int) -> None:
            os.write(fd, RECORD)
            os.fsync(fd)

        lat = self._sync_latencies("fsync.bin", appended, fsync)
        self.refs["fsync_p50"] = percentile(lat, 50)
        self.refs["fsync_p99"] = percentile(lat, 99)
        self.add("ref_fsync_p50", us(percentile(lat, 50)), "us", n=len(lat), bytes=200)
        self.add("ref_fsync_p99", us(percentile(lat, 99)), "us", n=len(lat), bytes=200)

        def preallocated(path: Path, flags: int = 0) -> int:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.posix_fallocate(fd, 0, 8 << 20)
            os.fsync(fd)
            if not flags:
                return fd
            os.close(fd)
            return os.open(path, os.O_RDWR | flags)

        def fdatasync(fd: int, off: int) -> None:
            os.pwrite(fd, RECORD, off)
            os.fdatasync(fd)

        def dsync_write(fd: int, off: int) -> None:
            os.pwrite(fd, RECORD, off)

        for name, opener, write in (
            ("fdatasync", preallocated, fdatasync),
            ("o_dsync", lambda p: preallocated(p, os.O_DSYNC), dsync_write),
        ):
            lat = self._sync_latencies(f"{name}.bin", opener, write)
            for q in (50, 99):
                self.add(
                    f"ref_preallocated_{name}_p{q}", us(percentile(lat, q)), "us",
                    "write + fsync appended (ref_fsync)", us(self.refs[f"fsync_p{q}"]),
                    n=len(lat), bytes=200,
                )  # fmt: skip

    def _sync_latencies(
        self, name: str, opener: Callable[[Path], int], write: Callable[[int, int], None]
    ) -> list[float]:
        path = self.base / name
        fd = opener(path)
        lat = []
        deadline = time.monotonic() + 60
        try:
            for i in range(self.sizes.fsync_n):
                t = time.perf_counter()
                write(fd, i * len(RECORD))
                lat.append(time.perf_counter() - t)
                if time.monotonic() > deadline:
                    break
        finally:
            os.close(fd)
            path.unlink(missing_ok=True)
        lat.sort()
        return lat

    # --- the Redis peer (bench/peer.py) ------------------------------------------------

    def redis_peer(self) -> None:
        peer.run(self)

    # --- 1 and 2: heartbeat ingest --------------------------------------------------------

    def ingest(self, batched: bool) -> None:
        s = self.sizes
        rate, applied = self.ingest_rate(batched, s.senders, s.ingest_seconds)
        if batched:
            self.add(
                "s2_heartbeat_ingest_batched", rate, "item hb/s",
                "target 1,000,000 item heartbeats/s", 1_000_000, n=applied,
                target="ratio >= 1", met=rate >= 1_000_000, senders=s.senders, batch=100,
            )  # fmt: skip
            pipelined = self.refs.get("redis_pexpire_pipelined_per_s")
            if pipelined:
                self.add(
                    "s2_batched_vs_redis_pexpire_pipelined", rate, "item hb/s",
                    "Redis PEXPIRE/s pipelined, same number of clients", pipelined, n=applied,
                    note="one message carries 100 items; Redis has no batched PEXPIRE",
                )  # fmt: skip
            return
        ref = self.refs.get("one_way")
        self.add(
            "s1_heartbeat_ingest_unbatched", rate, "hb/s", "raw pyzmq one-way msg/s", ref,
            n=applied, target="ratio >= 0.6", met=bool(ref and rate >= 0.6 * ref),
            senders=s.senders, chart="ingest_vs_senders", x=s.senders,
            series="coordd unbatched heartbeats",
        )  # fmt: skip
        pipelined = self.refs.get("redis_pexpire_pipelined_per_s")
        if pipelined:
            self.add(
                "s1_heartbeats_vs_redis_pexpire_pipelined", rate, "hb/s",
                "Redis PEXPIRE/s pipelined, same number of clients", pipelined, n=applied,
                target="ratio >= 1", met=rate >= pipelined, clients=s.senders,
            )  # fmt: skip
        round_trip = self.refs.get("redis_pexpire_round_trip_per_s")
        if round_trip:
            self.add(
                "s1_heartbeats_vs_redis_pexpire_round_trip", rate, "hb/s",
                "Redis PEXPIRE/s round trip (one in flight), same number of clients",
                round_trip, n=applied, target="ratio >= 3", met=rate >= 3 * round_trip,
                clients=s.senders,
            )  # fmt: skip

    def ingest_rate(self, batched: bool, senders: int, seconds: float) -> tuple[float, int]:
        """Heartbeats/s the daemon applied (its own counter) from ``senders`` processes."""
        s = self.sizes
        per_agent = 100 if batched else 10
        d = BenchDaemon({"stale_threshold": 3600, "fsync": "never", **BIG_LIMITS})
        try:
            d.start()
            items = load_items(d, senders * per_agent, agents=senders)
            if batched:
                payloads = [
                    [
                        request(
                            "heartbeat_batch",
                            agent_id=f"a{k}",
                            items=[[w, lease] for a, w, lease in items if a == f"a{k}"],
                        )
                    ]
                    for k in range(senders)
                ]
            else:
                payloads = self.heartbeat_payloads(items, senders)

            def count() -> tuple[float, int]:
                time.sleep(s.warm_seconds)
                c0, t0 = d.heartbeats(), time.monotonic()
                time.sleep(seconds)
                c1, t1 = d.heartbeats(), time.monotonic()
                return (c1 - c0) / (t1 - t0), c1 - c0

            run_for = s.warm_seconds + seconds + 0.5
            args = [(d.agent_endpoint, payloads[k], MAX_MSGS) for k in range(senders)]
            (rate, applied), _ = workers.run_workers(workers.one_way_sender, args, run_for, count)
        finally:
            d.close()
        return rate, applied

    def ingest_sweep(self) -> None:
        """Unbatched ingest against sender processes, each count beside the raw one-way
        ceiling and the pipelined Redis peer with as many clients (the chart's points;
        the ``senders`` point is s1's own)."""
        s = self.sizes
        rp, base = peer.start()
        try:
            if rp is not None:
                rp.appendfsync("everysec")  # as the peer's s1 figure
            for k in s.sweep_senders:
                chart: dict[str, Any] = {"chart": "ingest_vs_senders", "x": k, "senders": k}
                raw = self.one_way_rate(k, s.sweep_seconds)
                self.add(
                    f"sweep_raw_one_way_{k}_senders", raw, "msg/s", n=k, **chart,
                    series="raw pyzmq one-way (reference)",
                )  # fmt: skip
                rate, applied = self.ingest_rate(False, k, s.sweep_seconds)
                self.add(
                    f"sweep_heartbeat_ingest_{k}_senders", rate, "hb/s",
                    "raw pyzmq one-way msg/s, same senders", raw, n=applied, **chart,
                    series="coordd unbatched heartbeats",
                )  # fmt: skip
                if rp is not None:
                    redis, n = peer.pexpire_pipelined(rp.path, k, s.sweep_seconds)
                    self.add(
                        f"sweep_redis_pexpire_pipelined_{k}_clients", redis, "hb/s", n=n,
                        **chart, series="Redis PEXPIRE pipelined",
                    )  # fmt: skip
        finally:
            peer.stop(rp, base)

    # --- 3 and 4: claims -------------------------------------------------------------------

    def claim_rtts(self) -> None:
        for fsync in ("always", "everysec"):
            self.claim_rtt(fsync)

    def claim_rtt(self, fsync: str) -> None:
        s = self.sizes
        d = BenchDaemon({"stale_threshold": 3600, "fsync": fsync})
        try:
            d.start()
            sock = d.agent()
            payload = request("claim", agent_id="a0", work_type="bench", description="d" * 100)
            lat = _round_trips(sock, payload, s.rtt_n, warm=100)
            sock.close(0)
            journal = _journal_bytes(d.state_dir)
        finally:
            d.close()
        ref50 = 2 * self.refs["echo_p50"] + self.refs["fsync_p50"]
        ref99 = self.refs["fsync_p99"] + 0.001
        extra: dict[str, Any] = {"fsync": fsync, "journal_bytes": journal}
        if journal == 0:
            extra["note"] = "no journal on disk: this coordd does not journal yet (no fsync)"
        p50, p99, p999 = (percentile(lat, q) for q in (50, 99, 99.9))
        self.add(
            f"s3_claim_rtt_p50_fsync_{fsync}", us(p50), "us", "2 x echo p50 + fsync p50",
            us(ref50), n=len(lat), target="ratio <= 1", met=p50 <= ref50, **extra,
        )  # fmt: skip
        self.add(
            f"s3_claim_rtt_p99_fsync_{fsync}", us(p99), "us", "fsync p99 + 1 ms", us(ref99),
            n=len(lat), target="ratio <= 1", met=p99 <= ref99, **extra,
        )  # fmt: skip
        self.add(f"s3_claim_rtt_p99.9_fsync_{fsync}", us(p999), "us", n=len(lat), **extra)
        redis = self.refs.get(f"redis_claim_{fsync}_p50")
        if redis:
            self.add(
                f"s3_claim_rtt_p50_vs_redis_{fsync}", us(p50), "us",
                f"Redis claim p50, appendfsync {fsync}", us(redis), n=len(lat), **extra,
            )  # fmt: skip

    def claim_throughput(self) -> None:
        s = self.sizes
        d = BenchDaemon({"stale_threshold": 3600, "fsync": "always"})
        try:
            d.start()
            payload = request("claim", agent_id="a0", work_type="bench", description="d" * 100)
            procs = 2
            args = [
                (d.agent_endpoint, [payload], s.claim_clients // procs, MAX_MSGS, False)
                for _ in range(procs)
            ]
            _, done = workers.run_workers(workers.closed_loop, args, s.throughput_seconds)
            journal = _journal_bytes(d.state_dir)
        finally:
            d.close()
        replies = sum(r[0] for r in done)
        errors = sum(r[1] for r in done)
        rate = replies / s.throughput_seconds
        extra: dict[str, Any] = {"clients": s.claim_clients, "errors": errors}
        extra["journal_bytes"] = journal
        if journal == 0:
            extra["note"] = "no journal on disk: this coordd does not journal yet (no fsync)"
        self.add(
            "s4_claims_per_s_16_clients_fsync_always", rate, "claim/s",
            "target 5,000 claims/s", 5000, n=replies, target="ratio >= 1",
            met=rate >= 5000 and errors == 0, **extra,
        )  # fmt: skip
        redis = self.refs.get("redis_claims_per_s")
        if redis:
            self.add(
                "s4_claims_vs_redis", rate, "claim/s",
                "Redis claims/s, 16 clients, appendfsync always", redis, n=replies,
                target="ratio >= 1", met=rate >= redis, **extra,
            )  # fmt: skip

    # --- 5: the tick (the pure core in-process, injected clock) ------------------------

    def tick(self) -> None:
        for n in self.sizes.tick_sizes:
            self._tick_at(n)

    def _tick_at(self, n: int) -> None:
        threshold = 300.0
        state = State(Policy(stale_threshold=threshold, recovery="reassign"))
        t0 = 1_700_000_000.0
        expiring = max(1, n // 100)
        # 1% claimed 10 s before the rest: at t0 + threshold + 1 exactly they expire.
        for i in range(n):
            now = t0 if i < expiring else t0 + 10
            state.claim(f"a{i % 1000}", "bench", "d", now, work_item_id=f"w{i:08d}")
            if i % 10_000 == 0:
                state.drain()
        state.drain()
        quiet = []
        for k in range(200):
            t = time.perf_counter()
            recovery.tick(state, t0 + threshold - 1 + k * 0.001)
            quiet.append(time.perf_counter() - t)
        quiet.sort()
        # 1% expire at once: ticks back to back (as the loop runs them while
        # expired_waiting) until every one is recovered, each tick within its budget.
        at = t0 + threshold + 1
        ticks: list[float] = []
        recovered = 0
        while True:
            t = time.perf_counter()
            got = len(recovery.tick(state, at))
            ticks.append(time.perf_counter() - t)
            recovered += got
            if not state.expired_waiting(at):
                break
        state.drain()
        assert recovered == expiring, (recovered, expiring)
        where: dict[str, Any] = {"items": n, "in_process": True, "clock": "injected"}
        self.add(
            f"s5_tick_0_expired_{n}_items", us(percentile(quiet, 50)), "us",
            "target 1 ms", 1000, n=len(quiet), target="ratio <= 1",
            met=percentile(quiet, 50) <= 0.001, **where,
        )  # fmt: skip
        longest = max(ticks)
        self.add(
            f"s5_tick_longest_1pct_expired_{n}_items", us(longest), "us", "target 10 ms",
            10_000, n=len(ticks), target="ratio <= 1", met=longest <= 0.010,
            expired=expiring, ticks=len(ticks), budget=recovery.TICK_BUDGET,
            per_expired_us=us(sum(ticks) / expiring), **where,
        )  # fmt: skip
        self.add(
            f"s5_recovery_delay_1pct_expired_{n}_items", sum(ticks) * 1000, "ms", n=len(ticks),
            expired=expiring, ticks=len(ticks), budget=recovery.TICK_BUDGET,
            note="the last item's wait for its recovery: ticks back to back (the loop serves"
            " its sockets between them)",
            **where,
        )  # fmt: skip
        # Heartbeats move only last_heartbeat; an entry surfaces when its recorded deadline
        # passes and is re-queued then. Measure that re-queue cost per entry.
        for item in list(state.items.values()):
            if item.status == "active" and item.agent_id is not None:
                state.heartbeat(item.agent_id, t0 + 200, item.work_item_id, item.lease)
        t = time.perf_counter()
        none = recovery.tick(state, t0 + threshold + 10.5, budget=None)
        requeue = time.perf_counter() - t
        requeued = n - expiring
        per = requeue / max(1, requeued)
        assert not none
        self.add(
            f"s5_tick_requeue_per_entry_{n}_items", us(per), "us", n=requeued,
            steady_state_tick_us=us(per * n / threshold),
            note="steady state: ~items/stale_threshold entries re-queued per 1 s tick",
            **where,
        )  # fmt: skip

    # --- 6, 7, 8: a daemon with many items -------------------------------------------

    def big_daemon(self) -> None:
        s = self.sizes
        d = BenchDaemon(
            {"stale_threshold": 3600, "fsync": "everysec", "snapshot_interval": 3600, **BIG_LIMITS}
        )
        try:
            d.start()
            rss0 = d.rss()
            held: list[tuple[str, str, int]] = []
            extra = 0  # items claimed by the round trips measured on the way
            for size in sorted(set(s.snapshot_sizes) | set(s.held_sizes)):
                t = time.monotonic()
                held += load_items(d, size - len(held), agents=1000, prefix=f"w{len(held)}_")
                self.log(f"  loaded {len(held)} items in {time.monotonic() - t:.1f}s")
                if size in s.held_sizes:
                    extra += self._claims_held(d, size)
                if size == s.snapshot_sizes[-1]:
                    self._memory(d, rss0, len(held) + extra)
                if size in s.snapshot_sizes:
                    self._snapshot(d, held, size)
            self._restart(d, held)
        finally:
            d.close()

    def _claims_held(self, d: BenchDaemon, held: int) -> int:
        """Claim round trips (``fsync = everysec``) with ``held`` items held: the cost of a
        claim must not grow with what the daemon holds. Returns the claims made."""
        n = self.sizes.held_rtt_n
        sock = d.agent()
        payload = request("claim", agent_id="a0", work_type="bench", description="d" * 100)
        lat = _round_trips(sock, payload, n, warm=100)
        sock.close(0)
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        self.refs[f"held_claim_p50_{held}"] = p50
        first = min(self.sizes.held_sizes)
        base = self.refs.get(f"held_claim_p50_{first}")
        chart: dict[str, Any] = {"chart": "claims_vs_held", "x": held}
        if held == first or base is None:
            self.add(
                f"s10_claim_rtt_p50_{held}_held", us(p50), "us", n=len(lat), items=held,
                fsync="everysec", **chart, series="coordd claim p50",
            )  # fmt: skip
        else:
            self.add(
                f"s10_claim_rtt_p50_{held}_held", us(p50), "us",
                f"claim p50 with {first:,} held", us(base), n=len(lat), items=held,
                target="ratio <= 1.1", met=p50 <= 1.1 * base, fsync="everysec", **chart,
                series="coordd claim p50",
            )  # fmt: skip
        self.add(
            f"s10_claim_rtt_p99_{held}_held", us(p99), "us", n=len(lat), items=held,
            fsync="everysec", **chart, series="coordd claim p99",
        )  # fmt: skip
        return n + 100

    def _memory(self, d: BenchDaemon, rss0: int, n: int) -> None:
        per = (d.rss() - rss0) / n
        self.add(
            "s8_rss_per_item", per, "bytes", "target 1 KiB", 1024, n=n,
            target="ratio <= 1", met=per <= 1024, description_bytes=100, rss_empty=rss0,
        )  # fmt: skip

    def _snapshot(self, d: BenchDaemon, held: list[tuple[str, str, int]], n: int) -> None:
        a, w, lease = held[0]
        hb = d.agent()
        beat = request("heartbeat", agent_id=a, work_item_id=w, lease=lease, ack=True)
        ctl: zmq.Socket[bytes] = d.ctx.socket(zmq.DEALER)
        ctl.setsockopt(zmq.LINGER, 0)
        ctl.connect(d.control_endpoint)
        t0 = time.monotonic()
        ctl.send(request("snapshot"))
        reply: dict[str, Any] | None = None
        wanted = None  # the daemon's snapshot count once the requested one is done
        info: dict[str, Any] = {}
        done_at = None
        lat: list[float] = []
        # Done when the daemon's own snapshot counter says so (as `coordctl snapshot`
        # waits): a snapshot already running when we asked holds older state, so the
        # one after it is ours. Heartbeat round trips meanwhile measure the stall.
        while time.monotonic() - t0 < 120:
            lat.append(_round_trips(hb, beat, 1, warm=0, timeout=60)[0])
            if reply is None:
                if not ctl.poll(0):
                    continue
                reply = DECODE(ctl.recv())
                if reply.get("reply") == "error":
                    break
                data = reply.get("data") or {}
                wanted = data.get("count", 0) + (2 if data.get("running") else 1)
                continue
            ctl.send(request("status"))
            if not ctl.poll(5000):
                break
            info = (DECODE(ctl.recv()).get("data") or {}).get("snapshot") or {}
            if info.get("count", 0) >= (wanted or 0) and not info.get("running"):
                done_at = time.monotonic()
                break
            time.sleep(0.002)
        hb.close(0)
        ctl.close(0)
        if reply is None or reply.get("reply") == "error" or done_at is None:
            why = "no reply in 120 s" if reply is None else "the snapshot did not finish in 120 s"
            if reply and reply.get("reply") == "error":
                why = "this coordd has no snapshot request yet"
                why += f" ({reply.get('code')}: {reply.get('message', '')[:80]})"
            self.skip(f"s6_snapshot_{n}_items", "ms", why, items=n)
            return
        size = int(info.get("bytes") or 0)
        total = done_at - t0
        stall = max(lat)
        self.add(
            f"s6_snapshot_stall_{n}_items", stall * 1000, "ms", "target 50 ms", 50,
            n=len(lat), target="ratio <= 1", met=stall <= 0.05, items=n,
        )  # fmt: skip
        self.add(f"s6_snapshot_total_{n}_items", total * 1000, "ms", n=1, items=n)
        self.add(f"s6_snapshot_bytes_per_item_{n}_items", size / n, "bytes", n=n, file_bytes=size)

    def _restart(self, d: BenchDaemon, held: list[tuple[str, str, int]]) -> None:
        s = self.sizes
        sock = d.agent()
        records = min(s.restart_records, len(held))
        payloads = [
            request("progress", work_item_id=w, progress=(i % 99) + 1, agent_id=a, lease=lease)
            for i, (a, w, lease) in enumerate(held[:records])
        ]
        pipelined(sock, payloads, timeout=300)
        sock.close(0)
        time.sleep(1.5)  # fsync = everysec: let the last second reach the disk
        d.stop(signal.SIGKILL)
        seconds = d.start(timeout=120)
        items = d.status()["counts"]["items"]
        params: dict[str, Any] = {
            "items_in_state": len(held),
            "journal_records": records,
            "items_after_restart": items,
            "ready_by": d.ready_by,
        }
        if d.ready_by != "sd_notify":
            params["note"] = "no READY from sd_notify: time until the control socket answers"
        if items < len(held):
            params["note"] = (
                params.get("note", "") + "; the state was not reloaded (no journal or snapshot yet)"
            ).lstrip("; ")
        self.add(
            f"s7_restart_{len(held)}_items", seconds, "s", "target 10 s", 10, n=1,
            target="ratio <= 1", met=seconds <= 10 and items >= len(held), **params,
        )  # fmt: skip

    # --- 9: hot-path isolation ---------------------------------------------------------

    def ai_isolation(self) -> None:
        s = self.sizes
        ollama = StandInOllama(s.ai_wait)
        d = BenchDaemon(
            {
                "stale_threshold": 3600,
                "ai_provider": "ollama",
                "ollama_host": ollama.url,
                "ai_timeout": s.ai_wait + 10,
            }
        )
        try:
            d.start()
            a, w, lease = load_items(d, 1, agents=1)[0]
            hb = d.agent()
            beat = request("heartbeat", agent_id=a, work_item_id=w, lease=lease, ack=True)
            base = _paced_round_trips(hb, beat, s.ai_wait)
            ctl: zmq.Socket[bytes] = d.ctx.socket(zmq.DEALER)
            ctl.setsockopt(zmq.LINGER, 0)
            ctl.connect(d.control_endpoint)
            early = _start_ai_call(ctl)
            if early is not None and _unknown_op(early):
                self.skip(
                    "s9_heartbeat_p99_with_ai_in_flight", "us",
                    "this coordd has no ai_analyze request yet (bad_request on op)",
                    baseline_p99_us=us(percentile(base, 99)),
                )  # fmt: skip
                return
            busy = _paced_round_trips(hb, beat, s.ai_wait * 0.9)
            in_flight = ollama.calls > 0
            hb.close(0)
            ctl.close(0)
        finally:
            d.close()
            ollama.close()
        p99, ref = percentile(busy, 99), percentile(base, 99)
        self.add(
            "s9_heartbeat_p99_with_ai_in_flight", us(p99), "us", "heartbeat p99 without AI",
            us(ref), n=len(busy), target="ratio <= 1.1", met=p99 <= 1.1 * ref,
            provider_called=in_flight, ai_wait_s=s.ai_wait,
            early_reply=None if early is None else str(early)[:200],
        )  # fmt: skip


def _start_ai_call(ctl: zmq.Socket[bytes]) -> dict[str, Any] | None:
    """Send ``ai_analyze``; None while it waits on the provider, else the early reply.

    ``data`` goes as a map, and as a JSON string when the daemon's request wants text.
    """
    reply: dict[str, Any] | None = None
    for data in ({"items": 1}, json.dumps({"items": 1})):
        ctl.send(request("ai_analyze", prompt="bench", data=data, model="llama2"))
        if not ctl.poll(200):
            return None
        reply = DECODE(ctl.recv())
        if reply.get("code") != "bad_request" or _unknown_op(reply):
            return reply
    return reply


def _unknown_op(reply: dict[str, Any]) -> bool:
    """A ``bad_request`` about the ``op`` tag: this daemon does not know the request."""
    return reply.get("code") == "bad_request" and "$.op" in str(reply.get("message", ""))


class StandInOllama:
    """A local HTTP server that answers like Ollama after ``wait`` seconds.

    It runs in a process of its own: served from a thread of the bench process, its
    accept/read/sleep/write took the GIL from the heartbeat client measuring the
    daemon, so the client's own stalls were counted as the daemon's latency.
    """

    def __init__(self, wait: float) -> None:
        self._calls = workers.CTX.Value("i", 0)
        port = workers.CTX.Value("i", 0)
        self.proc = workers.CTX.Process(
            target=_serve_ollama, args=(wait, port, self._calls), daemon=True
        )
        self.proc.start()
        deadline = time.monotonic() + 30
        while not port.value:
            if not self.proc.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the stand-in Ollama did not start")
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{port.value}"

    @property
    def calls(self) -> int:
        return int(self._calls.value)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.join(10)


def _serve_ollama(wait: float, port: Any, calls: Any) -> None:
    """The stand-in's process: serve until terminated; ``port`` says where."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _json(self, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self._json({"models": [{"name": "llama2"}], "version": "0.0.0"})

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with calls.get_lock():
                calls.value += 1
            time.sleep(wait)
            answer = json.dumps({"summary": "all fine", "findings": []})
            self._json(
                {
                    "model": "llama2",
                    "response": answer,
                    "message": {"role": "assistant", "content": answer},
                    "done": True,
                }
            )

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port.value = server.server_address[1]
    server.serve_forever()


# --- helpers -------------------------------------------------------------------------


def _round_trips(
    sock: zmq.Socket[bytes], payload: bytes, n: int, warm: int, timeout: float = 5.0
) -> list[float]:
    """n request/reply round trips, one in flight, sorted; each bounded by ``timeout``."""
    lat = []
    for i in range(n + warm):
        t = time.perf_counter()
        sock.send(payload)
        if not sock.poll(int(timeout * 1000)):
            raise TimeoutError(f"no reply within {timeout} s")
        sock.recv()
        if i >= warm:
            lat.append(time.perf_counter() - t)
    lat.sort()
    return lat


def _paced_round_trips(sock: zmq.Socket[bytes], payload: bytes, seconds: float) -> list[float]:
    """Round trips about every millisecond for ``seconds`` (an agent's view of latency)."""
    lat: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end and len(lat) < 100_000:
        # An AI call made inside the loop would stall it for seconds: measure, not fail.
        lat.append(_round_trips(sock, payload, 1, warm=0, timeout=60)[0])
        time.sleep(0.001)
    lat.sort()
    return lat


def _journal_bytes(state_dir: Path) -> int:
    if not state_dir.exists():
        return 0
    return sum(
        p.stat().st_size for p in state_dir.rglob("*") if p.is_file() and p.name != "coordd.lock"
    )


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
