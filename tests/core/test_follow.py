"""A standby applies its leader's records one batch at a time (``State.follow``); its
indexes must say what a restore from the same records says, or after a takeover it
would hand out the wrong item, miss a stale one, or count wrong."""

from __future__ import annotations

from coordd.core.state import State


def leader_batches(now: float) -> tuple[State, list[list]]:
    leader = State()
    batches = []

    def step(fn) -> None:  # type: ignore[no-untyped-def]
        fn()
        batches.append(leader.drain()[0])

    step(lambda: leader.register("a1", now, team="t"))
    step(lambda: [leader.add("build", f"d{i}", now, work_item_id=f"w{i}") for i in range(5)])
    step(lambda: leader.claim_next("a1", now))
    step(lambda: leader.claim_next("a1", now + 1))
    step(lambda: leader.complete("w0", now + 2, "a1", leader.items["w0"].lease, velocity=2))
    step(lambda: leader.release("w1", now + 3, "a1", leader.items["w1"].lease))
    step(lambda: leader.claim_next("a1", now + 4, work_item_id="w3"))
    return leader, batches


def test_following_batch_by_batch_equals_a_restore() -> None:
    now = 1_000.0
    follower = State()
    seen = []
    leader, batches = leader_batches(now)
    for batch in batches:
        follower.follow(batch)
        seen.extend(batch)
        restored = State()
        restored.restore(records=seen)
        assert follower.items == restored.items
        assert follower.counts() == restored.counts()
        assert follower.team_velocity == restored.team_velocity
        assert follower.lease_seq == restored.lease_seq
    # After a takeover the follower acts as the leader would have: same next item (a
    # released one waits behind the others), same lease numbers going on.
    took = follower.claim_next("a2", now + 5)
    assert took == leader.claim_next("a2", now + 5)
    assert follower.lease_seq == leader.lease_seq


def test_a_standby_lists_the_recoveries_its_leader_made() -> None:
    """check-stale and the dashboard are served by a standby too, and by it once it
    takes over: the leader's recoveries must be in its recent list, not only on the
    items."""
    import msgspec

    from coordd.core import recovery, views
    from coordd.core.model import Record
    from coordd.core.rules import Policy

    leader, follower = State(Policy(stale_threshold=10)), State(Policy(stale_threshold=10))

    def ship() -> None:  # through the journal's encoding, as a standby reads it
        records = msgspec.msgpack.encode(leader.drain()[0])
        follower.follow(msgspec.msgpack.decode(records, type=list[Record]))

    wid = leader.claim("a1", "t", "d", 100.0).work_item_id
    ship()
    assert [r.work_item_id for r in recovery.tick(leader, 111.0)] == [wid]
    ship()
    shown = views.recent_recoveries(follower, 112.0, 3600.0)
    assert [(e.work_item_id, e.recovered_from) for e in shown] == [(wid, "a1")]
    leader.heartbeat("a1", 112.0)
    ship()  # nothing recovered since: listed once
    assert len(views.recent_recoveries(follower, 113.0, 3600.0)) == 1
