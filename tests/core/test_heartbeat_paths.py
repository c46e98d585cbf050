"""The heartbeat fast paths (one item, a batch) do exactly what the general path does.

Two states receive the same story; one is driven through ``heartbeat_batch`` (a batch),
the other item by item through ``heartbeat``. Everything a user can observe must match:
items, agents, counters, journal records, events, and which items were refused why.
"""

from __future__ import annotations

import msgspec
import pytest

from coordd.core.model import DomainError, ItemBeatLike
from coordd.core.recovery import tick
from coordd.core.rules import Policy
from coordd.core.state import State

T0 = 1_750_000_000.0


def _story() -> State:
    st = State(Policy(stale_threshold=10, recovery="none"))
    for n in range(4):
        st.claim("a", "t", f"item {n}", T0, work_item_id=f"w{n}")
    st.claim("b", "t", "someone else's", T0, work_item_id="wb")
    st.claim("a", "t", "goes stale", T0 - 20, work_item_id="wstale")
    tick(st, T0 + 1)  # wstale is now stale (strategy none: left with its holder)
    st.release("w3", T0 + 1, "a")  # w3 is pending, its lease bumped
    st.drain()
    return st


BEATS = [
    ("w0", 1),  # fresh, right lease
    ("w1", None),  # no lease given
    ("w2", 99),  # wrong lease: lease_lost
    ("w3", 4),  # released: lease_lost
    ("wb", None),  # held by b: not_owner
    ("nope", None),  # unknown_work
    ("wstale", None),  # stale and left alone: fresh again (an event)
    ("w0", 1),  # twice in one batch
]


def _observable(st: State) -> object:
    records, events = st.drain()
    return msgspec.to_builtins(
        {
            "items": st.items,
            "agents": st.agents,
            "counters": st.counters,
            "records": records,
            "events": events,
            "heap": sorted(st._ix.heap),
            "live": st._ix.live,
        }
    )


def test_batch_matches_item_by_item() -> None:
    batch, single = _story(), _story()

    class Beat(msgspec.Struct):
        work_item_id: str
        lease: int | None

    beats: list[ItemBeatLike] = [Beat(w, lease) for w, lease in BEATS]
    refused = [(w, e.code, str(e)) for w, e in batch.heartbeat_batch("a", T0 + 5, beats)[1]]
    expected = []
    for w, lease in BEATS:
        try:
            single.heartbeat("a", T0 + 5, w, lease)
        except DomainError as e:
            expected.append((w, e.code, str(e)))
    assert refused == expected
    assert [code for _, code, _ in refused] == [
        "lease_lost",
        "lease_lost",
        "not_owner",
        "unknown_work",
    ]
    assert batch.items["wstale"].stale_since is None  # fresh again, and said so
    assert batch.items["w0"].last_heartbeat == batch.items["wstale"].last_heartbeat == T0 + 5
    assert batch.items["w2"].last_heartbeat == T0
    assert batch.counters["heartbeats"] == 4 and batch.counters["lease_refused"] == 2
    assert [e.event for e in batch.events] == [e.event for e in single.events]
    assert sorted(e.event for e in batch.events) == ["fresh_again", "lease_lost", "lease_lost"]
    assert _observable(batch) == _observable(single)


@pytest.mark.parametrize(
    ("wid", "lease", "progress"),
    [("w0", 1, None), ("w0", None, 50), ("w0", 1, 0), ("wstale", None, None), ("w1", 7, None)],
)
def test_single_heartbeat_fast_path_matches_general_path(
    wid: str, lease: int | None, progress: int | None
) -> None:
    """A heartbeat with progress, on a stale item or with a wrong lease takes the general
    path; the plain one takes the fast path; both leave the state the same way."""
    st = _story()
    try:
        st.heartbeat("a", T0 + 5, wid, lease, progress)
    except DomainError:
        pass
    item = st.items[wid]
    if lease in (None, item.lease):
        assert item.last_heartbeat == T0 + 5
        assert item.stale_since is None
        assert st.agents["a"].last_heartbeat == T0 + 5
    else:
        assert item.last_heartbeat == T0
        assert st.counters["lease_refused"] == 1
