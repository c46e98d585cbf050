"""The Redis peer: the lease pattern people build on Redis, measured in the same run,
at its best.

claim = a Lua script (``SET lease NX PX`` + ``HSET`` of the item hash), heartbeat =
``PEXPIRE`` of the lease key, complete = ``DEL``. The server listens on a Unix socket
only (``port 0``), with ``appendonly yes`` and the ``appendfsync`` policy under test.
Missing ``redis-server`` or the ``redis`` package is a skip with a note, never a failure.

Fair to the peer: heartbeats are pipelined (a bounded window of ``PEXPIRE`` per client,
replies read as they come), as a Redis user who cares about heartbeat rate sends them;
the round-trip rate (one command in flight) is kept beside it, labelled. Claims are
timed with the bench's minimal RESP client and with redis-py (hiredis's parser), and the
faster is the peer's figure, the client named in the result.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import workers
from bench.harness import percentile, short_dir

if TYPE_CHECKING:
    from bench.scenarios import Bench

MAX_MSGS = 100_000_000  # a bound no run reaches in its time window


def us(seconds: float) -> float:
    return round(seconds * 1e6, 1)


CLAIM_LUA = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('HSET', KEYS[2], 'agent', ARGV[1], 'status', 'active',
             'description', ARGV[3], 'claimed_at', ARGV[4])
  return 1
end
return 0
"""


def unavailable() -> str | None:
    """Why the peer cannot run here, or None when it can."""
    if shutil.which("redis-server") is None and not Path("/usr/bin/redis-server").exists():
        return "redis-server is not installed (make bench-redis installs Debian's package)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the redis package is missing (pip install -e '.[bench]')"
    return None


class RedisPeer:
    """A private ``redis-server`` on a Unix socket in ``base``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.path = str(base / "redis.sock")
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                "0",
                "--unixsocket",
                self.path,
                "--unixsocketperm",
                "700",
                "--dir",
                str(base),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        self.client: Any = redis.Redis(unix_socket_path=self.path)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        self.sha: str = self.client.script_load(CLAIM_LUA)

    def new_client(self) -> Any:
        """A redis-py client as a Redis user has it (hiredis's parser when installed)."""
        import redis

        return redis.Redis(unix_socket_path=self.path)

    def appendfsync(self, policy: str) -> None:
        self.client.config_set("appendfsync", policy)

    def version(self) -> str:
        return str(self.client.info("server")["redis_version"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# --- the step: the peer at its best, measured in the same run -----------------------

PEXPIRE_WINDOW = 100  # commands in flight per pipelining client
PEXPIRE_KEYS = 10  # lease keys per client, as s1's senders heartbeat 10 items each


def start() -> tuple[RedisPeer | None, Path]:
    """A private peer, or None when it cannot run here; stop it with ``stop``."""
    base = short_dir("cbp")
    if unavailable() is not None:
        return None, base
    try:
        return RedisPeer(base), base
    except RuntimeError:
        return None, base


def stop(rp: RedisPeer | None, base: Path) -> None:
    if rp is not None:
        rp.close()
    shutil.rmtree(base, ignore_errors=True)


def run(bench: Bench) -> None:
    """Claims (best client, per ``appendfsync``), 16-client claims, PEXPIRE both
    pipelined and round trip, claims with many keys held; ``bench.refs`` gets what the
    scenarios compare with."""
    why = unavailable()
    if why is not None:
        for name in ("peer_redis_claim_rtt_p50", "peer_redis_claims_per_s", "peer_redis_pexpire"):
            bench.skip(name, "-", why)
        return
    base = short_dir("cbp")
    try:
        rp = RedisPeer(base)
    except RuntimeError as e:
        bench.skip("peer_redis", "-", str(e))
        shutil.rmtree(base, ignore_errors=True)
        return
    try:
        version = rp.version()
        for policy in ("always", "everysec"):
            rp.appendfsync(policy)
            _claim_rtts(bench, rp, policy, version)
        rp.appendfsync("always")
        _claims_per_s(bench, rp, version)
        # Heartbeats at Redis's default policy: coordd journals none (a lost heartbeat
        # costs freshness, never data), and `always` would make each one wait on a disk.
        rp.appendfsync("everysec")
        _pexpire(bench, rp, version)
        _claims_held(bench, rp, version)
    finally:
        rp.close()
        shutil.rmtree(base, ignore_errors=True)


def _claim_rtts(bench: Bench, rp: RedisPeer, policy: str, version: str) -> None:
    """Claim round trips with each client; the faster one's figures are the peer's."""
    n = bench.sizes.rtt_n
    by_client: dict[str, list[float]] = {}
    conn = workers.RespConn(rp.path)
    try:
        by_client["minimal RESP"] = _timed(n, lambda i: _resp_claim(conn, rp.sha, policy, i))
    finally:
        conn.close()
    py = rp.new_client()
    parser = type(py.connection_pool.get_connection()._parser).__name__
    py.connection_pool.reset()
    by_client[f"redis-py ({parser})"] = _timed(n, lambda i: _py_claim(py, rp.sha, policy, i))
    py.close()
    best = min(by_client, key=lambda c: percentile(by_client[c], 50))
    lat = by_client[best]
    others = {c: us(percentile(v, 50)) for c, v in by_client.items() if c != best}
    for q in (50, 99):
        bench.refs[f"redis_claim_{policy}_p{q}"] = percentile(lat, q)
        bench.add(
            f"peer_redis_claim_rtt_p{q}_appendfsync_{policy}", us(percentile(lat, q)), "us",
            n=len(lat), redis=version, client=best, other_clients_p50_us=others,
            note=f"client: {best} (the faster; p50 of the other: {others})",
        )  # fmt: skip


def _timed(n: int, call: Callable[[int], None], warm: int = 100) -> list[float]:
    lat = []
    for i in range(n + warm):
        t = time.perf_counter()
        call(i)
        if i >= warm:
            lat.append(time.perf_counter() - t)
    lat.sort()
    return lat


def _resp_claim(conn: workers.RespConn, sha: str, policy: str, i: int) -> None:
    line = conn.call(workers.redis_command("claim", sha, 999, _conn_id(policy, 0), i))[0]
    if line.startswith(b"-"):
        raise RuntimeError(f"redis refused: {line!r}")


def _held_claim(conn: workers.RespConn, sha: str, held: int, i: int) -> None:
    _resp_claim(conn, sha, "held", held + i)


def _py_claim(client: Any, sha: str, policy: str, i: int) -> None:
    wid = f"998:{_conn_id(policy, 1)}:{i}"
    args = (f"lease:{wid}", f"item:{wid}", "agent998", "300000", "d" * 100, "1700000000")
    client.evalsha(sha, 2, *args)


def _conn_id(policy: str, client: int) -> int:
    """Fresh keys for every (policy, client): each claim is of a new item."""
    return 2 * ("always", "everysec", "held").index(policy) + client


def _claims_per_s(bench: Bench, rp: RedisPeer, version: str) -> None:
    s = bench.sizes
    clients, procs = s.claim_clients, 2
    args = [(rp.path, "claim", rp.sha, w, clients // procs, MAX_MSGS) for w in range(procs)]
    _, done = workers.run_workers(workers.redis_closed_loop, args, s.throughput_seconds)
    rate = sum(done) / s.throughput_seconds
    bench.refs["redis_claims_per_s"] = rate
    bench.add(
        "peer_redis_claims_per_s_16_clients_appendfsync_always", rate, "claim/s",
        n=sum(done), clients=clients, redis=version, client="minimal RESP",
    )  # fmt: skip


def pexpire_pipelined(path: str, clients: int, seconds: float) -> tuple[float, int]:
    """PEXPIRE/s from ``clients`` pipelining processes (and the replies counted)."""
    args = [(path, 100 + w, PEXPIRE_KEYS, PEXPIRE_WINDOW, MAX_MSGS) for w in range(clients)]
    _, done = workers.run_workers(workers.redis_pipelined, args, seconds)
    return sum(done) / seconds, sum(done)


def _pexpire(bench: Bench, rp: RedisPeer, version: str) -> None:
    s = bench.sizes
    rate, n = pexpire_pipelined(rp.path, s.senders, s.ingest_seconds)
    bench.refs["redis_pexpire_pipelined_per_s"] = rate
    bench.add(
        f"peer_redis_pexpire_pipelined_per_s_{s.senders}_clients", rate, "hb/s", n=n,
        chart="ingest_vs_senders", x=s.senders, series="Redis PEXPIRE pipelined",
        clients=s.senders, window=PEXPIRE_WINDOW, keys_per_client=PEXPIRE_KEYS,
        redis=version, appendfsync="everysec",
        note=f"pipelined: at most {PEXPIRE_WINDOW} in flight per client, replies read as they"
        " come; appendfsync everysec",
    )  # fmt: skip
    args = [(rp.path, "heartbeat", rp.sha, w, 1, MAX_MSGS) for w in range(s.senders)]
    _, done = workers.run_workers(workers.redis_closed_loop, args, s.ingest_seconds)
    rate = sum(done) / s.ingest_seconds
    bench.refs["redis_pexpire_round_trip_per_s"] = rate
    bench.add(
        f"peer_redis_pexpire_round_trip_per_s_{s.senders}_clients", rate, "hb/s",
        n=sum(done), clients=s.senders, redis=version, appendfsync="everysec",
        note="round trip: each client waits for every reply; appendfsync everysec",
    )  # fmt: skip


def _claims_held(bench: Bench, rp: RedisPeer, version: str) -> None:
    """Claim round trips (``appendfsync everysec``) with as many leases held as coordd
    holds in s10: the peer's line on the claims-vs-held chart."""
    s = bench.sizes
    conn = workers.RespConn(rp.path)
    loaded = 0
    try:
        for held in s.held_sizes:
            while loaded < held:
                step = min(1000, held - loaded)
                cmds = b"".join(
                    workers.redis_command("claim", rp.sha, 997, 0, loaded + i) for i in range(step)
                )
                lines = conn.call(cmds, replies=step)
                if any(line.startswith(b"-") for line in lines):
                    raise RuntimeError(f"redis refused: {lines[:3]!r}")
                loaded += step
            lat = _timed(s.held_rtt_n, functools.partial(_held_claim, conn, rp.sha, held))
            for q in (50, 99):
                bench.add(
                    f"peer_redis_claim_rtt_p{q}_{held}_held", us(percentile(lat, q)), "us",
                    n=len(lat), items=held, redis=version, appendfsync="everysec",
                    client="minimal RESP", chart="claims_vs_held", x=held,
                    series=f"Redis claim p{q}",
                )  # fmt: skip
    finally:
        conn.close()
