"""The enums of ``coordd.kinds`` on the wire and on disk: the same strings as before."""

from __future__ import annotations

import msgspec
import pytest

from coordd import protocol
from coordd.core.model import WorkItem
from coordd.kinds import FsyncPolicy, Priority, Status, Strategy

DECODER = protocol.Codec().request_decoder


def encode(**fields: object) -> bytes:
    return msgspec.msgpack.encode({"op": "add", "work_type": "t", "description": "d", **fields})


@pytest.mark.parametrize("priority", ["low", "medium", "high", "critical"])
def test_a_request_accepts_every_priority_string(priority: str) -> None:
    req = DECODER.decode(encode(priority=priority))
    assert isinstance(req, protocol.Add) and req.priority == priority


def test_a_request_refuses_any_other_priority_as_a_validation_error() -> None:
    with pytest.raises(
        msgspec.ValidationError, match=r"Invalid enum value 'urgent' - at `\$.priority`"
    ):
        DECODER.decode(encode(priority="urgent"))
    with pytest.raises(msgspec.ValidationError, match=r"Expected `str`, got `int`"):
        DECODER.decode(encode(priority=3))


def test_recover_stale_strategy_and_defaults_encode_as_plain_strings() -> None:
    raw = msgspec.msgpack.encode({"op": "recover_stale", "strategy": "none"})
    assert DECODER.decode(raw) == protocol.RecoverStale(strategy=Strategy.NONE)
    with pytest.raises(msgspec.ValidationError, match="Invalid enum value 'later'"):
        DECODER.decode(msgspec.msgpack.encode({"op": "recover_stale", "strategy": "later"}))
    item = WorkItem(work_item_id="w", work_type="t", description="d")
    assert b'"priority":"medium","team":"","status":"pending"' in msgspec.json.encode(item)


def test_the_vocabularies() -> None:
    assert list(Status) == ["pending", "active", "completed", "failed"]
    assert list(Strategy) == ["reassign", "retry", "fail", "none"]
    assert list(Priority) == ["critical", "high", "medium", "low"]
    assert list(FsyncPolicy) == ["always", "everysec", "never"]
