"""``list`` in bounded pages with a cursor (issue 14, finding 5's reply side)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from coordd import protocol as p
from coordd.core import views
from coordd.core.model import BadRequest
from coordd.core.state import State
from tests.core.test_handlers import T0, Daemonless


def listed(d: Daemonless, **filters: Any) -> tuple[list[str], int]:
    """Every id a paging client sees, and the pages it took."""
    ids: list[str] = []
    cursor: str | None = ""
    pages = 0
    while cursor is not None:
        reply = d.call(p.List(cursor=cursor, **filters), T0)
        ids += [i["work_item_id"] for i in reply["items"]]
        cursor = reply["next_cursor"]
        pages += 1
    return ids, pages


def test_a_paging_client_sees_every_item_once_in_creation_order() -> None:
    d = Daemonless()
    made = [d.state.add("t", f"d{k}", T0 + k).work_item_id for k in range(2500)]
    ids, pages = listed(d)
    assert ids == made and pages == 3
    team = [d.state.add("t", "x", T0, team="core").work_item_id for _ in range(3)]
    assert listed(d, team="core")[0] == team


def test_an_old_client_gets_one_bounded_first_page() -> None:
    d = Daemonless()
    for k in range(1500):
        d.state.add("t", f"d{k}", T0)
    reply = d.call(p.List(limit=10**9), T0)
    assert isinstance(reply, list) and len(reply) == p.MAX_PAGE
    assert len(d.call(p.List(limit=7), T0)) == 7


def test_a_page_is_bounded_in_bytes_too() -> None:
    d = Daemonless()
    for _ in range(300):
        d.state.add("t", "x" * 9000, T0)
    reply = d.call(p.List(cursor=""), T0)
    size = len(msgspec.msgpack.encode(reply))
    assert size <= p.MAX_PAGE_BYTES + 20_000 and reply["next_cursor"] is not None
    assert len(listed(d)[0]) == 300


def test_a_rare_match_costs_bounded_scans_not_one_long_one() -> None:
    st = State()
    for k in range(1000):
        st.add("t", "d", T0, team="rare" if k == 990 else "")
    want = views.Filter(team="rare")
    got, cursor, pages = [], None, 0
    while True:
        items, cursor = views.page(st, want, cursor, 10, 1 << 20, max_scan=100)
        got += items
        pages += 1
        if cursor is None:
            break
    assert [i.team for i in got] == ["rare"] and pages == 10


def test_pruning_between_pages_never_skips_an_item() -> None:
    st = State()
    ids = [st.add("t", "d", T0).work_item_id for _ in range(100)]
    everything = views.Filter()
    first, cursor = views.page(st, everything, None, 30, 1 << 20, 1000)
    # Retention prunes ten items before the cursor and five after it.
    for wid in ids[:10] + ids[40:45]:
        del st.items[wid]
        st.pruned += 1
    rest: list[str] = []
    while cursor is not None:
        items, cursor = views.page(st, everything, cursor, 30, 1 << 20, 1000)
        rest += [i.work_item_id for i in items]
    seen = {i.work_item_id for i in first} | set(rest)
    assert seen == set(ids) - set(ids[40:45])  # all but the pruned ones not yet shown
    assert rest[0] == ids[30]  # resumed right after the last item of the first page


def test_a_cursor_coordd_did_not_give_is_refused_or_harmless() -> None:
    d = Daemonless()
    d.state.add("t", "d", T0)
    for bad in ("nonsense", "-3:0:x", "1:x:y"):
        with pytest.raises(BadRequest, match="not one coordd gave"):
            d.call(p.List(cursor=bad), T0)
    assert d.call(p.List(cursor="999999999999:0:x"), T0) == {"items": [], "next_cursor": None}
