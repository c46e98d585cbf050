"""Request ids in the state: a remembered reply is journaled with the change, comes
back on replay (and to a standby), and is forgotten oldest first after its time."""

from __future__ import annotations

from coordd.core.model import Applied
from coordd.core.state import State


def test_a_remembered_reply_is_journaled_and_replayed() -> None:
    leader = State()
    leader.add("t", "d", 100.0, work_item_id="w1")
    leader.remember("r1", 100.0, b"\x81\xa1a\x01")
    records, _ = leader.drain()
    assert records[-1] == Applied("r1", 100.0, b"\x81\xa1a\x01")
    again = State()
    again.restore(records=records)
    assert again.reply_for("r1") == b"\x81\xa1a\x01"
    follower = State()
    follower.follow(records)
    assert follower.reply_for("r1") == b"\x81\xa1a\x01"
    assert follower.reply_for("r2") is None


def test_replies_are_forgotten_oldest_first_by_age_and_count() -> None:
    state = State()
    for n in range(5):
        state.remember(f"r{n}", 100.0 + n, b"")
    assert state.forget_applied(before=102.0, keep_at_most=10) == 2
    assert list(state.applied) == ["r2", "r3", "r4"]
    assert state.forget_applied(before=0.0, keep_at_most=1) == 2
    assert list(state.applied) == ["r4"]
    assert state.forget_applied(before=0.0, keep_at_most=1) == 0
