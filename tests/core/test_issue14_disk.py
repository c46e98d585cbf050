"""Issue 14's on-disk findings, as a tester found them on the release before format 2:
each of these started silently without acknowledged records (findings 1, 3) or loaded
a changed snapshot without complaint (finding 8). Finding 2 (repair keeps what a
damaged snapshot holds) is in test_fsck.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from coordd.storage import frames, snapshot, wal
from coordd.storage.files import Corrupt
from coordd.storage.fsck import fsck
from tests.core.storage_helpers import T0, open_fresh, reload, view, work, written


@pytest.fixture
def d(tmp_path: Path) -> Path:
    return tmp_path / "state"


def _middle(path: Path) -> int:
    scan = wal.read_wal(path)
    assert scan is not None and len(scan.records) > 4
    return scan.records[len(scan.records) // 2][0]


LENGTH = 4  # where a frame header's length field starts


@pytest.mark.parametrize(
    "damage",
    ["flip a bit of the length", "zero the length", "cut 3 bytes into the header"],
)
def test_finding_1_a_damaged_middle_frame_refuses_start_and_fsck_sees_it(
    d: Path, damage: str
) -> None:
    _, path = written(d, 8)
    at = _middle(path)
    data = bytearray(path.read_bytes())
    if damage == "flip a bit of the length":
        data[at + LENGTH] ^= 0x01  # the length grows by 16 MiB: past the end of the file
    elif damage == "zero the length":
        data[at + LENGTH : at + LENGTH + 4] = bytes(4)
    else:
        data = data[: at + 3]
    path.write_bytes(bytes(data))
    with capture_logs() as logs, pytest.raises(Corrupt) as err:
        reload(d)
    assert not [e for e in logs if e["event"] == "journal_torn_tail_dropped"]
    msg = str(err.value)
    where = at if damage != "cut 3 bytes into the header" else at + 3
    assert str(path) in msg and f"offset {where}" in msg and "coordd fsck --repair" in msg
    assert path.read_bytes() == bytes(data)  # a refusal changes nothing
    report = fsck(d, repair=False, now=T0)
    assert not report.clean and f"offset {where}" in report.problems[0]


def test_finding_1_a_flipped_bit_in_the_last_frame_is_kept_as_a_copy_and_named(d: Path) -> None:
    st, path = written(d, 4)
    scan = wal.read_wal(path)
    assert scan is not None
    last, end = scan.records[-1][0], scan.end
    data = bytearray(path.read_bytes())
    data[last + 30] ^= 0x02
    path.write_bytes(bytes(data))
    with capture_logs() as logs:
        again, store = reload(d)
    store.close()
    (warning,) = [e for e in logs if e["event"] == "journal_torn_tail_dropped"]
    assert warning["offset"] == last and warning["bytes"] == end - last
    assert Path(warning["copy"]).read_bytes() == bytes(data[last:end])
    # the torn write (the claim of w3), and only it
    assert again.items.keys() == st.items.keys() - {"w3"}


def test_finding_8_one_changed_letter_in_a_description_is_refused(d: Path) -> None:
    st, store = open_fresh(d)
    work(st, store, 3)
    assert store.snapshot(st, T0 + 10).ok
    store.close()
    path = d / snapshot.SNAPSHOT_NAME
    data = bytearray(path.read_bytes())
    at = data.index(b"item 1")
    data[at] = ord("I")
    path.write_bytes(bytes(data))
    block = max(
        fr.pos
        for fr in frames.scan(memoryview(bytes(data)), snapshot.FILE_HEADER.size, len(data))
        if fr.pos <= at
    )
    with pytest.raises(Corrupt, match=f"offset {block}: frame payload checksum mismatch"):
        reload(d)
    assert not fsck(d, repair=False, now=T0).clean


def test_finding_8_with_a_previous_snapshot_start_uses_it_and_loses_nothing(d: Path) -> None:
    st, store = open_fresh(d)
    work(st, store, 3)
    assert store.snapshot(st, T0 + 10).ok
    work(st, store, 3, start=10)
    assert store.snapshot(st, T0 + 20).ok
    store.close()
    path = d / snapshot.SNAPSHOT_NAME
    data = bytearray(path.read_bytes())
    data[data.index(b"item 11")] = ord("I")
    path.write_bytes(bytes(data))
    with capture_logs() as logs:
        again, store = reload(d)
    store.close()
    assert view(again) == view(st)
    assert [e for e in logs if e["event"] == "snapshot_damaged_previous_used"]
