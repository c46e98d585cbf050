"""Published events are numbered (a subscriber can tell it missed some) and carry the
item as it now is; a subscriber decoding the plain ``Event`` still reads them."""

from __future__ import annotations

import time

import msgspec
import zmq

from coordd import protocol
from coordd.core.model import Event, Published
from tests.conftest import CoorddProcess


def _subscribe(d: CoorddProcess) -> zmq.Socket[bytes]:
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(d.events_endpoint)
    for _ in range(200):  # the subscription takes a moment to reach the PUB socket
        d.call(protocol.Register(agent_id="probe"))
        if sock.poll(25):
            while sock.poll(50):
                sock.recv_multipart()
            return sock
    raise AssertionError("no event arrived")


def _collect(sock: zmq.Socket[bytes], n: int) -> list[bytes]:
    out: list[bytes] = []
    deadline = time.monotonic() + 10
    while len(out) < n and time.monotonic() < deadline:
        if sock.poll(100):
            out.append(sock.recv_multipart()[1])
    return out


def test_events_are_numbered_one_by_one_and_carry_the_item(coordd: CoorddProcess) -> None:
    sock = _subscribe(coordd)
    coordd.call(protocol.Claim(agent_id="a1", work_type="t", description="first"))
    item = coordd.call(protocol.Claim(agent_id="a1", work_type="t", description="second"))
    wid = item["work_item_id"]
    coordd.call(protocol.Progress(work_item_id=wid, progress=40, status="build"))
    coordd.call(protocol.Complete(work_item_id=wid, result="done"))
    frames = _collect(sock, 3)  # claimed, claimed, completed (progress is no event)
    published = [msgspec.msgpack.decode(f, type=Published) for f in frames]
    seqs = [p.seq for p in published]
    assert seqs == list(range(seqs[0], seqs[0] + 3)), seqs
    done = published[-1]
    assert done.event == "completed" and done.item is not None
    assert (done.item.status, done.item.result, done.item.progress) == ("completed", "done", 100)
    assert published[1].item is not None and published[1].item.description == "second"
    # The old decoder (coordctl events) reads the same bytes, extra fields ignored.
    old = msgspec.msgpack.decode(frames[-1], type=Event)
    assert (old.event, old.work_item_id) == ("completed", wid)
    sock.close(0)
