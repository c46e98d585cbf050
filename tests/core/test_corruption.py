"""Every single-bit flip and every cut of a small state directory, over the loader
in-process (no daemon per case, no fsync): each either refuses to start naming the
file and the byte offset, or starts with every acknowledged record. Zero silent losses.
A damaged final frame is the torn last write: accepted without that record, with a
copy and a warning. After a sample of the refusals, ``fsck --repair`` keeps every
record it can prove and says what it lost."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from structlog.testing import capture_logs

from coordd.core.state import State
from coordd.storage import loader, snapshot, wal
from coordd.storage.files import Corrupt
from coordd.storage.fsck import fsck
from coordd.storage.store import FileStore
from tests.core.storage_helpers import T0

pytestmark = pytest.mark.slow

CAPACITY = 8192  # small, so that flipping every bit of the whole file stays quick
REPAIR_EVERY = 500  # fsck --repair after one refusal in this many (each ~10 ms)


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    monkeypatch.setattr(os, "fdatasync", lambda fd: None)


@pytest.fixture
def fast_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory in memory when there is one: rewriting a file of allocated blocks
    on ext4 costs milliseconds, and this test does it a hundred thousand times."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(prefix="coordd-corruption-", dir=shm))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _scenario(d: Path, snapshots: int) -> State:
    """``snapshots`` snapshots, then a journal of 50 records: claims, progress,
    completions, releases, registrations (every kind of record)."""
    st, store = State(), FileStore(d, journal_capacity=CAPACITY)
    d.mkdir()
    store.load(st)

    def step() -> None:
        store.append(st.drain()[0])

    for k in range(6):
        st.claim(f"a{k % 2}", "build", f"pre {k} ✓", T0 + k, team="core", work_item_id=f"p{k}")
        step()
        if snapshots == 2 and k == 2:
            assert store.snapshot(st, T0 + 10).ok
    assert store.snapshot(st, T0 + 20).ok
    n, k = 0, 0
    while n < 50:
        item = st.claim(f"a{k % 3}", "t", f'"{k}"', T0 + 100 + k, team="x", work_item_id=f"w{k}")
        recs = [st.drain()[0]]
        if k % 3 == 0:
            st.complete(item.work_item_id, T0 + 101 + k, item.agent_id, item.lease, velocity=2)
        elif k % 3 == 1:
            st.progress(item.work_item_id, 50, T0 + 101 + k, item.agent_id, item.lease)
        else:
            st.register(f"r{k}", T0 + 101 + k, team="x")
        recs.append(st.drain()[0])
        for batch in recs:
            store.append(batch)
            n += len(batch)
        k += 1
    store.close()
    (d / "coordd.lock").unlink(missing_ok=True)
    return st


def signature(st: State) -> bytes:
    return msgspec.msgpack.encode(
        [
            sorted(st.items.values(), key=lambda i: i.work_item_id),
            sorted(st.agents.values(), key=lambda a: a.agent_id),
            st.completions,
            sorted(st.team_velocity.items()),
            st.lease_seq,
        ]
    )


class Case:
    def __init__(self, base: Path, work: Path, snapshots: int) -> None:
        self.st = _scenario(base, snapshots)
        self.base, self.work = base, work
        self.files = {p.name: p.read_bytes() for p in base.iterdir() if p.is_file()}
        self.full = signature(self.st)
        top = wal.read_wal(base / wal.WAL_NAME)
        assert top is not None and len(top.records) >= 50, top
        self.top = top
        self.final = top.records[-1][0]  # where the final frame starts
        # what start must give when the final frame is lost (a torn last write)
        self.without_last = self._state_of(lambda s: self._cut_records(s, self.final))

    def _state_of(self, records: Callable[[loader.Plan], Iterator[Any]]) -> bytes:
        self._reset()
        p = loader.plan(self.work)
        st = State()
        snapshot.restore(st, p.snap, records(p))
        return signature(st)

    def _cut_records(self, p: loader.Plan, cut: int) -> Iterator[Any]:
        for scan, start, stop in p.chain:
            for off, rec in scan.records:
                in_top = Path(scan.path).name == wal.WAL_NAME
                if start <= off < stop and not (in_top and off >= cut):
                    yield rec

    def _reset(self) -> None:
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir()
        for name, data in self.files.items():
            (self.work / name).write_bytes(data)

    def write(self, name: str, data: bytes) -> None:
        (self.work / name).write_bytes(data)

    def load(self) -> tuple[bytes, loader.Plan] | Corrupt:
        try:
            st = State()
            p = loader.load_into(st, self.work)
        except Corrupt as e:
            return e
        return signature(st), p


class Tally:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.refusals = 0
        self.repairs: list[str] = []

    def add(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1


def _refusal_ok(e: Corrupt, name: str, where: str) -> None:
    msg = str(e)
    assert re.search(r"corrupt at byte offset \d+", msg), (where, msg)
    assert "coordd fsck --repair" in msg, (where, msg)
    assert str(e.path).endswith((name, wal.WAL_NAME, wal.WAL_PREV_NAME)), (where, msg)


def _run(case: Case, name: str, mutations: Iterator[tuple[str, bytes]], tally: Tally,
         expect_torn: Callable[[str], bool]) -> None:  # fmt: skip
    case._reset()
    for where, data in mutations:
        case.write(name, data)
        got = case.load()
        if isinstance(got, Corrupt):
            _refusal_ok(got, name, where)
            tally.add(f"{name}: refused")
            tally.refusals += 1
            if tally.refusals % REPAIR_EVERY == 1:
                _repair_keeps_what_it_can(case, name, where, data, tally)
                case._reset()
            continue
        sig, p = got
        if expect_torn(where) and sig != case.full:
            assert sig == case.without_last, f"{where}: lost more than the torn last frame"
            assert p.top is not None and p.top.torn is not None, where
            tally.add(f"{name}: torn last frame dropped")
            continue
        assert sig == case.full, f"SILENT LOSS: {where} started without acknowledged records"
        tally.add(f"{name}: started whole" + (" (previous snapshot)" if p.fallback else ""))
    case.write(name, case.files[name])


def _repair_keeps_what_it_can(case: Case, name: str, where: str, data: bytes, t: Tally) -> None:
    report = fsck(case.work, repair=True, now=T0)
    assert report.actions and any("kept a copy" in a for a in report.actions), where
    (copy,) = case.work.glob("fsck-copy-*")
    assert (copy / name).read_bytes() == data, where  # nothing lost that is not copied
    st = State()
    loader.load_into(st, case.work)  # it starts now
    lost = {i for i in case.st.items if msgspec.msgpack.encode(case.st.items[i])
            != msgspec.msgpack.encode(st.items.get(i))}  # fmt: skip
    # One flipped bit costs at most the record of the frame it hit (a snapshot block is
    # filled in from the previous generation); a cut, whatever followed it.
    if "flip" in where:
        assert len(lost) <= 1, (where, lost, report.actions)
    t.repairs.append(f"{where}: lost {sorted(lost)}; dropped {report.dropped}")


def _flips(
    data: bytes, skip: range = range(0), only: range | None = None
) -> Iterator[tuple[str, bytes]]:
    buf = bytearray(data)
    for i in only if only is not None else range(len(data)):
        if i in skip:
            continue
        for bit in range(8):
            buf[i] ^= 1 << bit
            yield f"flip byte {i} bit {bit}", bytes(buf)
            buf[i] ^= 1 << bit


def _cuts(data: bytes, upto: int) -> Iterator[tuple[str, bytes]]:
    for n in range(upto):
        yield f"cut to {n} bytes", data[:n]


@pytest.mark.parametrize("snapshots", [2, 1])
def test_every_bit_flip_and_cut_refuses_or_starts_whole(fast_dir: Path, snapshots: int) -> None:
    # Two snapshots: a damaged newest one falls back to the previous one. One: it is
    # refused, and a repair fills its damaged blocks in from the journal kept beside it.
    t0 = time.monotonic()
    case = Case(fast_dir / "base", fast_dir / "work", snapshots)
    tally = Tally()
    jdata = case.files[wal.WAL_NAME]
    final = range(case.final, case.top.end)
    if snapshots == 2:  # the journal's cases do not depend on the snapshots
        _run(case, wal.WAL_NAME, _flips(jdata, skip=final), tally, lambda w: False)
        _run(case, wal.WAL_NAME, _cuts(jdata, case.final), tally, lambda w: False)
        _run(case, wal.WAL_NAME, _flips(jdata, only=final), tally, lambda w: True)
    sdata = case.files[snapshot.SNAPSHOT_NAME]
    _run(case, snapshot.SNAPSHOT_NAME, _flips(sdata), tally, lambda w: False)
    _run(case, snapshot.SNAPSHOT_NAME, _cuts(sdata, len(sdata)), tally, lambda w: False)
    took = time.monotonic() - t0
    cases = sum(tally.counts.values())
    print(f"\n{snapshots} snapshot(s): {cases} cases in {took:.1f}s: {tally.counts}")
    print(f"repairs checked: {len(tally.repairs)}; e.g. {tally.repairs[:3]}")
    assert tally.refusals > 0 and tally.repairs
    if snapshots == 2:
        assert cases > 100_000
        assert tally.counts[f"{wal.WAL_NAME}: torn last frame dropped"] > 0
        assert tally.counts[f"{snapshot.SNAPSHOT_NAME}: started whole (previous snapshot)"] > 0


def test_a_torn_final_frame_is_kept_as_a_copy_and_named_in_a_warning(tmp_path: Path) -> None:
    case = Case(tmp_path / "base", tmp_path / "work", 1)
    case._reset()
    data = bytearray(case.files[wal.WAL_NAME])
    data[case.final + 20] ^= 0x01
    case.write(wal.WAL_NAME, bytes(data))
    st = State()
    with capture_logs() as logs:
        FileStore(case.work).load(st)
    assert signature(st) == case.without_last
    (warning,) = [e for e in logs if e["event"] == "journal_torn_tail_dropped"]
    assert warning["offset"] == case.final and warning["bytes"] == case.top.end - case.final
    assert Path(warning["copy"]).read_bytes() == bytes(data[case.final : case.top.end])
