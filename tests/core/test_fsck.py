"""``coordd fsck`` on damaged files: what it reports, what a repair keeps and says it lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordd.core.state import State
from coordd.storage import frames, snapshot, wal
from coordd.storage.files import Corrupt
from coordd.storage.fsck import fsck
from tests.core.storage_helpers import T0, open_fresh, reload, view, work, written


@pytest.fixture
def d(tmp_path: Path) -> Path:
    return tmp_path / "state"


def _copy_dir(d: Path) -> Path:
    (copy,) = d.glob("fsck-copy-*")
    return copy


def test_fsck_finds_reports_and_repairs_a_damaged_journal_keeping_a_copy(d: Path) -> None:
    st, path = written(d, 6)
    scan = wal.read_wal(path)
    assert scan is not None
    damaged_at, damaged_rec = [r for r in scan.records[:-1] if hasattr(r[1], "item")][-1]
    data = bytearray(path.read_bytes())
    data[damaged_at + 30] ^= 0xFF
    path.write_bytes(bytes(data))
    report = fsck(d, repair=False, now=T0)
    assert not report.clean and f"offset {damaged_at}" in report.problems[0]
    report = fsck(d, repair=True, now=T0)
    assert (_copy_dir(d) / wal.WAL_NAME).read_bytes() == bytes(data)
    assert any("kept a copy" in a for a in report.actions)
    assert any(f"at byte offset {damaged_at}" in a for a in report.actions), report.actions
    again = reload(d)[0]  # every record but the damaged one, the last included
    lost = damaged_rec.item.work_item_id  # type: ignore[union-attr]
    expected = view(st)
    assert again.items.keys() == st.items.keys()
    assert {k: v for k, v in view(again)["items"].items() if k != lost} == {
        k: v for k, v in expected["items"].items() if k != lost
    }
    assert fsck(d, repair=False, now=T0).clean


def _two_blocks(d: Path) -> tuple[State, bytes]:
    """A store with a snapshot of two item blocks and journal records after it."""
    st, store = open_fresh(d)
    work(st, store, snapshot.BLOCK + 40)  # two blocks of items
    assert store.snapshot(st, T0 + 1000).ok
    work(st, store, 3, start=5000)
    store.close()
    return st, (d / snapshot.SNAPSHOT_NAME).read_bytes()


def _second_item_block(data: bytes) -> int:
    starts = [
        fr.pos
        for fr in frames.scan(memoryview(data), snapshot.FILE_HEADER.size, len(data))
        if fr.kind == frames.ITEMS
    ]
    return starts[1]


def test_repair_of_a_damaged_snapshot_keeps_every_readable_block_and_counts_the_loss(
    d: Path,
) -> None:
    # Finding 2: it used to write a snapshot of the journal alone, saying nothing.
    st, data = _two_blocks(d)
    (d / wal.WAL_PREV_NAME).unlink()  # no older generation to fill in from
    at = _second_item_block(data)
    damaged = bytearray(data)
    damaged[at + 100] ^= 0x04
    (d / snapshot.SNAPSHOT_NAME).write_bytes(bytes(damaged))
    with pytest.raises(Corrupt, match=f"offset {at}"):
        reload(d)
    report = fsck(d, repair=True, now=T0)
    assert (_copy_dir(d) / snapshot.SNAPSHOT_NAME).read_bytes() == bytes(damaged)
    again = reload(d)[0]
    # the first block (512 items), the journal after the snapshot (3 claims): kept
    assert len(again.items) == snapshot.BLOCK + 3
    assert {"w0", "w511", "w5000", "w5002"} <= again.items.keys()
    assert report.dropped["items"] == 40 and report.kept["items"] == snapshot.BLOCK + 3
    line = next(a for a in report.actions if a.startswith("snapshot:"))
    assert (
        "lost 40 items, 0 agents, 0 completions, 0 request ids" in line
        and f"byte offset {at}" in line
    )
    for k in (512, 531):  # the damaged block's ids, read without their checksum
        assert f"w{k}" in line
    assert "and 20 more" in line


def test_repair_fills_damaged_snapshot_blocks_from_the_previous_generation(d: Path) -> None:
    st, data = _two_blocks(d)
    at = _second_item_block(data)
    damaged = bytearray(data)
    damaged[at + 100] ^= 0x04
    (d / snapshot.SNAPSHOT_NAME).write_bytes(bytes(damaged))
    report = fsck(d, repair=True, now=T0)
    assert report.dropped["items"] == 0
    assert any("filled in 40 items" in a for a in report.actions), report.actions
    assert view(reload(d)[0]) == view(st)


def test_a_damaged_newest_snapshot_falls_back_to_the_previous_one_at_start(d: Path) -> None:
    st, store = open_fresh(d)
    work(st, store, 5)
    assert store.snapshot(st, T0 + 10).ok
    work(st, store, 5, start=10)
    assert store.snapshot(st, T0 + 20).ok
    work(st, store, 5, start=20)
    store.close()
    newest = d / snapshot.SNAPSHOT_NAME
    data = bytearray(newest.read_bytes())
    data[60] ^= 0x10
    newest.write_bytes(bytes(data))
    again, store2 = reload(d)
    assert view(again) == view(st)  # the previous snapshot + both journals hold it all
    store2.close()
    (copy,) = d.glob("snapshot.bin.corrupt-*")
    assert copy.read_bytes() == bytes(data)


@pytest.mark.parametrize("how", ["deleted", "cut to 10 bytes", "cut before the offset"])
def test_a_missing_or_cut_journal_refuses_start_and_fsck_reports_it(d: Path, how: str) -> None:
    # Finding 3: these used to start with the snapshot's items only, without a word.
    st, store = open_fresh(d)
    work(st, store, 4)
    assert store.snapshot(st, T0 + 10).ok
    work(st, store, 4, start=10)
    store.close()
    path = d / wal.WAL_NAME
    if how == "deleted":
        path.unlink()
    elif how == "cut to 10 bytes":
        path.write_bytes(path.read_bytes()[:10])
    else:
        with open(path, "r+b") as f:
            f.truncate(wal.HEADER_SIZE + 8)
    with pytest.raises(Corrupt) as err:
        reload(d)
    assert str(path) in str(err.value)
    report = fsck(d, repair=False, now=T0)
    assert not report.clean and str(path) in report.problems[0]


def test_a_journal_of_another_generation_refuses_start(d: Path) -> None:
    st, store = open_fresh(d)
    work(st, store, 2)
    assert store.snapshot(st, T0 + 10).ok
    store.close()
    other = d.parent / "other"
    st2, store2 = open_fresh(other)
    work(st2, store2, 1, start=50)
    store2.close()
    (d / wal.WAL_NAME).write_bytes((other / wal.WAL_NAME).read_bytes())
    with pytest.raises(Corrupt, match="ends at byte offset .* before offset"):
        reload(d)


def test_a_repair_keeps_the_request_ids_its_snapshot_remembered(d: Path) -> None:
    """A request id remembered before the snapshot must survive a repair: a resend
    after it is answered, not applied a second time."""
    st, store = open_fresh(d)
    st.remember("claim-once", T0, b"\x81\xa1a\x01")
    work(st, store, 4)
    assert store.snapshot(st, T0 + 100).ok
    work(st, store, 2, start=100)
    store.close()
    path = d / wal.WAL_NAME
    data = bytearray(path.read_bytes())
    scan = wal.read_wal(path)
    assert scan is not None
    damaged_at = scan.records[0][0]  # a record after the snapshot: a repair is needed
    data[damaged_at + 30] ^= 0xFF
    path.write_bytes(bytes(data))
    report = fsck(d, repair=True, now=T0)
    assert any("1 request ids" in a for a in report.actions), report.actions
    assert reload(d)[0].reply_for("claim-once") == b"\x81\xa1a\x01"
