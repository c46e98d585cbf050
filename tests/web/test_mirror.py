"""The web process's copy: events keep it, gaps are noticed, queries filter and page it
without the daemon. Pure: an injected ``now``, no sockets."""

from __future__ import annotations

from coordd.core.model import WorkItem
from coordd.core.rules import Policy
from coordd.kinds import Status
from coordd.web.mirror import Mirror, Query


def item(n: int, **kw: object) -> WorkItem:
    fields: dict[str, object] = {
        "work_item_id": f"w{n:04d}",
        "work_type": "build" if n % 2 else "test",
        "description": f"task number {n}",
        "team": "red" if n % 3 else "blue",
        "created_at": 1000.0,
        **kw,
    }
    return WorkItem(**fields)  # type: ignore[arg-type]


def loaded(n: int) -> Mirror:
    m = Mirror(Policy(stale_threshold=60.0))
    m.load([item(i) for i in range(n)], [{"agent_id": "a1", "last_heartbeat": 1000.0}])
    return m


def test_filters_intersect_and_search_reads_descriptions() -> None:
    m = loaded(30)
    everything = m.page(Query(), 1000.0)
    assert everything["total"] == 30
    assert everything["rows"][0]["id"] == "w0029"  # newest first
    both = m.page(Query(work_type="build", team="blue"), 1000.0)
    assert {r["id"] for r in both["rows"]} == {f"w{i:04d}" for i in (3, 9, 15, 21, 27)}
    assert m.page(Query(text="NUMBER 17"), 1000.0)["total"] == 1
    second = m.page(Query(offset=25, limit=10), 1000.0)
    assert (second["total"], len(second["rows"])) == (30, 5)


def test_an_event_moves_the_item_between_filters() -> None:
    m = loaded(5)
    claimed = item(2, status=Status.ACTIVE, agent_id="a1", lease=7, last_heartbeat=1001.0)
    assert m.apply("claimed", 1001.0, 1, claimed, "w0002", "a1")
    active = m.page(Query(status="active"), 1002.0)
    assert [r["id"] for r in active["rows"]] == ["w0002"]
    assert m.page(Query(status="pending"), 1002.0)["total"] == 4
    assert list(m.held("a1")) == ["w0002"] and m.holders() == ["a1"]
    assert m.events[-1]["event"] == "claimed"


def test_a_gap_in_seq_or_a_restart_asks_for_a_full_view() -> None:
    m = loaded(3)
    assert m.apply("added", 1.0, 10, item(10), "w0010")
    assert m.apply("added", 2.0, 11, item(11), "w0011")
    assert not m.apply("added", 3.0, 13, item(13), "w0013")  # 12 was dropped
    assert m.apply("added", 4.0, 14, item(14), "w0014")
    assert not m.apply("added", 5.0, 1, item(15), "w0015")  # the daemon restarted
    # A daemon without sequence numbers is taken as it comes.
    assert m.apply("added", 6.0, None, item(16), "w0016")


def test_a_sweep_never_undoes_a_newer_event() -> None:
    m = loaded(1)
    held = item(0, status=Status.ACTIVE, agent_id="a1", lease=3, last_heartbeat=1000.0)
    m.apply("claimed", 1000.0, 1, held, "w0000", "a1")
    done = item(0, status=Status.COMPLETED, agent_id="a1", lease=3, last_heartbeat=1000.0)
    m.apply("completed", 1005.0, 2, done, "w0000", "a1")
    # A sweep read before the completion arrives after it: ignored.
    m.refresh(item(0, status=Status.ACTIVE, agent_id="a1", lease=3, last_heartbeat=1004.0))
    assert m.items["w0000"].status == Status.COMPLETED
    # A newer heartbeat of a holding the copy still has is taken (progress with it).
    m.apply(
        "claimed",
        1006.0,
        3,
        item(1, status=Status.ACTIVE, agent_id="a1", lease=4, last_heartbeat=1006.0),
        "w0001",
        "a1",
    )
    m.refresh(
        item(1, status=Status.ACTIVE, agent_id="a1", lease=4, last_heartbeat=1009.0, progress=40)
    )
    row = m.page(Query(status="active"), 1010.0)["rows"][0]
    assert (row["progress"], row["last_heard"], row["threshold"]) == (40, 1009.0, 60.0)


def test_rates_come_from_counters_and_minutes_from_events() -> None:
    m = loaded(0)
    for t, beats in ((100.0, 0), (101.0, 500), (102.0, 1500)):
        m.status({"pid": 1, "counters": {"heartbeats": beats}, "counts": {}}, t)
    assert [v for _, v in m.series.per_second["heartbeats"]] == [500.0, 1000.0]
    for at in (120.0, 130.0, 185.0):
        m.apply("stale_detected", at, None, None, "x")
    assert list(m.series.per_minute["stale_detected"]) == [(120.0, 2), (180.0, 1)]
    # Another pid is another daemon: its counters start again, the caller reloads.
    assert m.status({"pid": 2, "counters": {"heartbeats": 3}, "counts": {}}, 103.0)


def test_a_query_over_many_items_is_not_recomputed_for_every_page() -> None:
    m = loaded(2000)
    calls = 0

    def clock() -> float:
        nonlocal calls
        calls += 1
        return 0.0

    q = Query(text="number 1")
    first = m.matching(q, 1000.0, clock)
    for _ in range(50):  # fifty pages asking the same within the reuse window
        assert m.matching(q, 1000.1, clock) is first
    assert calls == 2  # one computation, timed once
