"""The journal on real files: group-committed WAL, atomic snapshots, replay, fsck."""

from __future__ import annotations

import os
import shutil
import struct
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from structlog.testing import capture_logs

from coordd.core.state import State
from coordd.storage import journal
from coordd.storage.journal import Corrupt, Journal

T0 = 1_750_000_000.0


def view(st: State) -> dict[str, Any]:
    """Everything a user can see of a state (indexes and heap bookkeeping aside)."""
    items = {k: {**msgspec.structs.asdict(v), "heap_deadline": None} for k, v in st.items.items()}
    return {
        "items": items,
        "agents": msgspec.to_builtins(st.agents),
        "completions": msgspec.to_builtins(st.completions),
        "team_velocity": st.team_velocity,
        "lease_seq": st.lease_seq,
        "counts": st.counts(),
    }


def work(st: State, jr: Journal, n: int, start: int = 0) -> None:
    """n claims and n // 2 completions, each its own batch (one write each)."""
    for k in range(start, start + n):
        item = st.claim(
            f"a{k % 3}", "build", f"item {k}", T0 + k, team="core", work_item_id=f"w{k}"
        )
        jr.write(st.drain()[0])
        if k % 2 == 0:
            st.complete(item.work_item_id, T0 + k + 0.5, f"a{k % 3}", item.lease, velocity=3)
            jr.write(st.drain()[0])


def reload(d: Path) -> tuple[State, Journal]:
    st = State()
    jr = Journal(d)
    jr.load(st)
    return st, jr


@pytest.fixture
def d(tmp_path: Path) -> Path:
    return tmp_path / "state"


def open_fresh(d: Path, fsync: str = "always") -> tuple[State, Journal]:
    d.mkdir(exist_ok=True)
    st, jr = State(), Journal(d, fsync)
    jr.load(st)
    return st, jr


def test_every_written_transition_is_replayed_after_a_restart(d: Path) -> None:
    st, jr = open_fresh(d)
    work(st, jr, 20)
    jr.close()
    again, jr2 = reload(d)
    assert view(again) == view(st)
    assert again.team_velocity == {"core": 30}
    # indexes are rebuilt: the held items are held again
    assert again.workload("a1") == st.workload("a1") > 0
    jr2.close()


@pytest.mark.parametrize("policy", ["always", "everysec", "never"])
def test_every_policy_keeps_what_was_written_once_closed(d: Path, policy: str) -> None:
    st, jr = open_fresh(d, policy)
    work(st, jr, 5)
    jr.tick()
    jr.close()
    assert view(reload(d)[0]) == view(st)


def written(d: Path, n: int) -> tuple[State, Path]:
    """A closed journal holding n claims (and completions); its state and WAL path."""
    st, jr = open_fresh(d)
    work(st, jr, n)
    jr.close()
    return st, d / journal.WAL_NAME


def test_a_torn_last_record_is_dropped_with_a_warning_and_cut(d: Path) -> None:
    st, wal = written(d, 4)
    good_size = wal.stat().st_size
    with open(wal, "ab") as f:  # half a frame: the process died mid-append
        f.write(struct.pack(">II", 500, 0) + b"\x93\xa4item")
    with capture_logs() as logs:
        again, jr2 = reload(d)
    assert view(again) == view(st)
    warning = [e for e in logs if e["event"] == "journal_torn_tail_dropped"]
    assert warning and warning[0]["offset"] == good_size and warning[0]["log_level"] == "warning"
    assert wal.stat().st_size == good_size  # cut, so new frames follow the last good one
    work(again, jr2, 2, start=100)
    jr2.close()
    assert view(reload(d)[0]) == view(again)


def test_a_bad_checksum_in_the_middle_refuses_with_file_offset_and_fsck(d: Path) -> None:
    _, wal = written(d, 4)
    data = bytearray(wal.read_bytes())
    first = journal._HEADER.size
    data[first + 12] ^= 0xFF  # inside the first record's payload
    wal.write_bytes(bytes(data))
    with pytest.raises(Corrupt) as err:
        reload(d)
    msg = str(err.value)
    assert str(wal) in msg and f"offset {first}" in msg and "coordd fsck --repair" in msg


def test_a_snapshot_that_does_not_parse_refuses_start(d: Path) -> None:
    st, jr = open_fresh(d)
    work(st, jr, 3)
    assert jr.snapshot(st, T0 + 100).ok
    jr.close()
    snap = d / journal.SNAPSHOT_NAME
    snap.write_bytes(snap.read_bytes()[:200] + b"}garbage")
    with pytest.raises(Corrupt) as err:
        reload(d)
    msg = str(err.value)
    assert str(snap) in msg and "offset 2" in msg and "coordd fsck" in msg


def test_after_a_snapshot_the_journal_starts_afresh_and_nothing_counts_twice(d: Path) -> None:
    st, jr = open_fresh(d)
    work(st, jr, 6)
    result = jr.snapshot(st, T0 + 100)
    assert result.ok and result.items == 6
    wal = d / journal.WAL_NAME
    assert wal.stat().st_size == journal._HEADER.size
    doc = msgspec.json.decode((d / journal.SNAPSHOT_NAME).read_bytes())
    assert doc["format"] == "coordd-snapshot" and doc["version"] == 1
    assert {"items", "agents", "completions", "team_velocity", "lease_seq"} <= doc.keys()
    work(st, jr, 4, start=50)
    jr.close()
    again = reload(d)[0]
    assert view(again) == view(st)
    assert len(again.completions) == 5


def test_a_crash_between_snapshot_and_journal_rotation_loses_and_doubles_nothing(
    d: Path,
) -> None:
    st, jr = open_fresh(d)
    work(st, jr, 6)
    wal = d / journal.WAL_NAME
    old_wal = wal.read_bytes()
    assert jr.snapshot(st, T0 + 100).ok
    jr.close()
    # The snapshot is on disk but the old journal was never replaced.
    wal.write_bytes(old_wal)
    again = reload(d)[0]
    assert view(again) == view(st)


def test_a_journal_that_does_not_follow_the_snapshot_refuses_start(d: Path) -> None:
    st, jr = open_fresh(d)
    work(st, jr, 2)
    assert jr.snapshot(st, T0 + 10).ok
    assert jr.snapshot(st, T0 + 20).ok  # the journal is now two generations ahead
    jr.close()
    snap = d / journal.SNAPSHOT_NAME
    doc = msgspec.json.decode(snap.read_bytes())
    doc["wal_generation"] = 1
    snap.write_bytes(msgspec.json.encode(doc))
    with pytest.raises(Corrupt, match="does not follow the snapshot"):
        reload(d)


def wait_snapshot(jr: journal.Journal, timeout: float = 10.0) -> Any:
    """The background snapshot's result once its child is done (None after ``timeout``)."""
    deadline = time.monotonic() + timeout
    result = None
    while result is None and time.monotonic() < deadline:
        result = jr.poll_snapshot()
        time.sleep(0.005)
    return result


def test_a_background_snapshot_keeps_what_arrives_while_it_is_written(d: Path) -> None:
    st, jr = open_fresh(d)
    work(st, jr, 10)
    assert jr.snapshot_background(st, T0 + 100)
    assert not jr.snapshot_background(st, T0 + 100)  # one at a time
    work(st, jr, 5, start=200)  # the parent keeps serving meanwhile
    result = wait_snapshot(jr)
    assert result is not None and result.ok, result
    assert result.blocked < result.seconds or result.seconds < 0.01
    work(st, jr, 3, start=300)
    jr.close()
    again = reload(d)[0]
    assert view(again) == view(st)
    assert {"w200", "w204", "w300"} <= again.items.keys()


def test_a_background_snapshot_starts_the_journal_afresh_with_what_came_meanwhile(
    d: Path,
) -> None:
    # The WAL must not keep growing with records the snapshot holds: it is replaced by
    # one of the next generation holding only the tail written while the child ran.
    st, jr = open_fresh(d)
    work(st, jr, 200)
    before = (d / journal.WAL_NAME).stat().st_size
    with capture_logs() as logs:
        assert jr.snapshot_background(st, T0 + 1000)
        work(st, jr, 2, start=500)  # a tail to carry over
        result = wait_snapshot(jr)
    assert result is not None and result.ok, result
    assert not [e for e in logs if e["event"] == "journal_rotate_failed"], logs
    assert jr.generation == 2
    assert (d / journal.WAL_NAME).stat().st_size < before / 10
    jr.close()
    again = reload(d)[0]
    assert view(again) == view(st)
    assert {"w500", "w501"} <= again.items.keys()


def test_a_failed_snapshot_keeps_the_previous_one_and_the_journal(d: Path) -> None:
    st, jr = open_fresh(d)
    work(st, jr, 3)
    assert jr.snapshot(st, T0 + 10).ok
    before = (d / journal.SNAPSHOT_NAME).read_bytes()
    work(st, jr, 3, start=10)
    # A directory where the temporary file must go: the OS refuses the open (EISDIR).
    (d / f"{journal.SNAPSHOT_NAME}.tmp.{os.getpid()}").mkdir()
    result = jr.snapshot(st, T0 + 20)
    assert not result.ok and "EISDIR" in result.reason
    assert (d / journal.SNAPSHOT_NAME).read_bytes() == before
    jr.close()
    assert view(reload(d)[0]) == view(st)


def test_fsck_finds_reports_and_repairs_keeping_a_copy(d: Path) -> None:
    _, wal = written(d, 6)
    scan = journal.read_wal(wal)
    assert scan is not None
    damaged_at = scan.records[-2][0]
    data = bytearray(wal.read_bytes())
    data[damaged_at + 10] ^= 0xFF
    wal.write_bytes(bytes(data))
    report = journal.fsck(d, repair=False, now=T0)
    assert not report.clean and f"offset {damaged_at}" in report.problems[0]
    report = journal.fsck(d, repair=True, now=T0)
    copies = list(d.glob("journal.wal.corrupt-*"))
    assert copies and copies[0].read_bytes() == bytes(data)
    assert any("kept a copy" in a for a in report.actions)
    again = reload(d)[0]  # starts again, with what came before the damage
    assert len(again.items) >= 5
    assert journal.fsck(d, repair=False, now=T0).clean


def test_fsck_repairs_a_corrupt_snapshot_by_moving_it_aside(d: Path) -> None:
    st, jr = open_fresh(d)
    work(st, jr, 2)
    assert jr.snapshot(st, T0).ok
    work(st, jr, 2, start=10)
    jr.close()
    (d / journal.SNAPSHOT_NAME).write_bytes(b"{not json")
    assert journal.fsck(d, repair=True, now=T0).problems
    assert list(d.glob("snapshot.json.corrupt-*"))
    again = reload(d)[0]
    assert {"w10", "w11"} <= again.items.keys()


def test_a_second_holder_of_the_state_dir_is_refused(d: Path) -> None:
    d.mkdir()
    fd = journal.lock_state_dir(d)
    try:
        with pytest.raises(journal.JournalError, match=f"pid {os.getpid()}"):
            journal.lock_state_dir(d)
    finally:
        os.close(fd)
    shutil.rmtree(d)
