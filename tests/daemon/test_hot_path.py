"""The heartbeat hot path of a real coordd: what an agent sees is unchanged by its shortcuts."""

from __future__ import annotations

import time

import zmq

from coordd import protocol
from tests.conftest import CoorddProcess


def test_one_way_heartbeats_are_counted_silently_and_refusals_answered(
    coordd: CoorddProcess,
) -> None:
    sock = coordd.agent()
    reply = coordd.request(sock, protocol.Claim(agent_id="h1", work_type="t", description="d"))
    wid, lease = reply.data["work_item_id"], reply.data["lease"]
    before = coordd.call(protocol.Status())["counters"]["heartbeats"]
    for _ in range(50):
        coordd.send(sock, protocol.Heartbeat(agent_id="h1", work_item_id=wid, lease=lease))
    # Refused one-way heartbeats are answered, in order, and change nothing.
    coordd.send(sock, protocol.Heartbeat(agent_id="h1", work_item_id=wid, lease=lease + 1))
    coordd.send(sock, protocol.Heartbeat(agent_id="h1", work_item_id="work_nope"))
    coordd.send(sock, protocol.Heartbeat(agent_id="intruder", work_item_id=wid))
    codes = [coordd.recv(sock).code for _ in range(3)]
    assert codes == ["lease_lost", "unknown_work", "not_owner"]
    assert sock.poll(200) == 0  # the 50 good ones got no reply
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        status = coordd.call(protocol.Status())
        if status["counters"]["heartbeats"] - before == 50:
            break
    assert status["counters"]["heartbeats"] - before == 50
    assert status["counters"]["lease_refused"] == 1
    # A heartbeat carrying progress takes the general path and records it.
    coordd.send(sock, protocol.Heartbeat(agent_id="h1", work_item_id=wid, lease=lease, progress=40))
    assert coordd.call(protocol.Show(work_item_id=wid))["progress"] == 40


def test_a_multi_part_request_is_answered_on_the_same_envelope(coordd: CoorddProcess) -> None:
    """A REQ-style client puts an empty delimiter before the payload; the reply keeps it."""
    sock = coordd.agent()
    payload = coordd.codec.encode(protocol.Claim(agent_id="h2", work_type="t", description="d"))
    sock.send_multipart([b"", payload])
    parts = sock.recv_multipart()
    assert parts[0] == b"" and len(parts) == 2
    assert isinstance(coordd.codec.reply_decoder.decode(parts[1]), protocol.Ok)
    req: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.setsockopt(zmq.RCVTIMEO, 5000)
    req.connect(coordd.agent_endpoint)
    req.send(coordd.codec.encode(protocol.Heartbeat(agent_id="h2", work_item_id="x", ack=True)))
    assert coordd.codec.reply_decoder.decode(req.recv()).code == "unknown_work"
    req.close()
