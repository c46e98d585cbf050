"""Freshness as agents live it (issue 15), in the pure core with time as a parameter:
restart grace for stale items too, policy changes that re-judge items left stale,
thresholds against heartbeat intervals, checkpoints, dead letters, revocations, and
the recent recoveries that check-stale shows."""

from __future__ import annotations

from typing import Any

import pytest

from coordd import protocol
from coordd.config import Config
from coordd.core import recovery, views
from coordd.core.model import BadRequest, Conflict, PutItem
from coordd.core.revocations import LostLeases
from coordd.core.rules import Policy, TypeRule, threshold_warnings
from coordd.core.state import State
from coordd.daemon import handlers, routes

T0 = 1_750_000_000.0


def fresh(**policy: Any) -> State:
    return State(Policy(**{"heartbeat_interval": 1.0, **policy}))


def restart(old: State, policy: Policy, now: float) -> State:
    """What a restart does: a new state from the old one's items, the grace from ``now``."""
    st = State(policy)
    st.restore(items=old.items.values(), agents=old.agents.values(), lease_seq=old.lease_seq)
    st.start_grace(now)
    return st


# --- finding 4: restart grace for every active item; a policy change re-judges -------


def test_an_item_left_stale_under_none_is_recovered_after_a_restart_with_reassign() -> None:
    st = fresh(stale_threshold=10, recovery="none")
    wid = st.claim("a1", "t", "d", T0).work_item_id
    (report,) = recovery.tick(st, T0 + 11)
    assert report.strategy == "none" and st.items[wid].stale_since == T0 + 11

    later = T0 + 330  # restarted 5.5 minutes later with reassign
    st2 = restart(st, Policy(stale_threshold=10, recovery="reassign"), later)
    # The grace covers it like every active item: not stale, not recovered yet...
    assert not st2.is_stale(st2.items[wid], later + 5)
    assert recovery.tick(st2, later + 9.9) == []
    # ...and once it is over, the current policy applies.
    (done,) = recovery.tick(st2, later + 10)
    assert (done.work_item_id, done.strategy) == (wid, "reassign")
    assert st2.items[wid].status == "pending"


def test_a_policy_change_recovers_items_left_stale_under_none() -> None:
    st = fresh(stale_threshold=10, recovery="none")
    wid = st.claim("a1", "t", "d", T0).work_item_id
    recovery.tick(st, T0 + 11)
    assert st.items[wid].stale_since is not None
    assert st.set_policy(Policy(stale_threshold=10, recovery="reassign", heartbeat_interval=1))
    (done,) = recovery.tick(st, T0 + 12)
    assert (done.work_item_id, done.strategy) == (wid, "reassign")


def test_a_policy_change_that_keeps_none_leaves_stale_items_alone() -> None:
    st = fresh(stale_threshold=10, recovery="none")
    wid = st.claim("a1", "t", "d", T0).work_item_id
    recovery.tick(st, T0 + 11)
    st.set_policy(Policy(stale_threshold=20, recovery="none", heartbeat_interval=1))
    assert recovery.tick(st, T0 + 12) == []
    assert st.items[wid].stale_since == T0 + 11


# --- finding 5: thresholds against heartbeat intervals ------------------------------


def test_thresholds_below_two_heartbeat_intervals_are_warned_about() -> None:
    policy = Policy(
        stale_threshold=30,
        heartbeat_interval=60,
        work_types={"deploy": TypeRule(stale_threshold=200), "lint": TypeRule(stale_threshold=90)},
    )
    warnings = threshold_warnings(policy)
    assert len(warnings) == 2
    assert "stale_threshold = 30s is below 2 x heartbeat_interval (60s)" in warnings[0]
    assert "work_types.lint.stale_threshold = 90s" in warnings[1]
    assert threshold_warnings(Policy(stale_threshold=120, heartbeat_interval=60)) == []


def test_a_claim_shorter_than_two_configured_intervals_is_refused_with_the_reason() -> None:
    st = State(Policy(heartbeat_interval=60))
    with pytest.raises(BadRequest) as e:
        st.claim("agent_x", "t", "d", T0, stale_after=3)
    assert "stale_after 3s is below 2 x the heartbeat interval of agent_x (60s, configured)" in str(
        e.value
    )
    assert "at least 120s" in str(e.value)
    assert st.items == {}
    assert st.claim("agent_x", "t", "d", T0, stale_after=120).stale_after == 120


def test_the_agents_declared_interval_wins_over_the_configured_one() -> None:
    st = State(Policy(heartbeat_interval=60))
    st.register("fast", T0, heartbeat_interval=1)
    assert st.claim("fast", "t", "d", T0, stale_after=3).stale_after == 3
    st.register("slow", T0, heartbeat_interval=10)
    with pytest.raises(BadRequest, match="10s, declared by the agent"):
        st.claim("slow", "t", "d", T0, stale_after=15)


def test_register_without_capacity_keeps_the_agents_capacity() -> None:
    st = State()
    st.register("a", T0, capacity=7)
    st.register("a", T0, heartbeat_interval=5)
    assert (st.agents["a"].capacity, st.agents["a"].heartbeat_interval) == (7, 5)
    assert st.register("new", T0).capacity == 100


def test_config_threshold_warnings_read_the_configured_interval() -> None:
    cfg = Config(stale_threshold=30, heartbeat_interval=60)
    assert threshold_warnings(cfg.policy())


# --- checkpoints ---------------------------------------------------------------------


def test_a_changed_checkpoint_is_journaled_an_unchanged_one_costs_nothing() -> None:
    st = fresh()
    item = st.claim("a", "t", "d", T0)
    st.drain()
    st.heartbeat("a", T0 + 1, item.work_item_id, item.lease, checkpoint="step 1")
    records, _ = st.drain()
    assert [type(r) for r in records] == [PutItem]
    assert records[0].item.checkpoint == "step 1"  # type: ignore[union-attr]
    st.heartbeat("a", T0 + 2, item.work_item_id, item.lease, checkpoint="step 1")
    st.heartbeat("a", T0 + 3, item.work_item_id, item.lease)
    assert st.drain() == ([], [])
    st.progress(item.work_item_id, 40, T0 + 4, "a", item.lease, checkpoint="branch x")
    records, _ = st.drain()
    assert len(records) == 1 and st.items[item.work_item_id].checkpoint == "branch x"


def test_an_agent_level_heartbeat_cannot_carry_a_checkpoint() -> None:
    st = fresh()
    st.claim("a", "t", "d", T0)
    with pytest.raises(BadRequest, match="name work_item_id"):
        st.heartbeat("a", T0, checkpoint="x")


def test_the_checkpoint_survives_recovery_and_goes_to_the_next_holder() -> None:
    st = fresh(stale_threshold=10)
    item = st.claim("a", "t", "d", T0)
    st.heartbeat("a", T0 + 1, item.work_item_id, item.lease, checkpoint="files: a.py b.py")
    recovery.tick(st, T0 + 12)
    assert st.items[item.work_item_id].status == "pending"
    taken = st.claim_next("b", T0 + 13)
    assert taken.work_item_id == item.work_item_id and taken.checkpoint == "files: a.py b.py"


def test_the_checkpoint_is_in_the_wire_limits() -> None:
    codec = protocol.Codec()
    raw = codec.encode(protocol.Heartbeat(agent_id="a", work_item_id="w", checkpoint="x" * 4097))
    with pytest.raises(Exception, match="length <= 4096"):
        codec.request_decoder.decode(raw)


# --- dead letter -------------------------------------------------------------------------


def _bounce(st: State, wid: str, now: float, times: int) -> float:
    """Claim the item and let it go silent ``times`` times; the time after the last."""
    for _ in range(times):
        st.claim_next("agent", now, work_item_id=wid)
        now += 11
        recovery.tick(st, now)
    return now


def test_an_item_recovered_more_than_max_recoveries_times_is_dead_lettered() -> None:
    st = fresh(stale_threshold=10, max_recoveries=3)
    wid = st.add("t", "bounces", T0).work_item_id
    now = _bounce(st, wid, T0, 3)
    item = st.items[wid]
    assert (item.status, item.recoveries) == ("pending", 3)
    st.claim_next("agent", now, work_item_id=wid)
    (report,) = recovery.tick(st, now + 11)
    assert report.dead_letter and report.strategy == "fail"
    assert item.status == "failed" and item.result == "too_many_recoveries"
    assert item.recovery_reason is not None
    assert item.recovery_reason.startswith("too_many_recoveries: recovered 3 times")
    assert st.completions[-1].result == "too_many_recoveries"


def test_max_recoveries_per_work_type_and_retry_counts_too() -> None:
    st = fresh(
        stale_threshold=10,
        recovery="retry",
        max_retries=5,
        work_types={"flaky": TypeRule(max_recoveries=1)},
    )
    item = st.claim("a", "flaky", "d", T0)
    (first,) = recovery.tick(st, T0 + 11)
    assert first.strategy == "retry" and item.recoveries == 1
    (second,) = recovery.tick(st, T0 + 22)
    assert second.dead_letter and item.status == "failed"


def test_retry_puts_a_failed_item_back_keeping_its_checkpoint() -> None:
    st = fresh(stale_threshold=10, recovery="fail")
    item = st.claim("a", "t", "d", T0)
    st.progress(item.work_item_id, 60, T0 + 1, "a", item.lease, checkpoint="step 6")
    recovery.tick(st, T0 + 12)
    assert item.status == "failed" and st.counts()["failed"] == 1
    back = st.retry(item.work_item_id, T0 + 20)
    assert (back.status, back.progress, back.recoveries, back.checkpoint) == (
        "pending",
        0,
        0,
        "step 6",
    )
    assert back.agent_id is None and back.lease > item.lease - 1
    assert st.counts()["failed"] == 0 and st.counts()["pending"] == 1
    assert st.claim_next("b", T0 + 21).checkpoint == "step 6"
    with pytest.raises(Conflict, match="only failed items"):
        st.retry(item.work_item_id, T0 + 22)


def test_a_retried_item_is_not_pruned_by_retention_while_it_is_worked_on() -> None:
    st = fresh(stale_threshold=10, recovery="fail")
    item = st.claim("a", "t", "d", T0)
    recovery.tick(st, T0 + 12)
    st.retry(item.work_item_id, T0 + 20)
    again = st.claim_next("b", T0 + 21)
    # Retention's cut far past the failure: the item is active again, not finished.
    assert st.prune(before=T0 + 10_000, at_most=100) == 0
    assert st.get(again.work_item_id).status == "active"
    assert st.counts()["failed"] == 0


def test_retry_is_routed_for_operators_only() -> None:
    handlers.load()
    assert routes.allowed(protocol.Retry, control=True)
    assert not routes.allowed(protocol.Retry, control=False)


# --- revocations -----------------------------------------------------------------------


def test_a_recovery_queues_a_revocation_for_the_holder_with_the_lost_lease() -> None:
    st = fresh(stale_threshold=10)
    item = st.claim("a", "t", "d", T0)
    lease = item.lease
    st.drain()
    recovery.tick(st, T0 + 11)
    (rev,) = st.take_revocations()
    assert (rev.work_item_id, rev.lease, rev.agent_id, rev.strategy) == (
        item.work_item_id,
        lease,
        "a",
        "reassign",
    )
    assert "no heartbeat for 11.0s (threshold 10s)" in rev.reason
    assert st.take_revocations() == []
    # The agent's next agent-level heartbeat is told, once.
    assert [r.work_item_id for r in st.take_lost("a")] == [item.work_item_id]
    assert st.take_lost("a") == []


def test_a_retry_recovery_revokes_nothing() -> None:
    st = fresh(stale_threshold=10, recovery="retry")
    st.claim("a", "t", "d", T0)
    recovery.tick(st, T0 + 11)
    assert st.take_revocations() == []


def test_the_revocation_names_the_new_holder_when_there_is_one() -> None:
    st = fresh(stale_threshold=10)
    item = st.claim("a", "t", "d", T0)
    recovery.tick(st, T0 + 11)
    st.claim_next("b", T0 + 11)  # in the same batch, before the push
    (rev,) = st.take_revocations()
    assert rev.new_holder == "b" and rev.work_item_id == item.work_item_id


def test_an_agent_level_heartbeat_answers_with_the_items_lost() -> None:
    handlers.load()
    st = fresh(stale_threshold=10)
    ctx = routes.Context(st, Config(), lambda: {}, lambda: None, control=False)  # type: ignore[arg-type,return-value]
    kept = st.claim("a", "t", "kept", T0)
    lost = st.claim("a", "t", "lost", T0, stale_after=5)
    st.heartbeat("a", T0 + 4, kept.work_item_id)
    recovery.tick(st, T0 + 6)
    reply = routes.dispatch(ctx, protocol.Heartbeat(agent_id="a"), T0 + 7)
    assert reply["refreshed"] == 1
    assert [r.work_item_id for r in reply["lost"]] == [lost.work_item_id]
    # Said once: the next heartbeat is one-way again.
    assert routes.dispatch(ctx, protocol.Heartbeat(agent_id="a"), T0 + 8) is routes.NO_REPLY


# --- finding 8: what was recovered, without events -----------------------------------------


def test_recent_recoveries_say_when_why_from_whom_and_to_whom() -> None:
    st = fresh(stale_threshold=10)
    old = st.claim("a", "t", "long ago", T0)
    recovery.tick(st, T0 + 11)
    moved = st.claim("a", "t", "moved", T0 + 3000)
    failed_st = st.claim("c", "deploy", "gone", T0 + 3000)
    st.set_policy(
        Policy(
            stale_threshold=10,
            heartbeat_interval=1,
            work_types={"deploy": TypeRule(recovery="fail")},
        )
    )
    recovery.tick(st, T0 + 3011)
    st.claim_next("b", T0 + 3012, work_item_id=moved.work_item_id)
    now = T0 + 3700  # the first recovery is more than an hour old
    entries = views.recent_recoveries(st, now, window=3600)
    by_id = {e.work_item_id: e for e in entries}
    assert set(by_id) == {moved.work_item_id, failed_st.work_item_id}  # "long ago" is older
    assert old.work_item_id not in by_id
    e = by_id[moved.work_item_id]
    assert (e.strategy, e.recovered_from, e.now_held_by, e.recovered_at) == (
        "reassign",
        "a",
        "b",
        T0 + 3011,
    )
    assert e.reason == "no heartbeat for 11.0s (threshold 10s)"
    f = by_id[failed_st.work_item_id]
    assert (f.strategy, f.now_held_by, f.status) == ("fail", None, "failed")
    assert len(views.recent_recoveries(st, now, window=4000)) == 3


def test_recent_recoveries_are_rebuilt_after_a_restart() -> None:
    st = fresh(stale_threshold=10)
    item = st.claim("a", "t", "d", T0)
    recovery.tick(st, T0 + 11)
    st2 = restart(st, st.policy, T0 + 20)
    assert [e.work_item_id for e in views.recent_recoveries(st2, T0 + 30, 3600)] == [
        item.work_item_id
    ]


def test_lost_leases_kept_for_agents_that_never_ask_are_bounded_in_all() -> None:
    """A churn of agents that are recovered and never send an agent-level heartbeat
    (SDK agents heartbeat their items) cannot grow what coordd keeps for them."""
    st = fresh(stale_threshold=10, recovery="fail")
    st.lost = LostLeases(per_agent=3, kept=50)
    t = T0
    for n in range(200):
        st.claim(f"short_lived_{n}", "t", "d", t)
        t += 11
        recovery.tick(st, t)
        st.take_revocations()  # what the edge does once the recoveries are durable
    assert st.lost.count == 50 == sum(len(v) for v in st.lost.by_agent.values())
    # The newest are kept: the last agent still hears of its lost lease.
    assert [r.agent_id for r in st.take_lost("short_lived_199")] == ["short_lived_199"]
    assert st.take_lost("short_lived_0") == []
    # And per agent: one agent losing many keeps only its most recent ones.
    for _ in range(5):
        st.claim("busy", "t", "d", t)
        t += 11
        recovery.tick(st, t)
    assert len(st.take_lost("busy")) == 3 and st.lost.count == 50 - 3
