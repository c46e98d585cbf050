"""``coordd fsck``: check the snapshot and the WAL of a state directory, and with
``repair`` cut the damage (keeping a copy) and leave a consistent pair."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from coordd.core.model import Record
from coordd.core.state import State
from coordd.storage.files import Corrupt, corrupt_copy_name, write_atomic
from coordd.storage.snapshot import (
    SNAPSHOT_NAME,
    Snapshot,
    document,
    read_snapshot,
    records_after,
    restore,
)
from coordd.storage.wal import HEADER, WAL_MAGIC, WAL_NAME, good_frames, header, read_wal


class FsckReport(msgspec.Struct, kw_only=True):
    """What fsck found (``problems``) and, with repair, what it did (``actions``)."""

    problems: list[str] = []
    actions: list[str] = []

    @property
    def clean(self) -> bool:
        return not self.problems


def fsck(state_dir: str | Path, repair: bool, now: float) -> FsckReport:
    """Check snapshot and WAL; with ``repair`` keep a copy of what is cut, then leave
    a consistent pair (fresh snapshot of what could be read, fresh WAL)."""
    d = Path(state_dir)
    report = FsckReport()
    snap_path, wal_path = d / SNAPSHOT_NAME, d / WAL_NAME
    snap = _check(report, lambda: read_snapshot(snap_path))
    scan = _check(report, lambda: read_wal(wal_path))
    wal_corrupt = isinstance(scan, Corrupt)
    if scan is not None and not isinstance(scan, Corrupt) and scan.torn:
        wal_corrupt = True  # what a repair cuts, it keeps a copy of
        report.problems.append(
            f"{wal_path}: torn last record at byte offset {scan.end}"
            f" ({scan.size - scan.end} bytes; start drops it by itself)"
        )
    if not isinstance(snap, Corrupt) and not isinstance(scan, Corrupt) and scan is not None:
        try:
            list(records_after(snap, scan, wal_path))
        except Corrupt as e:
            report.problems.append(str(e).split("; run")[0])
            wal_corrupt = True
    if not repair or report.clean:
        return report
    state = State()
    if isinstance(snap, Corrupt):
        _keep_copy(report, snap_path, move=True)
        snap = None
    if wal_corrupt:
        _keep_copy(report, wal_path, move=False)
    good = _salvage_wal(wal_path, snap if isinstance(snap, Snapshot) else None)
    restore(state, snap if isinstance(snap, Snapshot) else None, good)
    report.actions.append(f"kept {len(good)} journal records readable before the damage")
    _rewrite(d, state, now)
    report.actions.append(f"wrote a fresh {snap_path.name} and {wal_path.name}")
    return report


def _check(report: FsckReport, read: Callable[[], Any]) -> Any:
    try:
        return read()
    except Corrupt as e:
        report.problems.append(f"{e.path}: corrupt at byte offset {e.offset}: {e.what}")
        return e


def _keep_copy(report: FsckReport, path: Path, move: bool) -> None:
    copy = corrupt_copy_name(path)
    if move:
        os.rename(path, copy)
    else:
        copy.write_bytes(path.read_bytes())
    report.actions.append(f"kept a copy of {path.name} as {copy}")


def _salvage_wal(path: Path, snap: Snapshot | None) -> list[Record]:
    """Every good frame before the first bad one that the snapshot does not hold."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    if len(data) < HEADER.size or data[:8] != WAL_MAGIC:
        return []
    generation = HEADER.unpack_from(data, 0)[2]
    start = HEADER.size
    if snap is not None and generation == snap.wal_generation:
        start = snap.wal_offset
    elif snap is not None and generation < snap.wal_generation:
        return []  # an older journal: the snapshot already holds all of it
    return [rec for pos, rec in good_frames(data) if pos >= start]


def _rewrite(d: Path, state: State, now: float) -> None:
    """A fresh, consistent pair: WAL generation 1 empty, snapshot covering it."""
    head = header(1)
    doc = document(state, now, 1, len(head))
    write_atomic(d / SNAPSHOT_NAME, msgspec.json.encode(doc))
    write_atomic(d / WAL_NAME, head)
