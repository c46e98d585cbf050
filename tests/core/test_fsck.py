"""``coordd fsck`` on damaged files: what it reports, what a repair keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordd.storage import snapshot, wal
from coordd.storage.fsck import fsck
from tests.core.storage_helpers import T0, open_fresh, reload, work, written


@pytest.fixture
def d(tmp_path: Path) -> Path:
    return tmp_path / "state"


def test_fsck_finds_reports_and_repairs_keeping_a_copy(d: Path) -> None:
    _, path = written(d, 6)
    scan = wal.read_wal(path)
    assert scan is not None
    damaged_at = scan.records[-2][0]
    data = bytearray(path.read_bytes())
    data[damaged_at + 10] ^= 0xFF
    path.write_bytes(bytes(data))
    report = fsck(d, repair=False, now=T0)
    assert not report.clean and f"offset {damaged_at}" in report.problems[0]
    report = fsck(d, repair=True, now=T0)
    copies = list(d.glob("journal.wal.corrupt-*"))
    assert copies and copies[0].read_bytes() == bytes(data)
    assert any("kept a copy" in a for a in report.actions)
    again = reload(d)[0]  # starts again, with what came before the damage
    assert len(again.items) >= 5
    assert fsck(d, repair=False, now=T0).clean


def test_fsck_repairs_a_corrupt_snapshot_by_moving_it_aside(d: Path) -> None:
    st, store = open_fresh(d)
    work(st, store, 2)
    assert store.snapshot(st, T0).ok
    work(st, store, 2, start=10)
    store.close()
    (d / snapshot.SNAPSHOT_NAME).write_bytes(b"{not json")
    assert store.fsck(repair=True, now=T0).problems  # the same check, through the store
    assert list(d.glob("snapshot.json.corrupt-*"))
    again = reload(d)[0]
    assert {"w10", "w11"} <= again.items.keys()
