"""``coordd fsck``: check what a start would read (and the previous generation kept
beside it); with ``repair``, keep a copy of every file, salvage every record whose
checksum holds, and write a fresh, consistent snapshot and journal, saying exactly
what was kept and what was lost."""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import msgspec
import structlog

from coordd.core.model import AddCompletion, Applied, Record
from coordd.core.state import State
from coordd.storage import format1, frames, loader
from coordd.storage.files import Corrupt, fsync_dir, write_atomic
from coordd.storage.snapshot import (
    SNAPSHOT_NAME,
    SNAPSHOT_PREV_NAME,
    Salvage,
    Snapshot,
    document,
    read_snapshot,
    restore,
    salvage_snapshot,
)
from coordd.storage.wal import (
    HEADER,
    HEADER_SIZE,
    WAL_NAME,
    WAL_PREV_NAME,
    WalWriter,
    read_wal,
)

log = structlog.get_logger("coordd.storage")

_record_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(Record)
FILES = (SNAPSHOT_NAME, SNAPSHOT_PREV_NAME, format1.SNAPSHOT_V1_NAME, WAL_NAME, WAL_PREV_NAME)
FEW = 20  # dropped records are named by id up to this many


class FsckReport(msgspec.Struct, kw_only=True):
    """What fsck found (``problems``) and, with repair, what it did (``actions``)."""

    problems: list[str] = []
    actions: list[str] = []
    kept: dict[str, int] = {}
    dropped: dict[str, int] = {}

    @property
    def clean(self) -> bool:
        return not self.problems


def fsck(state_dir: str | Path, repair: bool, now: float) -> FsckReport:
    """Check what start would read; with ``repair`` salvage and rewrite (keeping copies)."""
    d = Path(state_dir)
    report = FsckReport()
    _check(d, report)
    if not repair or report.clean:
        return report
    _repair(d, report, now)
    for line in report.actions:
        log.warning("fsck_repair", detail=line)
    log.warning("fsck_repaired", kept=report.kept, dropped=report.dropped)
    return report


def _check(d: Path, report: FsckReport) -> None:
    try:
        p = loader.plan(d)
    except Corrupt as e:
        report.problems.append(f"{e.path}: corrupt at byte offset {e.offset}: {e.what}")
        return
    if p.fallback is not None:
        fb = p.fallback
        report.problems.append(
            f"{fb.path}: corrupt at byte offset {fb.offset}: {fb.what}"
            f" (start uses {p.snap_path.name if p.snap_path else '?'} and the journal instead)"
        )
    if p.top is not None and p.top.torn is not None:
        off, n = p.top.torn
        report.problems.append(
            f"{p.top.path}: torn last write at byte offset {off} ({n} bytes, never"
            " acknowledged; start drops it, keeping a copy)"
        )
    prev = d / SNAPSHOT_PREV_NAME
    if p.snap_path != prev:
        try:
            read_snapshot(prev)
        except Corrupt as e:
            report.problems.append(
                f"{e.path}: corrupt at byte offset {e.offset}: {e.what} (the previous"
                " generation, kept as a fallback; start does not need it)"
            )


# --- repair ----------------------------------------------------------------------


class _Journal(msgspec.Struct, kw_only=True):
    name: str
    generation: int
    base: tuple[int, int] = (0, 0)
    records: list[tuple[int, Record]]
    damaged: list[tuple[int, int]]
    dropped_ids: list[str]
    cut: str = ""


def _repair(d: Path, report: FsckReport, now: float) -> None:
    copy_dir = _keep_copies(d, report)
    newest, prev = salvage_snapshot(d / SNAPSHOT_NAME), salvage_snapshot(d / SNAPSHOT_PREV_NAME)
    journals = [j for j in (_salvage_journal(d / n) for n in (WAL_PREV_NAME, WAL_NAME)) if j]
    journals.sort(key=lambda j: j.generation)
    state = State()
    base = _rebuild(d, state, newest, prev, journals, report)
    report.kept.update(
        items=len(state.items), agents=len(state.agents), completions=len(state.completions)
    )
    for j in journals:
        _report_journal_losses(report, j)
    gens = [j.generation for j in journals] + [base.wal_generation if base else 0]
    generation = max(gens) + 1
    _rewrite(d, state, now, generation)
    report.actions.append(
        f"wrote a fresh {SNAPSHOT_NAME} and {WAL_NAME} (generation {generation}) holding"
        f" {report.kept['items']} items, {report.kept['agents']} agents,"
        f" {report.kept['completions']} completions; the files as they were are in {copy_dir}"
    )


def _usable(sal: Salvage | None) -> Snapshot | None:
    return (
        sal.snap if sal is not None and sal.snap is not None and sal.snap.wal_generation else None
    )


def _rebuild(
    d: Path,
    state: State,
    newest: Salvage | None,
    prev: Salvage | None,
    journals: list[_Journal],
    report: FsckReport,
) -> Snapshot | None:
    """Oldest to newest: the previous generation and the journal up to the newest
    snapshot (when that stretch is whole, to fill in the newest's damaged blocks), the
    newest snapshot's readable blocks over it, then every journal record after it."""
    snap, older = _usable(newest), _usable(prev)
    if snap is None and older is not None:
        report.actions.append(f"{SNAPSHOT_NAME} unusable: started from {SNAPSHOT_PREV_NAME}")
        snap, older, newest = older, None, prev
    if snap is None:
        snap = _v1_snapshot(d, report)
    if snap is None:
        report.actions.append("no readable snapshot: rebuilt from the journals alone")
        report.kept["journal_records"] = _replay(state, journals, (0, 0), None)
        return None
    key = (snap.wal_generation, snap.wal_offset)
    if older is None and any(j.generation == 1 for j in journals):
        older = Snapshot(wal_generation=1, wal_offset=HEADER_SIZE)  # the very beginning
    filled: set[str] = set()
    if older is not None and newest is not None and newest.damaged:
        okey = (older.wal_generation, older.wal_offset)
        if _whole(journals, okey, key):
            restore(state, older)
            _replay(state, journals, okey, key)
            filled = set(state.items)
    _overlay(state, snap)
    filled -= {i.work_item_id for i in snap.items}
    if filled:
        report.actions.append(
            f"filled in {len(filled)} items of damaged snapshot blocks from"
            f" the previous generation (snapshot and journal): {_few(sorted(filled))}"
        )
    report.kept["journal_records"] = _replay(state, journals, key, None)
    report.actions.append(
        f"started from {'the ' if newest else ''}snapshot covering journal generation"
        f" {key[0]} up to byte offset {key[1]}; replayed"
        f" {report.kept['journal_records']} journal records after it"
    )
    if newest is not None:
        _report_snapshot_losses(report, snap, newest, len(filled))
    return snap


def _v1_snapshot(d: Path, report: FsckReport) -> Snapshot | None:
    try:
        old = loader._read_v1(d / format1.SNAPSHOT_V1_NAME)
    except Corrupt as e:
        report.actions.append(f"{format1.SNAPSHOT_V1_NAME}: unreadable ({e.what}); not used")
        return None
    if old is not None:
        report.actions.append(f"started from {format1.SNAPSHOT_V1_NAME} (format 1)")
    return old


def _whole(journals: list[_Journal], lo: tuple[int, int], hi: tuple[int, int]) -> bool:
    """The journals hold every record between two snapshots (no damage, nothing cut)."""
    if lo[0] == hi[0]:
        span = [j for j in journals if j.generation == lo[0]]
    else:
        span = [j for j in journals if j.generation == hi[0] and j.base == lo]
    return bool(span) and not any(off < hi[1] for off, _n in span[0].damaged)


def _overlay(state: State, snap: Snapshot) -> None:
    """The newest snapshot's readable records over what the older generation gave."""
    for item in snap.items:
        state.items[item.work_item_id] = item
    for agent in snap.agents:
        state.agents[agent.agent_id] = agent
    keys = {_ckey(c) for c in snap.completions}
    merged = list(snap.completions) + [c for c in state.completions if _ckey(c) not in keys]
    merged.sort(key=lambda c: c.completed_at)
    state.completions = merged
    state.team_velocity = dict(snap.team_velocity)
    state.lease_seq = max(state.lease_seq, snap.lease_seq)
    # Remembered request ids too (a resend must still be answered, not applied again),
    # oldest first as State keeps them.
    applied = {a.request_id: a for a in state.applied.values()}
    applied.update((a.request_id, a) for a in snap.applied)
    state.applied = OrderedDict((a.request_id, a) for a in sorted(applied.values(), key=_at))
    state.rebuild_indexes()


def _at(applied: Applied) -> float:
    return applied.at


def _ckey(c: Any) -> tuple[str, float, str | None]:
    return (c.work_item_id, c.completed_at, c.agent_id)


def _keep_copies(d: Path, report: FsckReport) -> Path:
    """Every file the repair replaces or removes, copied first (nothing is lost)."""
    copy_dir = d / f"fsck-copy-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    copy_dir.mkdir()
    for name in FILES:
        src = d / name
        if src.exists():
            write_atomic(copy_dir / name, src.read_bytes())
    fsync_dir(d)
    report.actions.append(f"kept a copy of every file as it was in {copy_dir}")
    return copy_dir


def _salvage_journal(path: Path) -> _Journal | None:
    """Every frame of ``path`` whose checksums hold, and the stretches that did not."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    j = _Journal(name=path.name, generation=0, records=[], damaged=[], dropped_ids=[])
    if len(data) >= 12 and data[8:12] == b"\0\0\0\1":  # format 1: its own reader
        try:
            gen, recs, _end = format1.read_journal_v1(path, data)
            j.generation, j.records = gen, recs
        except Corrupt as e:
            j.damaged.append((e.offset, len(data) - e.offset))
        return j
    if len(data) >= HEADER.size:
        _m, _v, gen, cap, bg, bo, _crc = HEADER.unpack_from(data, 0)
        j.generation, j.base = gen, (bg, bo)
        if len(data) < cap:
            j.cut = f"cut at byte offset {len(data)} (preallocated to {cap})"
    try:
        read_wal(path)
    except Corrupt as e:
        if e.offset == 0 and "journal header" in e.what:
            j.damaged.append((0, HEADER_SIZE))
    buf = memoryview(data)
    for fr in frames.salvage(buf, HEADER_SIZE, len(data)):
        if fr.problem or fr.kind != frames.RECORD:
            j.damaged.append((fr.pos, fr.nxt - fr.pos))
            if fr.payload:
                j.dropped_ids += _guess_record_id(fr.payload)
            continue
        try:
            j.records.append((fr.pos, _record_decoder.decode(fr.payload)))
        except frames.DECODE_ERRORS:
            j.damaged.append((fr.pos, fr.nxt - fr.pos))
    return j


def _guess_record_id(payload: memoryview) -> list[str]:
    try:
        rec = _record_decoder.decode(payload)
    except frames.DECODE_ERRORS:
        return []
    for key in ("item", "agent", "entry"):
        obj = getattr(rec, key, None)
        rid = getattr(obj, "work_item_id", None) or getattr(obj, "agent_id", None)
        if isinstance(rid, str):
            return [rid]
    return []


def _replay(
    state: State, journals: list[_Journal], lo: tuple[int, int], hi: tuple[int, int] | None
) -> int:
    """Apply, in order, every salvaged record between journal places ``lo`` and ``hi``.
    Records are whole values (an item, an agent), so one replayed twice (a generation
    begins with a copy of the previous one's tail) changes nothing; a completion
    already logged is skipped, not counted twice."""
    seen = {_ckey(c) for c in state.completions}
    n = 0
    for j in journals:
        for pos, rec in j.records:
            if (j.generation, pos) < lo or (hi is not None and (j.generation, pos) >= hi):
                continue
            if isinstance(rec, AddCompletion):
                if _ckey(rec.entry) in seen:
                    continue
                seen.add(_ckey(rec.entry))
            state.apply_record(rec)
            n += 1
    state.rebuild_indexes()
    return n


def _report_snapshot_losses(report: FsckReport, snap: Snapshot, sal: Salvage, filled: int) -> None:
    got = {"items": len(snap.items), "agents": len(snap.agents),
           "completions": len(snap.completions), "request_ids": len(snap.applied)}  # fmt: skip
    line = (
        f"snapshot: read {got['items']} items, {got['agents']} agents,"
        f" {got['completions']} completions, {got['request_ids']} request ids whose"
        " checksums hold"
    )
    if sal.damaged:
        stretches = ", ".join(f"{n} bytes at byte offset {o}" for o, n in sal.damaged)
        line += f"; unreadable: {stretches}"
    if sal.expected is not None:
        lost = {
            "items": max(0, sal.expected.items - got["items"] - filled),
            "agents": max(0, sal.expected.agents - got["agents"]),
            "completions": max(0, sal.expected.completions - got["completions"]),
            "request_ids": max(0, sal.expected.applied - got["request_ids"]),
        }
        for k, v in lost.items():
            report.dropped[k] = v
        line += (
            f"; lost {lost['items']} items, {lost['agents']} agents,"
            f" {lost['completions']} completions, {lost['request_ids']} request ids (its END"
            " frame's counts, less what was filled in)"
        )
    elif sal.damaged:
        line += "; how many records the damaged stretches held is unknown (END unreadable)"
    if sal.dropped_ids:
        line += f"; ids in the damaged blocks (read unchecked): {_few(sal.dropped_ids)}"
    report.actions.append(line)


def _report_journal_losses(report: FsckReport, j: _Journal) -> None:
    line = f"{j.name} (generation {j.generation}): {len(j.records)} whole records"
    if j.cut:
        line += f"; {j.cut}: whatever followed the cut is lost"
    if j.damaged:
        stretches = ", ".join(f"{n} bytes at byte offset {o}" for o, n in j.damaged)
        line += f"; dropped unreadable stretches: {stretches}"
        report.dropped[f"{j.name}_stretches"] = len(j.damaged)
    if j.dropped_ids:
        line += f" (records of {_few(j.dropped_ids)}, read unchecked)"
    report.actions.append(line)


def _few(ids: list[str]) -> str:
    head = ", ".join(ids[:FEW])
    return head if len(ids) <= FEW else f"{head} and {len(ids) - FEW} more"


def _rewrite(d: Path, state: State, now: float, generation: int) -> None:
    """A fresh, consistent pair: a snapshot covering an empty journal of ``generation``
    (higher than any before). The snapshot goes first: if the repair is interrupted,
    the next one starts from it and skips every older journal."""
    from coordd.storage.snapshot import write_snapshot

    write_snapshot(d / SNAPSHOT_NAME, document(state, now, generation, HEADER_SIZE))
    writer = WalWriter(d / WAL_NAME)
    writer.create(generation)
    writer.close()
    # The previous generation (copied) no longer pairs with anything.
    for name in (SNAPSHOT_PREV_NAME, WAL_PREV_NAME, format1.SNAPSHOT_V1_NAME):
        (d / name).unlink(missing_ok=True)
    fsync_dir(d)
