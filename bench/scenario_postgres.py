"""The PostgreSQL store in the bench (issue 18; step ``pg``, found by ``bench.run``),
beside the file store and the Redis peer of the same run: claim p50/p99 and 16-client claims/s with
``synchronous_commit = on``, heartbeat ingest (heartbeats stay in memory, so it should
match the file store's), and failover time over ``FAILOVER_KILLS`` SIGKILLs of a leader
with a standby waiting.

A throwaway cluster (``bench.pg_cluster``) on a Unix socket on this machine, so the
figures are coordd's cost plus one local commit, not a network's. Left out of
``--quick`` (it starts PostgreSQL and waits out leases).
"""

from __future__ import annotations

import signal
import time
from typing import Any

import zmq

from bench import workers
from bench.harness import DECODE, BenchDaemon, percentile, request
from bench.pg_cluster import PG_BIN, PgCluster
from bench.scenarios import MAX_MSGS, Bench, _round_trips, us

FAILOVER_KILLS = 10
# Short leases, so ten failovers take a minute; the figure scales with lease_duration.
FAILOVER_LEASE = {"lease_duration": 2.0, "lease_renew": 0.5, "lease_retry": 0.2}


def run(b: Bench) -> None:
    if b.sizes.quick:
        b.notes.append("pg: left out of --quick (starts PostgreSQL, waits out leases)")
        return
    if not (PG_BIN / "initdb").exists():
        b.skip("pg_claim_rtt_p50", "us", f"PostgreSQL 15 not installed ({PG_BIN})")
        return
    cluster = PgCluster()
    try:
        cluster.init()
        cluster.start()
        claim_rtt(b, _migrated(cluster))
        claim_throughput(b, _migrated(cluster))
        ingest(b, _migrated(cluster))
        failover(b, _migrated(cluster))
    finally:
        cluster.remove()


def _migrated(cluster: PgCluster) -> str:
    from coordd.storage.pg_schema import Connector, migrate

    dsn = cluster.new_database()
    with Connector(dsn).connect() as conn:
        migrate(conn)
    return dsn


def _pg(dsn: str, **kw: Any) -> dict[str, Any]:
    return {"store": "postgres", "postgres_dsn": dsn, "stale_threshold": 3600, **kw}


def _file_result(b: Bench, name: str) -> float | None:
    return next((r.value for r in b.results if r.name == name), None)


def claim_rtt(b: Bench, dsn: str) -> None:
    d = BenchDaemon(_pg(dsn), name="cpg")
    try:
        d.start()
        sock = d.agent()
        payload = request("claim", agent_id="a0", work_type="bench", description="d" * 100)
        lat = _round_trips(sock, payload, b.sizes.rtt_n, warm=100)
        sock.close(0)
    finally:
        d.close()
    for q in (50, 99):
        name = f"s3_claim_rtt_p{q}_fsync_always"
        b.add(
            f"pg_claim_rtt_p{q}", us(percentile(lat, q)), "us", f"file store {name}",
            _file_result(b, name), n=len(lat), synchronous_commit="on",
        )  # fmt: skip
        redis = b.refs.get(f"redis_claim_always_p{q}") if q == 50 else None
        if redis:
            b.add(
                "pg_claim_rtt_p50_vs_redis", us(percentile(lat, q)), "us",
                "Redis claim p50, appendfsync always", us(redis), n=len(lat),
            )  # fmt: skip


def claim_throughput(b: Bench, dsn: str) -> None:
    d = BenchDaemon(_pg(dsn), name="cpg")
    seconds = b.sizes.throughput_seconds
    try:
        d.start()
        payload = request("claim", agent_id="a0", work_type="bench", description="d" * 100)
        procs = 2
        args = [
            (d.agent_endpoint, [payload], b.sizes.claim_clients // procs, MAX_MSGS, False)
            for _ in range(procs)
        ]
        _, done = workers.run_workers(workers.closed_loop, args, seconds)
    finally:
        d.close()
    replies, errors = sum(r[0] for r in done), sum(r[1] for r in done)
    b.add(
        "pg_claims_per_s_16_clients", replies / seconds, "claim/s",
        "file store s4_claims_per_s_16_clients_fsync_always",
        _file_result(b, "s4_claims_per_s_16_clients_fsync_always"), n=replies,
        clients=b.sizes.claim_clients, errors=errors, synchronous_commit="on",
    )  # fmt: skip
    redis = b.refs.get("redis_claims_per_s")
    if redis:
        b.add(
            "pg_claims_vs_redis", replies / seconds, "claim/s",
            "Redis claims/s, 16 clients, appendfsync always", redis, n=replies,
        )  # fmt: skip


def ingest(b: Bench, dsn: str) -> None:
    from bench.harness import load_items

    s = b.sizes
    d = BenchDaemon(_pg(dsn, max_batch=10_000), name="cpg")
    try:
        d.start()
        items = load_items(d, s.senders * 10, agents=s.senders)
        payloads = b.heartbeat_payloads(items, s.senders)

        def count() -> tuple[float, int]:
            time.sleep(s.warm_seconds)
            c0, t0 = d.heartbeats(), time.monotonic()
            time.sleep(s.ingest_seconds)
            c1, t1 = d.heartbeats(), time.monotonic()
            return (c1 - c0) / (t1 - t0), c1 - c0

        run_for = s.warm_seconds + s.ingest_seconds + 0.5
        args = [(d.agent_endpoint, payloads[k], MAX_MSGS) for k in range(s.senders)]
        (rate, applied), _ = workers.run_workers(workers.one_way_sender, args, run_for, count)
    finally:
        d.close()
    b.add(
        "pg_heartbeat_ingest_unbatched", rate, "hb/s", "file store s1_heartbeat_ingest_unbatched",
        _file_result(b, "s1_heartbeat_ingest_unbatched"), n=applied, senders=s.senders,
        target="ratio >= 0.9 (heartbeats never touch the store)",
    )  # fmt: skip


def failover(b: Bench, dsn: str) -> None:
    """Leader and standby; SIGKILL the leader, time until the standby acknowledges a
    claim (what an agent sees); restart the killed one as the next standby; repeat."""
    cfg = _pg(dsn, **FAILOVER_LEASE)
    nodes = [BenchDaemon(cfg, name="cpa"), BenchDaemon(cfg, name="cpb")]
    times: list[float] = []
    try:
        for d in nodes:
            d.start()
        leader, standby = nodes
        for k in range(FAILOVER_KILLS):
            sock = standby.agent()
            assert leader.proc is not None
            leader.proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            _claim_until_ok(sock, f"fo{k}")
            times.append(time.monotonic() - killed)
            sock.close(0)
            leader.stop()
            leader.start()  # the next standby
            leader, standby = standby, leader
    finally:
        for d in nodes:
            d.close()
    times.sort()
    ttl = FAILOVER_LEASE["lease_duration"]
    for q in (50, 99):
        value = percentile(times, q)
        b.add(
            f"pg_failover_p{q}", value, "s", "lease_duration + 2 s", ttl + 2, n=len(times),
            target="ratio <= 1", met=value <= ttl + 2, **FAILOVER_LEASE,
        )  # fmt: skip


def _claim_until_ok(sock: zmq.Socket[bytes], agent: str, timeout: float = 60.0) -> None:
    """Ask for a claim every 10 ms until one is acknowledged (not_leader until then)."""
    payload = request("claim", agent_id=agent, work_type="bench", description="failover")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.send(payload)
        if sock.poll(1000) and DECODE(sock.recv()).get("reply") == "ok":
            return
        time.sleep(0.01)
    raise TimeoutError("the standby did not take over")


STEPS = [("pg", run)]
