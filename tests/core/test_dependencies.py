"""Work that waits for other work (``--after``), in the pure core with an injected clock.

An item is blocked while a dependency has not completed with result ``success``;
claim-next skips it (through its own index, not a scan), a success releases exactly
its dependents, a failure keeps them blocked with the reason. Blocked is derived, never
a stored status, and survives a replay and the legacy files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from coordd import legacy
from coordd.core.model import BadRequest, Conflict, NothingPending, UnknownWork
from coordd.core.state import State

T0 = 1_750_000_000.0


@pytest.fixture
def st() -> State:
    return State()


def chain(st: State) -> tuple[str, str, str]:
    a = st.add("build", "A", T0, work_item_id="A").work_item_id
    b = st.add("build", "B", T0, work_item_id="B", after=[a], priority="critical").work_item_id
    c = st.add("build", "C", T0, work_item_id="C", after=[b], priority="critical").work_item_id
    return a, b, c


def test_a_chain_is_claimed_in_the_only_possible_order(st: State) -> None:
    a, b, c = chain(st)
    # B and C are more urgent, but blocked: claim-next hands out A first.
    assert st.claim_next("agent1", T0 + 1).work_item_id == a
    with pytest.raises(NothingPending):
        st.claim_next("agent2", T0 + 2)
    st.complete(a, T0 + 3, agent_id="agent1")
    assert st.claim_next("agent2", T0 + 4).work_item_id == b
    with pytest.raises(NothingPending):
        st.claim_next("agent3", T0 + 5)
    st.complete(b, T0 + 6, agent_id="agent2")
    assert st.claim_next("agent3", T0 + 7).work_item_id == c


def test_a_failed_dependency_blocks_its_dependents_with_the_reason(st: State) -> None:
    a, b, c = chain(st)
    st.complete(st.claim_next("agent1", T0).work_item_id, T0, agent_id="agent1")
    st.claim_next("agent2", T0)
    st.complete(b, T0 + 1, agent_id="agent2", result="failed")
    assert st.waiting_on(st.get(c)) == [
        {"work_item_id": b, "status": "completed", "result": "failed", "met": False}
    ]
    assert st.counts()["blocked"] == 1 and st.counts()["pending"] == 1
    with pytest.raises(NothingPending):
        st.claim_next("agent3", T0 + 2)
    with pytest.raises(Conflict, match="blocked"):
        st.claim_next("agent3", T0 + 2, work_item_id=c)
    assert [i.work_item_id for i in st.select(ready=True)] == []
    assert st.get(c).status == "pending"  # blocked is derived, not a stored status


def test_a_dependency_that_succeeds_releases_only_what_waits_for_it(st: State) -> None:
    a = st.add("t", "A", T0, work_item_id="A")
    b = st.add("t", "B", T0, work_item_id="B")
    both = st.add("t", "both", T0, work_item_id="both", after=["A", "B"])
    st.claim_next("x", T0, work_item_id="A")
    st.complete(a.work_item_id, T0)
    assert st.unmet(both) == ["B"]
    st.claim_next("x", T0, work_item_id="B")
    st.complete(b.work_item_id, T0)
    assert st.unmet(both) == [] and [i.work_item_id for i in st.select(ready=True)] == ["both"]
    assert any(e.event == "ready" and e.work_item_id == "both" for e in st.events)


def test_unknown_ids_and_cycles_are_refused_at_add(st: State) -> None:
    st.add("t", "A", T0, work_item_id="A")
    with pytest.raises(UnknownWork, match="nope"):
        st.add("t", "x", T0, after=["A", "nope"])
    # An item can only wait for items that exist before it, so the one cycle a new
    # item could close is waiting for itself.
    with pytest.raises(BadRequest, match="cycle"):
        st.add("t", "x", T0, work_item_id="X", after=["X"])
    assert set(st.items) == {"A"}


def test_claim_after_an_unmet_dependency_is_refused(st: State) -> None:
    st.add("t", "A", T0, work_item_id="A")
    with pytest.raises(Conflict, match="waits for A"):
        st.claim("a1", "t", "next", T0, after=["A"])
    st.claim_next("a1", T0, work_item_id="A")
    st.complete("A", T0)
    assert st.claim("a1", "t", "next", T0, after=["A"]).after == ["A"]


def test_blocked_survives_a_replay_of_the_journal(st: State) -> None:
    a, b, c = chain(st)
    st.claim_next("agent1", T0)
    st.complete(a, T0, agent_id="agent1")
    records, _ = st.drain()
    again = State()
    again.restore(records=records)
    assert again.counts()["blocked"] == 1
    assert again.claim_next("agent2", T0).work_item_id == b
    with pytest.raises(NothingPending):
        again.claim_next("agent3", T0)


def test_dependencies_go_through_the_legacy_files(st: State, tmp_path: Path) -> None:
    chain(st)
    legacy.export_dir(tmp_path, st)
    back = State()
    records, _summary = legacy.import_dir(tmp_path, back, T0)
    back.restore(records=records)
    assert back.get("C").after == ["B"] and back.counts()["blocked"] == 2


def test_short_ids_are_resolved_and_ambiguity_is_refused(st: State) -> None:
    st.add("t", "x", T0, work_item_id="work_1795663312345671234")
    st.add("t", "y", T0, work_item_id="work_1795663312345681234")
    assert st.resolve("work_…5671234") == "work_1795663312345671234"
    assert st.resolve("work_...81234") == "work_1795663312345681234"
    assert st.resolve("81234") == "work_1795663312345681234"
    with pytest.raises(BadRequest, match="ambiguous"):
        st.resolve("1234")
    with pytest.raises(UnknownWork):
        st.resolve("work_…0000")
    with pytest.raises(UnknownWork):
        st.resolve("234")  # under 4 characters: never a guess
