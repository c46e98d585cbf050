"""Client processes for the load scenarios (started with ``spawn``: a forked child must
not inherit the parent's ZeroMQ context). Each one is bounded by a message count and by
a wall-clock stop time, and reports what it did on a queue.

Times are ``time.monotonic()`` values, which Linux shares across processes.
"""

from __future__ import annotations

import multiprocessing as mp
import select
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

CTX = mp.get_context("spawn")


def run_workers(
    target: Callable[..., Any],
    args_list: Sequence[tuple[Any, ...]],
    run_for: float,
    during: Callable[[], Any] | None = None,
    timeout: float = 120.0,
) -> tuple[Any, list[Any]]:
    """Start one process per argument tuple, let them all set up, then let them run for
    ``run_for`` seconds while the parent calls ``during()``.

    Each target is called as ``target(barrier, run_for, *args)`` and must wait on the
    barrier once connected, so the clock starts when every client is in place.
    Returns (what ``during`` returned, one result per process).
    """
    queue = CTX.Queue()
    barrier = CTX.Barrier(len(args_list) + 1)
    procs = [
        CTX.Process(target=_wrap, args=(target, queue, (barrier, run_for, *args)))
        for args in args_list
    ]
    for p in procs:
        p.start()
    results: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        barrier.wait(timeout=60)
        seen = during() if during is not None else None
        for _ in procs:
            results.append(queue.get(timeout=max(0.1, deadline - time.monotonic())))
    finally:
        for p in procs:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(5)
    errors = [r for r in results if isinstance(r, str) and r.startswith("error:")]
    if errors:
        raise RuntimeError(errors[0])
    return seen, results


def _wrap(target: Callable[..., Any], queue: Any, args: tuple[Any, ...]) -> None:
    try:
        queue.put(target(*args))
    except Exception as e:  # the parent raises it
        queue.put(f"error: {type(e).__name__}: {e}")


def _start(barrier: Any, run_for: float) -> float:
    """Wait for every client (and the parent) to be in place; the time to stop at."""
    barrier.wait(timeout=60)
    return time.monotonic() + run_for


# --- ZeroMQ -------------------------------------------------------------------------


def one_way_sender(
    barrier: Any, run_for: float, endpoint: str, payloads: list[bytes], max_msgs: int
) -> int:
    """Stream ``payloads`` round-robin into a ROUTER until ``stop_at``; messages sent.

    A DEALER blocks at its high-water mark, so the rate is the receiver's, not ours.
    """
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 100)
    sock.connect(endpoint)
    stop_at = _start(barrier, run_for)
    sent = 0
    n = len(payloads)
    while sent < max_msgs:
        if sent % 256 == 0 and time.monotonic() >= stop_at:
            break
        try:
            sock.send(payloads[sent % n])
        except zmq.Again:
            if time.monotonic() >= stop_at:
                break
            continue
        sent += 1
    sock.close(0)
    return sent


def closed_loop(
    barrier: Any,
    run_for: float,
    endpoint: str,
    payloads: list[bytes],
    sockets: int,
    max_msgs: int,
    keep_latencies: bool,
) -> tuple[int, int, list[float]]:
    """``sockets`` DEALERs, each with one request in flight; (replies, errors, latencies)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    poller = zmq.Poller()
    socks = []
    for _ in range(sockets):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        poller.register(s, zmq.POLLIN)
        socks.append(s)
    stop_at = _start(barrier, run_for)
    sent_at: dict[Any, float] = {}
    done = errors = sent = 0
    lat: list[float] = []
    n = len(payloads)
    for s in socks:
        sent_at[s] = time.perf_counter()
        s.send(payloads[sent % n])
        sent += 1
    while done < max_msgs and time.monotonic() < stop_at:
        for s, _ in poller.poll(100):
            raw = s.recv()
            now = time.perf_counter()
            done += 1
            if b"\xa5error" in raw[:16]:  # the msgpack tag of an Error reply
                errors += 1
            if keep_latencies:
                lat.append(now - sent_at[s])
            if sent < max_msgs and time.monotonic() < stop_at:
                sent_at[s] = time.perf_counter()
                s.send(payloads[sent % n])
                sent += 1
    for s in socks:
        s.close(0)
    return done, errors, lat


def echo_server(barrier: Any, run_for: float, endpoint: str, max_msgs: int) -> int:
    """A ROUTER that sends every message straight back (the round-trip ceiling)."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 100)
    sock.bind(endpoint)
    stop_at = _start(barrier, run_for)
    n = 0
    while n < max_msgs and time.monotonic() < stop_at:
        try:
            frames = sock.recv_multipart()
        except zmq.Again:
            continue
        sock.send_multipart(frames)
        n += 1
    sock.close(0)
    return n


# --- Redis (raw RESP over a Unix socket, so the client's cost is not what we measure) --


def resp(*args: str | bytes) -> bytes:
    """One Redis command in RESP."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a.encode() if isinstance(a, str) else a
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class RespConn:
    """A minimal Redis connection for commands whose replies are one line each
    (integers, simple strings, nil), which is all the lease pattern uses."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.buf = b""

    def call(self, data: bytes, replies: int = 1) -> list[bytes]:
        self.sock.sendall(data)
        while self.buf.count(b"\r\n") < replies:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        lines = self.buf.split(b"\r\n")
        self.buf = b"\r\n".join(lines[replies:])
        return lines[:replies]

    def close(self) -> None:
        self.sock.close()


def redis_closed_loop(
    barrier: Any,
    run_for: float,
    path: str,
    kind: str,
    sha: str,
    worker: int,
    conns: int,
    max_ops: int,
) -> int:
    """``conns`` Redis clients, one command in flight each: ``claim`` (the Lua script on
    a fresh key) or ``heartbeat`` (PEXPIRE on the client's lease key). Commands done."""
    clients = [RespConn(path) for _ in range(conns)]
    for c, conn in enumerate(clients):
        conn.call(resp("SET", f"lease:hb:{worker}:{c}", "agent", "PX", "300000"))
    poller = select.poll()
    by_fd = {conn.sock.fileno(): (c, conn) for c, conn in enumerate(clients)}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    stop_at = _start(barrier, run_for)
    ops = sent = 0
    for c, conn in enumerate(clients):
        conn.sock.sendall(redis_command(kind, sha, worker, c, sent))
        sent += 1
    while ops < max_ops and time.monotonic() < stop_at:
        for fd, _ in poller.poll(100):
            c, conn = by_fd[fd]
            conn.buf += conn.sock.recv(65536)
            if b"\r\n" not in conn.buf:
                continue
            line, _, conn.buf = conn.buf.partition(b"\r\n")
            if line.startswith(b"-"):
                raise RuntimeError(f"redis refused: {line!r}")
            ops += 1
            conn.sock.sendall(redis_command(kind, sha, worker, c, sent))
            sent += 1
    for conn in clients:
        conn.close()
    return ops


def redis_pipelined(
    barrier: Any,
    run_for: float,
    path: str,
    worker: int,
    keys: int,
    window: int,
    max_ops: int,
) -> int:
    """A pipelining Redis client: ``PEXPIRE`` on its ``keys`` lease keys in turn, at most
    ``window`` commands unanswered, replies read as they come and the window refilled
    with one write (what a Redis user does who cares about heartbeat rate). Replies
    counted within ``run_for``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    names = [f"lease:hb:{worker:03d}:{k:06d}" for k in range(keys)]
    setup = b"".join(resp("SET", n, "agent", "PX", "300000") for n in names)
    sock.sendall(setup)
    _read_lines(sock, keys)
    # Every command has the same length, so a refill of n commands is one slice of a
    # ring of pre-encoded commands (no encoding in the timed loop).
    cmds = [resp("PEXPIRE", n, "300000") for n in names]
    size = len(cmds[0])
    ring = b"".join(cmds * (2 * window // keys + 2))
    span = keys * size
    stop_at = _start(barrier, run_for)
    sock.sendall(ring[: window * size])
    off = window * size % span
    done = 0
    tail = b""
    while done < max_ops:
        data = tail + sock.recv(65536)
        if not data:
            raise ConnectionError("redis closed the connection")
        # Each reply is one line (":1"); keep a split "\r" for the next read.
        tail = b"\r" if data.endswith(b"\r") else b""
        n = data.count(b"\r\n")
        if b"-" in data:
            raise RuntimeError(f"redis refused: {data[:200]!r}")
        done += n
        if time.monotonic() >= stop_at:
            break
        if n:
            sock.sendall(ring[off : off + n * size])
            off = (off + n * size) % span
    sock.close()
    return done


def _read_lines(sock: socket.socket, n: int) -> None:
    buf = b""
    while buf.count(b"\r\n") < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("redis closed the connection")
        buf += chunk


def redis_command(kind: str, sha: str, worker: int, conn: int, seq: int) -> bytes:
    """The lease pattern's claim (Lua script on a fresh item) or heartbeat (PEXPIRE)."""
    if kind == "heartbeat":
        return resp("PEXPIRE", f"lease:hb:{worker}:{conn}", "300000")
    wid = f"{worker}:{conn}:{seq}"
    return resp(
        "EVALSHA", sha, "2", f"lease:{wid}", f"item:{wid}", f"agent{worker}", "300000",
        "d" * 100, "1700000000",
    )  # fmt: skip
