"""Memory follows the items held, not the claims made nor all history (issue 14,
finding 6): the deadline heap is compacted, finished work is pruned after retention."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordd.core.indexes import HEAP_SLACK
from coordd.core.model import NothingPending
from coordd.core.state import State
from coordd.storage.store import FileStore
from tests.core.storage_helpers import view

T0 = 1_750_000_000.0


def test_claim_churn_leaves_a_heap_the_size_of_the_active_items() -> None:
    # Finding 6: every claim left a heap entry until its threshold passed; 400k
    # claim/release cycles within one threshold left 400k entries (~37 MB).
    st = State()
    pool = [st.add("t", f"item {k}", T0).work_item_id for k in range(50)]
    held = [st.claim_next(f"keeper{k}", T0).work_item_id for k in range(10)]  # stay active
    now = T0
    for n in range(400_000):
        now += 0.0005  # 200 s in all: inside one 300 s threshold, nothing expires
        item = st.claim_next("churner", now)
        st.release(item.work_item_id, now, "churner", item.lease)
        if n % 1000 == 0:
            st.drain()
    active = st.counts()["active"]
    assert active == len(held) and len(pool) == 50
    assert st.heap_size <= 2 * active + HEAP_SLACK + 1
    # Nothing live was lost to the compaction: the held items still expire on time.
    expired = st.pop_expired(T0 + 300)
    assert sorted(i.work_item_id for i in expired) == sorted(held)


DAY = 24 * 3600.0


def test_finished_items_and_log_entries_are_pruned_after_retention(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    st = State()
    store.load(State())
    old = st.claim("a", "t", "old", T0, team="core")
    st.complete(old.work_item_id, T0 + 10, "a", old.lease, velocity=5)
    failed = st.claim("a", "t", "failed", T0)
    st.recover_fail(failed, T0 + 20, "gave up")
    recent = st.claim("a", "t", "recent", T0 + 3 * DAY, team="core")
    st.complete(recent.work_item_id, T0 + 3 * DAY, "a", recent.lease, velocity=2)
    held = st.claim("a", "t", "still held", T0)  # active: never pruned, however old
    pending = st.add("t", "still pending", T0)
    store.append(st.drain()[0])

    assert st.prune(T0 + 8 * DAY - 7 * DAY, at_most=10_000) == 2  # what the tick does
    store.append(st.drain()[0])
    assert set(st.items) == {recent.work_item_id, held.work_item_id, pending.work_item_id}
    assert [c.work_item_id for c in st.completions] == [recent.work_item_id]
    assert st.team_velocity == {"core": 7}  # totals keep what was pruned
    assert st.counts()["completed"] == 1 and st.counts()["failed"] == 0
    assert st.prune(T0 + DAY, at_most=10_000) == 0  # nothing more is due

    store.close()
    again = State()
    FileStore(tmp_path).load(again)  # the pruning was journaled: it survives a restart
    assert view(again) == view(st)
    assert again.prune(T0 + DAY, at_most=10_000) == 0


def test_pruning_goes_in_bounded_steps_oldest_first() -> None:
    st = State()
    for k in range(25):
        item = st.claim("a", "t", f"d{k}", T0 + k)
        st.complete(item.work_item_id, T0 + k, "a", item.lease)
    assert st.prune(T0 + 100, at_most=10) == 10
    assert st.prune(T0 + 100, at_most=10) == 10
    assert st.prune(T0 + 100, at_most=10) == 5
    assert st.items == {} and st.completions == []


def test_a_pruned_record_applied_twice_changes_nothing_more() -> None:
    # A salvage (fsck --repair) may replay a record twice: retention must be idempotent.
    st = State()
    for k in range(6):
        item = st.claim("a", "t", f"d{k}", T0 + k)
        st.complete(item.work_item_id, T0 + k, "a", item.lease)
    st.drain()
    assert st.prune(T0 + 100, at_most=2) == 2
    (rec,) = st.drain()[0]
    kept = (dict(st.items), list(st.completions))
    st.apply_record(rec)
    assert (st.items, st.completions) == kept and len(st.completions) == 4


def test_a_failed_item_that_others_wait_on_is_not_pruned() -> None:
    # A dependency that is no longer kept counts as met, so pruning a failed one would
    # quietly unblock its dependents a retention period after it failed.
    st = State()
    dep = st.claim("a", "t", "build", T0)
    st.recover_fail(dep, T0 + 1, "gave up")
    waiter = st.add("t", "deploy", T0 + 2, after=[dep.work_item_id])
    lone = st.claim("a", "t", "nobody waits", T0)
    st.recover_fail(lone, T0 + 1, "gave up")

    assert st.prune(T0 + 30 * DAY, at_most=10_000) == 1  # only the one nobody waits on
    assert dep.work_item_id in st.items and lone.work_item_id not in st.items
    assert st.waiting_on(st.items[waiter.work_item_id])  # still blocked, with its reason
    with pytest.raises(NothingPending):  # the blocked item is not handed out
        st.claim_next("b", T0 + 30 * DAY + 1, work_type="t")
