"""The state core, with an injected clock: no sockets, no sleeps."""

from __future__ import annotations

import pytest

from coordd.core.model import (
    AddCompletion,
    BadRequest,
    Conflict,
    LeaseLost,
    LimitReached,
    Limits,
    NothingPending,
    NotOwner,
    PutItem,
    UnknownAgent,
    UnknownWork,
)
from coordd.core.state import State

T0 = 1_750_000_000.0


@pytest.fixture
def st() -> State:
    return State()


def test_claim_creates_active_item_with_lease_and_agent(st: State) -> None:
    item = st.claim("a1", "build", 'say "hi"', T0, priority="high", team="core")
    assert item.status == "active"
    assert item.agent_id == "a1"
    assert item.description == 'say "hi"'
    assert item.claimed_at == T0 and item.last_heartbeat == T0
    assert item.lease == 1
    assert item.work_item_id == f"work_{int(T0 * 1e9)}"
    assert st.workload("a1") == 1
    assert "a1" in st.agents  # an unknown agent is registered by its first claim


def test_ids_are_unique_even_at_the_same_instant(st: State) -> None:
    ids = {st.claim("a", "t", "d", T0).work_item_id for _ in range(100)}
    assert len(ids) == 100


def test_leases_grow_on_every_claim(st: State) -> None:
    leases = [st.claim("a", "t", "d", T0 + i).lease for i in range(5)]
    assert leases == sorted(leases) and len(set(leases)) == 5


def test_claim_next_takes_most_urgent_then_oldest(st: State) -> None:
    low = st.add("t", "low", T0, priority="low")
    med1 = st.add("t", "m1", T0 + 1, priority="medium")
    crit = st.add("t", "c", T0 + 2, priority="critical")
    med2 = st.add("t", "m2", T0 + 3, priority="medium")
    order = [st.claim_next("a", T0 + 10).work_item_id for _ in range(4)]
    assert order == [crit.work_item_id, med1.work_item_id, med2.work_item_id, low.work_item_id]
    with pytest.raises(NothingPending):
        st.claim_next("a", T0 + 11)


def test_claim_next_filters_by_type_and_team(st: State) -> None:
    st.add("build", "b", T0, team="x")
    wanted = st.add("test", "t", T0 + 1, team="y")
    with pytest.raises(NothingPending, match="type deploy"):
        st.claim_next("a", T0, work_type="deploy")
    assert st.claim_next("a", T0, work_type="test", team="y").work_item_id == wanted.work_item_id


def test_claim_next_race_exactly_one_winner(st: State) -> None:
    item = st.add("t", "d", T0)
    won = st.claim_next("a", T0, work_item_id=item.work_item_id)
    with pytest.raises(Conflict):
        st.claim_next("b", T0, work_item_id=item.work_item_id)
    assert won.agent_id == "a"


def test_progress_and_complete_by_holder(st: State) -> None:
    item = st.claim("a", "t", "d", T0, team="core")
    st.progress(item.work_item_id, 40, T0 + 5, agent_id="a", lease=item.lease, stage="review")
    assert item.progress == 40 and item.stage == "review" and item.last_heartbeat == T0 + 5
    st.complete(item.work_item_id, T0 + 9, agent_id="a", lease=item.lease, result="ok", velocity=5)
    assert item.status == "completed" and item.completed_at == T0 + 9 and item.result == "ok"
    assert st.completions[-1].velocity_points == 5
    assert st.team_velocity == {"core": 5}
    assert st.agents["a"].tasks_completed == 1
    assert st.workload("a") == 0


def test_wrong_lease_is_refused_and_changes_nothing(st: State) -> None:
    item = st.claim("a", "t", "d", T0)
    st.drain()
    with pytest.raises(LeaseLost):
        st.complete(item.work_item_id, T0 + 1, agent_id="a", lease=item.lease + 7)
    with pytest.raises(LeaseLost):
        st.progress(item.work_item_id, 50, T0 + 1, agent_id="a", lease=item.lease - 1)
    assert item.status == "active" and item.progress == 0
    records, events = st.drain()
    assert records == []  # nothing changed; observers only hear of the refusals
    assert [e.event for e in events] == ["lease_lost", "lease_lost"]
    assert st.counters["lease_refused"] == 2


def test_other_agent_is_not_owner(st: State) -> None:
    item = st.claim("a", "t", "d", T0)
    with pytest.raises(NotOwner, match="held by a"):
        st.complete(item.work_item_id, T0 + 1, agent_id="b")
    assert item.status == "active"


def test_operator_without_agent_may_act_but_lease_still_checked(st: State) -> None:
    item = st.claim("a", "t", "d", T0)
    with pytest.raises(LeaseLost):
        st.complete(item.work_item_id, T0 + 1, lease=99)
    st.complete(item.work_item_id, T0 + 1)
    assert item.status == "completed"


def test_unknown_work_and_agent(st: State) -> None:
    with pytest.raises(UnknownWork):
        st.progress("nope", 10, T0)
    with pytest.raises(UnknownAgent):
        st.heartbeat("ghost", T0)


def test_release_fences_the_old_holder(st: State) -> None:
    item = st.claim("a", "t", "d", T0)
    old = item.lease
    st.release(item.work_item_id, T0 + 1, agent_id="a", lease=old)
    assert item.status == "pending" and item.agent_id is None and item.lease > old
    with pytest.raises(LeaseLost):
        st.heartbeat("a", T0 + 2, item.work_item_id, old)
    again = st.claim_next("b", T0 + 3)
    assert again.work_item_id == item.work_item_id and again.agent_id == "b"


def test_completed_item_cannot_be_completed_twice(st: State) -> None:
    item = st.claim("a", "t", "d", T0)
    st.complete(item.work_item_id, T0 + 1, agent_id="a")
    with pytest.raises(Conflict):
        st.complete(item.work_item_id, T0 + 2, agent_id="a")
    assert len(st.completions) == 1


def test_agent_heartbeat_refreshes_all_its_items(st: State) -> None:
    items = [st.claim("a", "t", "d", T0) for _ in range(3)]
    other = st.claim("b", "t", "d", T0)
    assert st.heartbeat("a", T0 + 30) == 3
    assert all(i.last_heartbeat == T0 + 30 for i in items)
    assert other.last_heartbeat == T0
    assert st.agents["a"].last_heartbeat == T0 + 30


def test_heartbeat_writes_no_journal_record(st: State) -> None:
    item = st.claim("a", "t", "d", T0)
    st.drain()
    st.heartbeat("a", T0 + 1, item.work_item_id, item.lease)
    records, _ = st.drain()
    assert records == []
    st.heartbeat("a", T0 + 2, item.work_item_id, item.lease, progress=30)
    records, _ = st.drain()
    assert [type(r) for r in records] == [PutItem]


def test_transitions_emit_records_that_replay_to_the_same_state(st: State) -> None:
    a = st.claim("a", "t", "d1", T0, team="x")
    b = st.add("t", "d2", T0 + 1, priority="critical")
    st.claim_next("b", T0 + 2)
    st.complete(a.work_item_id, T0 + 3, agent_id="a", velocity=3)
    records, _ = st.drain()
    assert any(isinstance(r, AddCompletion) for r in records)
    replayed = State()
    assert replayed.restore(records=records) == len(records)
    assert replayed.items.keys() == st.items.keys()
    assert replayed.items[b.work_item_id].agent_id == "b"
    assert replayed.team_velocity == {"x": 3}
    assert replayed.lease_seq == st.lease_seq
    assert replayed.workload("b") == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"priority": "urgent"}, "priority must be one of"),
        ({"stale_after": -1.0}, "stale_after must be > 0"),
        ({"work_item_id": ""}, "must not be empty"),
        ({"work_item_id": "x" * 500}, "the limit is 200"),
    ],
)
def test_bad_add_is_refused_and_changes_nothing(st: State, kwargs: dict, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        st.add("t", "d", T0, **kwargs)
    assert st.items == {} and st.drain() == ([], [])


def test_duplicate_id_conflicts(st: State) -> None:
    st.add("t", "d", T0, work_item_id="w1")
    with pytest.raises(Conflict):
        st.claim("a", "t", "d", T0, work_item_id="w1")


def test_item_limit(st: State) -> None:
    small = State(limits=Limits(max_items=2))
    small.add("t", "d", T0)
    small.add("t", "d", T0)
    with pytest.raises(LimitReached):
        small.add("t", "d", T0)


def test_progress_out_of_range_is_refused(st: State) -> None:
    item = st.claim("a", "t", "d", T0)
    with pytest.raises(BadRequest, match="0-100"):
        st.progress(item.work_item_id, 101, T0, agent_id="a")
    assert item.progress == 0


def test_a_burst_of_claims_at_one_instant_stays_linear(st: State) -> None:
    """10,000 claims at the same ``now`` all get distinct, time-ordered ids without
    rescanning every earlier id (the old walk made this quadratic)."""
    ids = [st.claim("a", "t", "d", T0).work_item_id for _ in range(10_000)]
    assert len(set(ids)) == 10_000
    assert ids == sorted(ids, key=lambda i: int(i.split("_")[1]))
    assert st.add("t", "d", T0 - 5).work_item_id not in set(ids)
