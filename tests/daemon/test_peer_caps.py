"""One peer that never reads its replies (issue 14, finding 5).

Before: with 20k items, 60 ``list`` requests of limit 1e9 from a DEALER that never
read took the daemon from 48 MB to 591 MB, and delayed another client's ``status``.
Now a page is bounded, ZeroMQ queues few replies per peer, coordd holds at most
``max_peer_reply_bytes`` more, then drops that peer's replies and refuses its requests
until it reads; everybody else is answered as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import zmq

from coordd import protocol
from tests.conftest import CoorddProcess
from tests.helpers import wait_for

ITEMS = 5000
DESCRIPTION = "x" * 2000  # a page of list is then ~220 items, ~0.5 MB
FLOOD = 300


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def fill(d: CoorddProcess) -> None:
    """ITEMS pending items, pipelined on one agent connection that reads as it goes."""
    sock = d.agent()
    sock.setsockopt(zmq.RCVTIMEO, 30_000)
    for start in range(0, ITEMS, 250):
        for k in range(start, start + 250):
            add = protocol.Add(work_type="t", description=DESCRIPTION, work_item_id=f"w{k}")
            d.send(sock, add)
        for _ in range(250):
            assert isinstance(d.recv(sock), protocol.Ok)
    sock.close(0)


def hostile(d: CoorddProcess) -> zmq.Socket[bytes]:
    """A DEALER that reads nothing and buffers as little as ZeroMQ lets it."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.setsockopt(zmq.RCVBUF, 4096)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.connect(d.agent_endpoint)
    return sock


def test_a_peer_that_never_reads_costs_bounded_memory_and_delays_nobody(
    coordd_factory: Any,
) -> None:
    d: CoorddProcess = coordd_factory({"fsync": "never"})
    assert d.proc is not None
    fill(d)
    before = rss_mb(d.proc.pid)
    flood = hostile(d)
    big = msgspec.msgpack.encode({"op": "list", "v": 1, "limit": 1_000_000_000})
    for _ in range(FLOOD):
        flood.send(big)
    wait_for(lambda: "peer_replies_dropped" in d.log(), timeout=60)
    # Others are answered promptly all along (a deadline, not a timing assertion).
    for _ in range(5):
        status = d.call(protocol.Status(), timeout=1.0)
        assert status["counts"]["items"] == ITEMS
        flood.send(big)
    grown = rss_mb(d.proc.pid) - before
    # ZeroMQ holds <= 64 replies (~0.5 MB each) for the peer, coordd <= 4 MiB more:
    # ~40 MB in all. Before the change this flood meant ~3 GB (300 x 10 MB replies).
    assert grown < 150, f"RSS grew {grown:.0f} MB"
    # While it does not read, its requests are not run.
    flood.send(msgspec.msgpack.encode({"op": "add", "v": 1, "work_type": "t", "description": "no"}))
    wait_for(lambda: "peer_requests_refused" in d.log(), timeout=10)
    assert d.call(protocol.Status(), timeout=1.0)["counts"]["items"] == ITEMS
    # Once it reads, it is served again.
    flood.setsockopt(zmq.RCVTIMEO, 200)
    drained = 0
    while True:
        try:
            flood.recv()
            drained += 1
        except zmq.Again:
            if "peer_reading_again" in d.log():
                break
    assert 0 < drained < FLOOD  # some were dropped, none piled up without bound
    flood.setsockopt(zmq.RCVTIMEO, 5000)
    flood.send(msgspec.msgpack.encode({"op": "status", "v": 1}))
    reply = d.codec.reply_decoder.decode(flood.recv())
    while not (isinstance(reply, protocol.Ok) and isinstance(reply.data, dict)):
        reply = d.codec.reply_decoder.decode(flood.recv())  # a late list page
    assert reply.data["counts"]["items"] == ITEMS
    flood.close(0)


def test_a_client_that_pipelines_many_small_requests_gets_every_reply(
    coordd: CoorddProcess,
) -> None:
    # The per-peer queue in ZeroMQ is short; replies past it wait in coordd (in order)
    # while the client is reading, and none is lost.
    sock = coordd.agent()
    n = 3000
    for k in range(n):
        coordd.send(sock, protocol.Register(agent_id=f"a{k}"))
    got = [coordd.recv(sock) for _ in range(n)]
    assert [r.data["agent_id"] for r in got] == [f"a{k}" for k in range(n)]
    sock.close(0)
