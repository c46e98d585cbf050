"""Memory follows the items held, not the claims made (issue 14, finding 6)."""

from __future__ import annotations

from coordd.core.indexes import HEAP_SLACK
from coordd.core.state import State

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
