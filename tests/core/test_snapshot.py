"""Snapshots on real files: the document, the forked writer, the pairing with the WAL."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest
from structlog.testing import capture_logs

from coordd.core.model import WorkItem
from coordd.kinds import Status
from coordd.storage import frames, snapshot, wal
from coordd.storage.files import Corrupt
from tests.core.storage_helpers import T0, open_fresh, reload, view, wait_snapshot, work


@pytest.fixture
def d(tmp_path: Path) -> Path:
    return tmp_path / "state"


def _end(d: Path) -> int:
    scan = wal.read_wal(d / wal.WAL_NAME)
    assert scan is not None
    return scan.end


def result_offset(d: Path) -> int:
    """Where the previous generation's records ended (what the snapshot covers)."""
    scan = wal.read_wal(d / wal.WAL_PREV_NAME)
    assert scan is not None
    return scan.end


def test_a_snapshot_that_does_not_parse_refuses_start(d: Path) -> None:
    st, store = open_fresh(d)
    work(st, store, 3)
    assert store.snapshot(st, T0 + 100).ok
    store.close()
    snap = d / snapshot.SNAPSHOT_NAME
    data = bytearray(snap.read_bytes())
    starts = [
        fr.pos
        for fr in frames.scan(memoryview(bytes(data)), snapshot.FILE_HEADER.size, len(data))
        if not fr.problem
    ]
    hit = max(p for p in starts if p <= 200)
    data[200] ^= 0x01  # one bit, inside the first block of items
    snap.write_bytes(bytes(data))
    with pytest.raises(Corrupt) as err:
        reload(d)
    msg = str(err.value)
    assert str(snap) in msg and f"offset {hit}" in msg and "coordd fsck" in msg


def test_after_a_snapshot_the_journal_starts_afresh_and_nothing_counts_twice(d: Path) -> None:
    st, store = open_fresh(d)
    work(st, store, 6)
    result = store.snapshot(st, T0 + 100)
    assert result.ok and result.items == 6 and result.seconds > 0
    scan = wal.read_wal(d / wal.WAL_NAME)
    assert scan is not None and scan.records == [] and scan.generation == 2
    doc = snapshot.read_snapshot(d / snapshot.SNAPSHOT_NAME)
    assert doc is not None and doc.version == 2 and len(doc.items) == 6
    assert (doc.wal_generation, doc.wal_offset) == (1, result_offset(d))
    work(st, store, 4, start=50)
    store.close()
    again = reload(d)[0]
    assert view(again) == view(st)
    assert len(again.completions) == 5


def test_a_crash_between_snapshot_and_journal_rotation_loses_and_doubles_nothing(
    d: Path,
) -> None:
    st, store = open_fresh(d)
    work(st, store, 6)
    path = d / wal.WAL_NAME
    old_wal = path.read_bytes()
    assert store.snapshot(st, T0 + 100).ok
    store.close()
    # The snapshot is on disk but the old journal was never replaced.
    path.write_bytes(old_wal)
    again = reload(d)[0]
    assert view(again) == view(st)


def test_a_journal_that_does_not_follow_the_snapshot_refuses_start(d: Path) -> None:
    st, store = open_fresh(d)
    work(st, store, 2)
    assert store.snapshot(st, T0 + 10).ok
    assert store.snapshot(st, T0 + 20).ok  # the journal is now two generations ahead
    store.close()
    snap = d / snapshot.SNAPSHOT_NAME
    doc = snapshot.read_snapshot(snap)
    assert doc is not None
    doc.wal_generation = 1
    snap.write_bytes(snapshot.encode(doc))
    with pytest.raises(Corrupt, match="does not continue from there"):
        reload(d)


def test_a_background_snapshot_keeps_what_arrives_while_it_is_written(d: Path) -> None:
    st, store = open_fresh(d)
    work(st, store, 10)
    assert store.snapshot_background(st, T0 + 100)
    assert store.snapshot_running
    assert not store.snapshot_background(st, T0 + 100)  # one at a time
    work(st, store, 5, start=200)  # the parent keeps serving meanwhile
    result = wait_snapshot(store)
    assert result is not None and result.ok, result
    assert not store.snapshot_running
    assert result.seconds > 0 and (result.blocked < result.seconds or result.seconds < 0.01)
    work(st, store, 3, start=300)
    store.close()
    again = reload(d)[0]
    assert view(again) == view(st)
    assert {"w200", "w204", "w300"} <= again.items.keys()


def test_a_background_snapshot_starts_the_journal_afresh_with_what_came_meanwhile(
    d: Path,
) -> None:
    # The WAL must not keep growing with records the snapshot holds: it is replaced by
    # one of the next generation holding only the tail written while the child ran.
    st, store = open_fresh(d)
    work(st, store, 200)
    before = _end(d)
    with capture_logs() as logs:
        assert store.snapshot_background(st, T0 + 1000)
        work(st, store, 2, start=500)  # a tail to carry over
        result = wait_snapshot(store)
    assert result is not None and result.ok, result
    assert not [e for e in logs if e["event"] == "journal_rotate_failed"], logs
    assert store.generation == 2
    assert _end(d) < before / 10
    store.close()
    again = reload(d)[0]
    assert view(again) == view(st)
    assert {"w500", "w501"} <= again.items.keys()


def test_a_failed_snapshot_keeps_the_previous_one_and_the_journal(d: Path) -> None:
    st, store = open_fresh(d)
    work(st, store, 3)
    assert store.snapshot(st, T0 + 10).ok
    before = (d / snapshot.SNAPSHOT_NAME).read_bytes()
    work(st, store, 3, start=10)
    # A directory where the temporary file must go: the OS refuses the open (EISDIR).
    (d / f"{snapshot.SNAPSHOT_NAME}.tmp.{os.getpid()}").mkdir()
    result = store.snapshot(st, T0 + 20)
    assert not result.ok and "EISDIR" in result.reason
    assert (d / snapshot.SNAPSHOT_NAME).read_bytes() == before
    store.close()
    assert view(reload(d)[0]) == view(st)


class _OldItem(WorkItem, kw_only=True, gc=False):
    """An item as coordd wrote it before issue 13: with its heap deadline."""

    heap_deadline: float | None = None


class _OldPutItem(msgspec.Struct, tag="item", array_like=True):
    item: _OldItem


def _old(wid: str, lease: int) -> _OldItem:
    return _OldItem(
        work_item_id=wid,
        work_type="t",
        description="d",
        status=Status.ACTIVE,
        agent_id="a",
        lease=lease,
        last_heartbeat=T0,
        created_at=T0,
        heap_deadline=T0 + 1,  # wrong on purpose: the loaded deadline must not come from it
    )


def test_files_that_carry_heap_deadline_load_as_before(d: Path) -> None:
    st, store = open_fresh(d)
    st.items["w1"] = _old("w1", 1)
    assert store.snapshot(st, T0).ok
    store.append([_OldPutItem(_old("w2", 2))])  # type: ignore[list-item]
    store.close()
    snapshot_path = d / snapshot.SNAPSHOT_NAME
    assert b"heap_deadline" in snapshot_path.read_bytes()
    assert b"heap_deadline" in (d / wal.WAL_NAME).read_bytes()

    again, store2 = reload(d)
    assert sorted(again.items) == ["w1", "w2"] and again.workload("a") == 2
    assert all(type(i) is WorkItem for i in again.items.values())
    # Deadlines come from the rules (300 s default), not from the file's T0 + 1.
    assert again.pop_expired(T0 + 299) == []
    assert sorted(i.work_item_id for i in again.pop_expired(T0 + 300)) == ["w1", "w2"]
    # Written back without it.
    assert store2.snapshot(again, T0 + 400).ok
    store2.close()
    assert b"heap_deadline" not in snapshot_path.read_bytes()
