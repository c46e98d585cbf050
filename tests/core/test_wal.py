"""The write-ahead log on real files: group commit, fsync policies, replay, torn tails."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from coordd.storage import wal
from coordd.storage.files import Corrupt, StoreError, lock_state_dir
from tests.core.storage_helpers import open_fresh, reload, view, work, written


@pytest.fixture
def d(tmp_path: Path) -> Path:
    return tmp_path / "state"


def test_every_written_transition_is_replayed_after_a_restart(d: Path) -> None:
    st, store = open_fresh(d)
    work(st, store, 20)
    store.close()
    again, store2 = reload(d)
    assert view(again) == view(st)
    assert again.team_velocity == {"core": 30}
    # indexes are rebuilt: the held items are held again
    assert again.workload("a1") == st.workload("a1") > 0
    store2.close()


@pytest.mark.parametrize("policy", ["always", "everysec", "never"])
def test_every_policy_keeps_what_was_written_once_closed(d: Path, policy: str) -> None:
    st, store = open_fresh(d, policy)
    work(st, store, 5)
    store.tick()
    store.close()
    assert view(reload(d)[0]) == view(st)


def test_each_batch_is_one_timed_sync_with_always_and_none_with_never(d: Path) -> None:
    synced: list[float] = []
    st, store = open_fresh(d, "always", observe_fsync=synced.append)
    work(st, store, 4)  # 4 claims + 2 completions: 6 batches
    store.close()
    assert len(synced) == 6 and all(s >= 0 for s in synced)
    synced.clear()
    st, store = open_fresh(d / "never", "never", observe_fsync=synced.append)
    work(st, store, 4)
    store.close()
    assert synced == []


def test_everysec_syncs_on_a_thread_once_a_second_and_never_a_closed_fd(d: Path) -> None:
    """The loop only hands the fd over; the sync runs on another thread, and a rotation
    or a close waits for it."""
    synced: list[str] = []
    st, store = open_fresh(d, "everysec", observe_fsync=lambda s: synced.append(thread()))
    work(st, store, 3)
    store.tick()  # less than a second since the load's sync: nothing handed over
    writer = store._wal
    writer._last_sync = 0.0  # a second has passed
    store.tick()
    assert writer._bg is not None
    writer._bg.idle()
    assert synced and all(name == "coordd-fsync" for name in synced)
    assert not writer._dirty
    work(st, store, 2, start=3)
    store.close()  # waits for the thread, then its own sync
    assert view(reload(d)[0]) == view(st)


def test_a_failed_background_sync_stops_coordd_on_the_next_tick(d: Path) -> None:
    st, store = open_fresh(d, "everysec")
    work(st, store, 1)
    writer = store._wal
    assert writer._bg is not None
    writer._bg.error = OSError(5, "Input/output error")
    with pytest.raises(StoreError, match="cannot fsync"):
        store.tick()
    writer._bg.error = None
    store.close()


def thread() -> str:
    import threading

    return threading.current_thread().name


def test_an_unknown_fsync_policy_is_refused(d: Path) -> None:
    with pytest.raises(ValueError, match="always, everysec, never"):
        wal.WalWriter(d / wal.WAL_NAME, "sometimes")


def test_a_torn_last_record_is_dropped_with_a_warning_and_a_copy(d: Path) -> None:
    st, path = written(d, 4)
    scan = wal.read_wal(path)
    assert scan is not None
    end, size = scan.end, path.stat().st_size
    torn = wal.frame([scan.records[0][1]])[:30]  # the process died mid-append
    with open(path, "r+b") as f:
        f.seek(end)
        f.write(torn)
    with capture_logs() as logs:
        again, store2 = reload(d)
    assert view(again) == view(st)
    warning = [e for e in logs if e["event"] == "journal_torn_tail_dropped"]
    assert warning and warning[0]["offset"] == end and warning[0]["bytes"] == len(torn)
    assert warning[0]["log_level"] == "warning"
    (copy,) = d.glob("journal.wal.torn-*")
    assert copy.read_bytes() == torn and str(copy) == warning[0]["copy"]
    assert path.stat().st_size == size  # zeroed, not cut: the file stays preallocated
    work(again, store2, 2, start=100)
    store2.close()
    assert view(reload(d)[0]) == view(again)


def test_a_bad_checksum_in_the_middle_refuses_with_file_offset_and_fsck(d: Path) -> None:
    _, path = written(d, 4)
    data = bytearray(path.read_bytes())
    first = wal.HEADER_SIZE
    data[first + 20] ^= 0xFF  # inside the first record's payload
    path.write_bytes(bytes(data))
    with pytest.raises(Corrupt) as err:
        reload(d)
    msg = str(err.value)
    assert str(path) in msg and f"offset {first}" in msg and "coordd fsck --repair" in msg


def test_a_second_holder_of_the_state_dir_is_refused(d: Path) -> None:
    d.mkdir()
    fd = lock_state_dir(d)
    try:
        with pytest.raises(StoreError, match=f"pid {os.getpid()}"):
            lock_state_dir(d)
    finally:
        os.close(fd)
    shutil.rmtree(d)


def test_the_journal_is_preallocated_and_grows_by_extents_its_header_records(d: Path) -> None:
    st, store = open_fresh(d, journal_capacity=8192)
    path = d / wal.WAL_NAME
    assert path.stat().st_size == 8192
    assert path.stat().st_blocks * 512 >= 8192  # allocated now, not at each append
    synced: list[float] = []
    store._wal._observe_fsync = synced.append
    work(st, store, 60)  # 90 batches, well past the first extent
    store.close()
    assert len(synced) == 90  # growing adds no sync to a batch's count
    scan = wal.read_wal(path)
    assert scan is not None and scan.capacity > 8192 and scan.capacity == path.stat().st_size
    assert view(reload(d)[0]) == view(st)
    # A file shorter than its header says was cut: refused, though every frame left is whole.
    os.truncate(path, scan.end)
    with pytest.raises(Corrupt, match=f"offset {scan.end}: the journal was cut"):
        reload(d)
