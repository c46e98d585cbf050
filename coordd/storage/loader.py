"""Which files a start reads, and in what order: a snapshot, then the journal records
it does not hold. Reads only; raises Corrupt (file, byte offset, way out) whenever an
acknowledged record could be missing. ``FileStore.load`` acts on the plan.

The pairing rule. A snapshot covers (generation g, offset O) of the journal. Once it
is durable, the journal starts afresh: generation g+1 begins with a copy of g's frames
from O (its header says "base (g, O)"), and g is kept as ``journal.prev.wal`` for the
previous snapshot. So the records after a snapshot are found by walking forward from
(g, O): where the next generation's base is exactly our place, it holds everything
from here and we move into it; otherwise this generation's frames up to that base are
replayed first. ``journal.wal`` must exist, be whole and be the generation the walk
ends in: a journal missing, cut, of another generation or shorter than the offset a
snapshot covers refuses the start.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec

from coordd.core.model import Record
from coordd.core.state import State
from coordd.storage import format1
from coordd.storage.files import Corrupt
from coordd.storage.snapshot import (
    SNAPSHOT_NAME,
    SNAPSHOT_PREV_NAME,
    Snapshot,
    read_snapshot,
    restore,
)
from coordd.storage.wal import WAL_NAME, WAL_PREV_NAME, WalScan, read_wal

Chain = list[tuple[WalScan, int, int]]  # (journal, first frame offset, stop offset)


class Plan(msgspec.Struct, kw_only=True):
    """What to load: a snapshot (or none) and the journal stretches after it."""

    snap: Snapshot | None = None
    snap_path: Path | None = None
    snap_version: int = 0
    # The newest snapshot was damaged and an older one (with the journals after it)
    # holds everything: the damage, and the file that was used instead.
    fallback: Corrupt | None = None
    chain: Chain = []
    top: WalScan | None = None  # journal.wal

    def records(self) -> Iterator[Record]:
        for scan, start, stop in self.chain:
            for off, rec in scan.records:
                if start <= off < stop:
                    yield rec

    @property
    def format1(self) -> bool:
        return self.snap_version == 1 or (self.top is not None and self.top.version == 1)


def _read_v1(path: Path) -> Snapshot | None:
    old = format1.read_snapshot_v1(path)
    if old is None:
        return None
    return Snapshot(
        **{f: getattr(old, f) for f in format1.SnapshotV1.__struct_fields__ if f != "version"},
        version=1,
    )


class Journals:
    """The journal files by generation: ``journal.wal`` (the top, always read) and
    ``journal.prev.wal``, read only if a walk reaches back into it."""

    def __init__(self, d: Path, top: WalScan) -> None:
        self.d, self.top = d, top
        self._prev: WalScan | Corrupt | None = None
        self._read = False

    def get(self, gen: int) -> WalScan | Corrupt | None:
        if gen == self.top.generation:
            return self.top
        if not self._read:
            self._read = True
            try:
                self._prev = read_wal(self.d / WAL_PREV_NAME)
            except Corrupt as e:
                self._prev = e
        prev = self._prev
        if isinstance(prev, WalScan) and prev.generation != gen:
            return None
        return prev


def plan(d: Path) -> Plan:
    """The plan for state directory ``d``; raises Corrupt."""
    candidates = [
        (d / SNAPSHOT_NAME, read_snapshot, 2),
        (d / SNAPSHOT_PREV_NAME, read_snapshot, 2),
        (d / format1.SNAPSHOT_V1_NAME, _read_v1, 1),
    ]
    present = [c for c in candidates if c[0].exists()]
    damage: Corrupt | None = None
    for path, read, version in present:
        try:
            snap = read(path)
        except Corrupt as e:
            damage = damage or e
            continue
        assert snap is not None
        top = _top(d, path)
        try:
            chain = walk(snap.wal_generation, snap.wal_offset, Journals(d, top), top, path)
        except Corrupt:
            if damage is not None:
                raise damage from None  # the fallback cannot replace it: the damage refuses
            raise
        return Plan(snap=snap, snap_path=path, snap_version=version, fallback=damage,
                    chain=chain, top=top)  # fmt: skip
    if damage is not None:
        raise damage
    return _no_snapshot(d, read_wal(d / WAL_NAME))


def _top(d: Path, snap_path: Path) -> WalScan:
    top = read_wal(d / WAL_NAME)
    if top is None:
        raise Corrupt(
            d / WAL_NAME,
            0,
            f"the journal is missing, but {snap_path.name} needs it (records after"
            " the snapshot would be lost); if it is truly gone, `coordd fsck --repair`"
            " starts from the snapshot alone",
        )
    return top


def _no_snapshot(d: Path, top: WalScan | None) -> Plan:
    if top is None:
        return Plan()  # a first start
    if top.generation != 1:
        raise Corrupt(
            d / WAL_NAME,
            0,
            f"journal generation {top.generation} continues a snapshot, but there is no"
            f" {SNAPSHOT_NAME} in {d}",
        )
    return Plan(chain=[(top, top.header_size, top.end)], top=top)


def walk(gen: int, off: int, journals: Journals, top: WalScan, snap_path: Path) -> Chain:
    """The journal stretches holding every record after (gen, off), up to the end of
    ``top``; raises Corrupt when one is missing, cut or does not follow."""
    if gen > top.generation:
        raise Corrupt(
            Path(top.path),
            0,
            f"journal generation {top.generation} is older than the generation"
            f" {gen} that {snap_path.name} covers (a journal of another state?)",
        )
    chain: Chain = []
    while True:
        nxt = journals.get(gen + 1) if gen < top.generation else None
        if isinstance(nxt, WalScan) and _continues(nxt, gen, off):
            gen, off = gen + 1, nxt.header_size
            continue
        cur = journals.get(gen)
        if not isinstance(cur, WalScan):
            raise _missing(cur, gen, off, top, snap_path)
        _check_place(cur, off, snap_path)
        if gen == top.generation:
            chain.append((cur, off, cur.end))
            return chain
        if not isinstance(nxt, WalScan) or nxt.base[0] != gen or nxt.base[1] < off:
            raise Corrupt(
                Path(cur.path),
                0,
                f"journal generation {gen + 1} that follows this one is missing or does"
                f" not continue it at byte offset {off}",
            )
        if cur.end < nxt.base[1]:
            raise Corrupt(
                Path(cur.path),
                cur.end,
                f"journal generation {gen} ends at byte offset {cur.end}, but the next"
                f" generation continues it from {nxt.base[1]}: records in between are lost",
            )
        chain.append((cur, off, nxt.base[1]))
        gen, off = gen + 1, nxt.header_size


def _continues(nxt: WalScan, gen: int, off: int) -> bool:
    if nxt.version == 1:  # format 1 rotated exactly at the snapshot's offset
        return nxt.base[0] in (0, gen)
    return nxt.base == (gen, off)


def _check_place(cur: WalScan, off: int, snap_path: Path) -> None:
    if off > cur.end:
        raise Corrupt(
            Path(cur.path),
            cur.end,
            f"the journal ends at byte offset {cur.end}, before offset {off} that"
            f" {snap_path.name} covers: it was cut, records after the snapshot are lost",
        )
    if off not in cur.offsets():
        raise Corrupt(
            Path(cur.path),
            off,
            f"{snap_path.name} covers the journal up to byte offset {off}, where no record starts",
        )


def _missing(
    cur: WalScan | Corrupt | None, gen: int, off: int, top: WalScan, snap_path: Path
) -> Corrupt:
    if isinstance(cur, Corrupt):
        return cur
    return Corrupt(
        Path(top.path),
        0,
        f"{snap_path.name} covers journal generation {gen} up to byte offset {off}, but"
        f" {Path(top.path).name} is generation {top.generation} and does not continue"
        " from there (a journal of another generation, or one is missing)",
    )


def load_into(state: State, d: Path) -> Plan:
    """Read ``d`` into an empty ``state`` without changing any file (tests, fsck)."""
    p = plan(d)
    restore(state, p.snap, p.records())
    return p
