"""Findings 4 and 7 through a real daemon: what a client sends reaches it as
``bad_request`` naming the field, and ``status`` keeps working across a restart."""

from __future__ import annotations

import math

import msgspec

from coordd import protocol
from tests.conftest import CoorddProcess


def raw(d: CoorddProcess, msg: dict) -> protocol.AnyReply:
    sock = d.agent()
    sock.send(msgspec.msgpack.encode(msg))
    reply: protocol.AnyReply = d.codec.reply_decoder.decode(sock.recv())
    sock.close(0)
    return reply


def test_huge_velocities_and_infinite_thresholds_are_refused_by_name(
    coordd: CoorddProcess,
) -> None:
    for _ in range(2):
        item = coordd.call(
            protocol.Claim(agent_id="a", work_type="t", description="d", team="core")
        )
        reply = raw(
            coordd,
            {
                "op": "complete",
                "v": 1,
                "agent_id": "a",
                "work_item_id": item["work_item_id"],
                "lease": item["lease"],
                "velocity": 2**64 - 1,
            },
        )
        assert isinstance(reply, protocol.Error) and reply.code == "bad_request"
        assert "$.velocity" in reply.message
    reply = raw(
        coordd,
        {"op": "add", "v": 1, "work_type": "t", "description": "d", "stale_after": math.inf},
    )
    assert isinstance(reply, protocol.Error) and "$.stale_after" in reply.message
    assert coordd.call(protocol.Status())["counts"]["active"] == 2
    assert coordd.stop() == 0
    coordd.start()
    assert coordd.call(protocol.Status())["team_velocity"] == {}
