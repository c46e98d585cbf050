"""Staleness and recovery driven as the daemon drives them (tick, recover-stale, views),
with an injected clock: every strategy, threshold source, escalation, restart grace
and fencing case, in milliseconds of real time. The rules alone: ``test_rules.py``."""

from __future__ import annotations

import pytest

from coordd.core import indexes, recovery, views
from coordd.core.model import Conflict, LeaseLost, NotOwner, WorkItem
from coordd.core.rules import Policy, TypeRule, threshold
from coordd.core.state import State
from coordd.protocol import ItemBeat

T0 = 1_750_000_000.0
TICK = 1.0


def make(**policy: object) -> State:
    # Agents here heartbeat every second, so short item thresholds are accepted.
    return State(Policy(**{"heartbeat_interval": 1.0, **policy}))  # type: ignore[arg-type]


def run_ticks(st: State, start: float, end: float, tick: float = TICK) -> float | None:
    """Tick like the daemon from ``start`` to ``end``; the time of the first recovery."""
    t = start
    while t <= end:
        if recovery.tick(st, t):
            return t
        t += tick
    return None


def events(st: State) -> list[str]:
    return [e.event for e in st.drain()[1]]


# --- strategies -----------------------------------------------------------------


def test_reassign_puts_item_back_to_pending_and_fences_holder() -> None:
    st = make(stale_threshold=300, recovery="reassign")
    item = st.claim("a", "build", "d", T0)
    old_lease = item.lease
    st.drain()
    assert recovery.tick(st, T0 + 299) == []
    (rec,) = recovery.tick(st, T0 + 300)
    assert rec.strategy == "reassign" and rec.applied and rec.agent_id == "a"
    assert item.status == "pending" and item.agent_id is None
    assert item.recovered_at == T0 + 300 and item.recovered_from == "a"
    assert "no heartbeat for 300.0s (threshold 300s)" in (item.recovery_reason or "")
    assert item.lease > old_lease
    assert events(st) == ["stale_detected", "recovered"]
    assert st.counts()["stale"] == 0 and st.counts()["pending"] == 1


def test_retry_keeps_agent_resets_progress_and_gives_a_fresh_threshold() -> None:
    st = make(stale_threshold=100, recovery="retry")
    item = st.claim("a", "build", "d", T0)
    st.progress(item.work_item_id, 60, T0 + 10, agent_id="a")
    (rec,) = recovery.tick(st, T0 + 110)
    assert rec.strategy == "retry"
    assert item.status == "active" and item.agent_id == "a"
    assert item.progress == 0 and item.retry_count == 1
    assert item.last_heartbeat == T0 + 110 and item.stale_since is None
    assert recovery.tick(st, T0 + 209) == []  # a whole new threshold
    assert [r.strategy for r in recovery.tick(st, T0 + 210)] == ["retry"]


def test_fail_marks_failed_releases_and_logs_failed_stale() -> None:
    st = make(stale_threshold=50, recovery="fail")
    item = st.claim("a", "build", "d", T0, team="core")
    (rec,) = recovery.tick(st, T0 + 50)
    assert rec.strategy == "fail"
    assert item.status == "failed" and item.result == "failed_stale"
    assert st.workload("a") == 0
    assert st.completions[-1].work_item_id == item.work_item_id
    assert st.completions[-1].result == "failed_stale"
    assert st.counts()["stale"] == 0 and st.counts()["failed"] == 1
    # The silent holder comes back: fenced off, with or without its lease.
    with pytest.raises(LeaseLost):
        st.heartbeat("a", T0 + 60, item.work_item_id, lease=item.lease - 1)
    with pytest.raises(LeaseLost):
        st.complete(item.work_item_id, T0 + 60, agent_id="a")
    assert item.status == "failed" and item.result == "failed_stale"


def test_none_keeps_item_active_and_stale_until_a_heartbeat() -> None:
    st = make(stale_threshold=30, recovery="none")
    item = st.claim("a", "build", "d", T0)
    (rec,) = recovery.tick(st, T0 + 31)
    assert rec.strategy == "none" and not rec.applied
    assert item.status == "active" and item.stale_since == T0 + 31
    assert st.counts()["stale"] == 1
    assert recovery.tick(st, T0 + 500) == []  # detected once, not on every tick
    assert [i.work_item_id for i in recovery.stale_items(st, T0 + 500)] == [item.work_item_id]
    st.heartbeat("a", T0 + 501)
    assert item.stale_since is None and st.counts()["stale"] == 0
    assert "fresh_again" in events(st)
    assert recovery.tick(st, T0 + 530) == []
    assert len(recovery.tick(st, T0 + 531)) == 1  # and it is watched again


# --- threshold sources ------------------------------------------------------------


@pytest.mark.parametrize(
    ("stale_after", "type_threshold", "expected"),
    [(5.0, 20.0, 5.0), (None, 20.0, 20.0), (None, None, 100.0)],
    ids=["item", "work_type", "global"],
)
def test_threshold_sources_most_specific_first(
    stale_after: float | None, type_threshold: float | None, expected: float
) -> None:
    rules = {"deploy": TypeRule(stale_threshold=type_threshold)} if type_threshold else {}
    st = make(stale_threshold=100, work_types=rules)
    item = st.claim("a", "deploy", "d", T0, stale_after=stale_after)
    assert threshold(st.policy, item) == expected
    assert recovery.tick(st, T0 + expected - 0.001) == []
    assert [r.work_item_id for r in recovery.tick(st, T0 + expected)] == [item.work_item_id]


def test_work_type_strategy_overrides_global() -> None:
    st = make(
        stale_threshold=10, recovery="reassign", work_types={"deploy": TypeRule(recovery="fail")}
    )
    deploy = st.claim("a", "deploy", "d", T0)
    build = st.claim("a", "build", "d", T0)
    by_id = {r.work_item_id: r.strategy for r in recovery.tick(st, T0 + 10)}
    assert by_id == {deploy.work_item_id: "fail", build.work_item_id: "reassign"}


def test_detected_no_later_than_threshold_plus_one_tick() -> None:
    st = make(stale_threshold=7.3, recovery="none")
    item = st.claim("a", "t", "d", T0 + 0.4)  # off the tick grid on purpose
    found = run_ticks(st, T0, T0 + 100, tick=TICK)
    assert found is not None
    assert item.last_heartbeat is not None
    assert item.last_heartbeat + 7.3 <= found <= item.last_heartbeat + 7.3 + TICK


def test_heartbeats_postpone_detection() -> None:
    st = make(stale_threshold=10)
    item = st.claim("a", "t", "d", T0)
    for t in range(5, 100, 5):
        st.heartbeat("a", T0 + t, item.work_item_id, item.lease)
        assert recovery.tick(st, T0 + t) == []
    assert recovery.tick(st, T0 + 95 + 10) != []


# --- escalation -------------------------------------------------------------------


def test_retry_escalates_after_max_retries() -> None:
    st = make(stale_threshold=10, recovery="retry", max_retries=2, retry_escalation="fail")
    item = st.claim("a", "t", "d", T0)
    strategies = []
    t = T0
    for _ in range(3):
        t += 10
        strategies += [r.strategy for r in recovery.tick(st, t)]
    assert strategies == ["retry", "retry", "fail"]
    assert item.status == "failed" and item.retry_count == 2


def test_retry_escalation_can_be_reassign() -> None:
    st = make(stale_threshold=10, recovery="retry", max_retries=0, retry_escalation="reassign")
    item = st.claim("a", "t", "d", T0)
    assert [r.strategy for r in recovery.tick(st, T0 + 10)] == ["reassign"]
    assert item.status == "pending"


# --- restart grace ----------------------------------------------------------------


def test_restart_grace_downtime_is_not_counted() -> None:
    st = make(stale_threshold=60)
    item = st.claim("a", "t", "d", T0)
    # coordd was down for an hour and starts again at T0 + 3600 with the same state.
    st.start_grace(T0 + 3600)
    assert not st.is_stale(item, T0 + 3600)
    assert recovery.tick(st, T0 + 3659) == []
    assert recovery.stale_items(st, T0 + 3659) == []
    assert len(recovery.tick(st, T0 + 3660)) == 1


def test_reconnecting_agent_within_grace_keeps_its_item() -> None:
    st = make(stale_threshold=60)
    item = st.claim("a", "t", "d", T0)
    st.start_grace(T0 + 3600)
    st.heartbeat("a", T0 + 3630)
    assert recovery.tick(st, T0 + 3680) == []
    assert item.status == "active" and item.agent_id == "a"


# --- fencing -------------------------------------------------------------------------


def zombie_setup() -> tuple[State, WorkItem, int]:
    st = make(stale_threshold=10, recovery="reassign")
    item = st.claim("a", "t", "d", T0)
    lease_a = item.lease
    recovery.tick(st, T0 + 10)
    st.claim_next("b", T0 + 11)
    st.drain()
    return st, item, lease_a


def test_zombie_heartbeat_progress_complete_get_lease_lost() -> None:
    st, item, lease_a = zombie_setup()
    with pytest.raises(LeaseLost):
        st.heartbeat("a", T0 + 12, item.work_item_id, lease_a)
    with pytest.raises(LeaseLost):
        st.progress(item.work_item_id, 90, T0 + 12, agent_id="a", lease=lease_a)
    with pytest.raises(LeaseLost):
        st.complete(item.work_item_id, T0 + 12, agent_id="a", lease=lease_a)
    # Without its lease it is still recognised as the agent the item was taken from.
    with pytest.raises(LeaseLost, match="recovered from a"):
        st.complete(item.work_item_id, T0 + 12, agent_id="a")
    records, evs = st.drain()
    assert records == []
    assert [e.event for e in evs] == ["lease_lost"] * 4
    assert {e.agent_id for e in evs} == {"a"}


def test_zombie_late_complete_does_not_overwrite_new_holder() -> None:
    st, item, lease_a = zombie_setup()
    st.progress(item.work_item_id, 40, T0 + 12, agent_id="b", lease=item.lease)
    with pytest.raises(LeaseLost):
        st.complete(item.work_item_id, T0 + 13, agent_id="a", lease=lease_a, result="zombie")
    assert item.status == "active" and item.agent_id == "b" and item.progress == 40
    assert st.completions == []
    st.complete(item.work_item_id, T0 + 14, agent_id="b", lease=item.lease, result="ok")
    assert item.result == "ok" and st.completions[-1].agent_id == "b"
    with pytest.raises(LeaseLost):
        st.complete(item.work_item_id, T0 + 15, agent_id="a", lease=lease_a)
    assert item.result == "ok"


def test_agent_level_heartbeat_of_zombie_refreshes_nothing_it_lost() -> None:
    st, item, _ = zombie_setup()
    assert st.heartbeat("a", T0 + 12) == 0
    assert item.agent_id == "b"


def test_another_agent_is_not_owner_not_lease_lost() -> None:
    st, item, _ = zombie_setup()
    with pytest.raises(NotOwner):
        st.complete(item.work_item_id, T0 + 12, agent_id="c")


# --- cost of a tick ------------------------------------------------------------------


def test_tick_cost_is_proportional_to_expired_items_not_held_items() -> None:
    st = make(stale_threshold=300)
    for n in range(10_000):
        st.claim("busy", "t", "d", T0, work_item_id=f"busy_{n}")
    quick = [st.claim("quick", "t", "d", T0, stale_after=5).work_item_id for _ in range(3)]
    st.drain()
    before = st.heap_pops
    for t in range(1, 5):
        assert recovery.tick(st, T0 + t) == []
    assert st.heap_pops == before  # nothing expired: not one entry looked at
    recovered = recovery.tick(st, T0 + 5)
    assert sorted(r.work_item_id for r in recovered) == sorted(quick)
    assert st.heap_pops - before == 3


def test_heartbeated_items_cost_one_requeue_each_when_their_old_deadline_passes() -> None:
    st = make(stale_threshold=10)
    items = [st.claim("a", "t", "d", T0) for _ in range(100)]
    st.heartbeat("a", T0 + 5)  # moves every deadline to T0 + 15 without touching the heap
    before = st.heap_pops
    assert recovery.tick(st, T0 + 10) == []
    assert st.heap_pops - before == 100  # each surfaced once and was re-queued
    assert recovery.tick(st, T0 + 14) == []
    assert st.heap_pops - before == 100
    assert len(recovery.tick(st, T0 + 15)) == len(items)


def test_a_tick_recovers_at_most_its_budget_oldest_first_and_says_more_are_waiting() -> None:
    """Many items expiring at once are spread over ticks: each tick is bounded, the
    longest-silent go first, and none is lost or recovered twice."""
    st = make(stale_threshold=10, recovery="reassign")
    ids = [st.claim("a", "t", "d", T0 + k * 0.001).work_item_id for k in range(10)]
    st.drain()
    now = T0 + 20
    batches = []
    while True:
        batch = recovery.tick(st, now, budget=3)
        assert len(batch) <= 3
        if not batch:
            break
        batches.append([r.work_item_id for r in batch])
        assert st.expired_waiting(now) == (sum(map(len, batches)) < len(ids))
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert [w for b in batches for w in b] == ids  # claimed first, silent longest: first
    assert st.counts()["pending"] == 10 and not st.expired_waiting(now)


def test_a_budgeted_tick_bounds_heap_work_on_re_queued_entries_too() -> None:
    st = make(stale_threshold=10)
    for _ in range(100):
        st.claim("a", "t", "d", T0)
    st.heartbeat("a", T0 + 5)  # every entry surfaces at T0 + 10 and is re-queued
    before = st.heap_pops
    assert recovery.tick(st, T0 + 10, budget=5) == []
    assert st.heap_pops - before <= 5 * indexes.POPS_PER_EXPIRED
    assert st.expired_waiting(T0 + 10)
    while st.expired_waiting(T0 + 10):
        assert recovery.tick(st, T0 + 10, budget=5) == []
    assert st.heap_pops - before == 100  # each still surfaced once in all
    assert len(recovery.tick(st, T0 + 15, budget=None)) == 100


# --- manual recovery and the reports -------------------------------------------------


def test_recover_stale_dry_run_changes_nothing() -> None:
    st = make(stale_threshold=10, recovery="none")
    item = st.claim("a", "t", "d", T0)
    recovery.tick(st, T0 + 10)
    st.drain()
    (rep,) = recovery.recover_stale(st, T0 + 20, "reassign", dry_run=True)
    assert rep.strategy == "reassign" and not rep.applied and rep.silent_for == 20
    assert item.status == "active" and st.drain() == ([], [])


def test_recover_stale_reassign_all_or_one() -> None:
    st = make(stale_threshold=10, recovery="none")
    a = st.claim("a", "t", "d", T0)
    b = st.claim("b", "t", "d", T0)
    fresh = st.claim("c", "t", "d", T0 + 15)
    recovery.tick(st, T0 + 10)
    (one,) = recovery.recover_stale(st, T0 + 20, "fail", work_item_id=a.work_item_id)
    assert one.applied and a.status == "failed"
    reps = recovery.recover_stale(st, T0 + 20, "reassign")
    assert [r.work_item_id for r in reps] == [b.work_item_id]
    assert b.status == "pending" and fresh.status == "active"
    with pytest.raises(Conflict):
        recovery.recover_stale(st, T0 + 20, "retry", work_item_id=a.work_item_id)


def test_dashboard_counts_fresh_potentially_stale_and_stale() -> None:
    st = make(stale_threshold=100, recovery="none")
    st.claim("a", "t", "fresh", T0 + 90)
    st.claim("a", "t", "warn", T0 + 40)
    old = st.claim("b", "t", "stale", T0)
    recovery.tick(st, T0 + 100)
    d = views.dashboard(st, T0 + 100)
    assert (d.active, d.fresh, d.potentially_stale, d.stale) == (3, 1, 1, 1)
    (entry,) = d.stale_items
    assert entry.work_item_id == old.work_item_id and entry.agent_id == "b"
    assert entry.silent_for == 100 and entry.threshold == 100 and entry.strategy == "none"


def test_counts_stale_only_for_active_items() -> None:
    st = make(stale_threshold=10, recovery="fail")
    st.claim("a", "t", "d", T0)
    recovery.tick(st, T0 + 10)
    assert st.counts()["stale"] == 0 and st.counts()["failed"] == 1


def test_heartbeat_events_only_when_asked_and_one_per_batch() -> None:
    st = make(stale_threshold=10)
    items = [st.claim("a", "t", "d", T0) for _ in range(3)]
    st.drain()
    st.heartbeat("a", T0 + 1)
    assert events(st) == []  # off by default: the hot path allocates nothing
    st.heartbeat_events = True
    beats = [ItemBeat(i.work_item_id, i.lease) for i in items]
    refreshed, refused = st.heartbeat_batch(
        "a", T0 + 2, [*beats, ItemBeat(items[0].work_item_id, 999)]
    )
    assert refreshed == 3 and [(w, e.code) for w, e in refused] == [
        (items[0].work_item_id, "lease_lost")
    ]
    evs = st.drain()[1]
    assert [(e.event, e.detail) for e in evs] == [
        ("lease_lost", evs[0].detail),
        ("heartbeat", "refreshed 3"),
    ]
    assert all(i.last_heartbeat == T0 + 2 for i in items)
