"""The snapshot ``snapshot.bin``: the document, its writer (in this process or in a
forked child, as Redis BGSAVE does), its loader, and how it pairs with the WAL."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import signal
import struct
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec

from coordd.core.model import Agent, Applied, Completion, Record, WorkItem
from coordd.core.state import State
from coordd.storage import frames
from coordd.storage.files import Corrupt, os_reason, write_atomic
from coordd.storage.format1 import SnapshotV1
from coordd.storage.wal import link_over

# Format 2: ``snapshot.bin`` is a 16-byte header (magic, version, header crc32), then
# frames (storage/frames.py, the journal's format): META (what it covers), blocks of
# items, agents and completions (BLOCK records each, each block checksummed), then the
# remembered request ids (APPLIED blocks; none in a file written before they were kept,
# which loads as "none remembered"), END (how many of each). A damaged block costs at
# most its records, and a repair keeps every other block; a file cut at a frame
# boundary lacks its END and is refused.
SNAPSHOT_NAME = "snapshot.bin"
SNAPSHOT_PREV_NAME = "snapshot.prev.bin"  # kept until the next one is durable
SNAPSHOT_MAGIC = b"COORDSNP"
SNAPSHOT_FORMAT = "coordd-snapshot"
SNAPSHOT_VERSION = 2
FILE_HEADER = struct.Struct(">8sII")  # magic, version, crc32 of the first 12 bytes
BLOCK = 512


class Snapshot(SnapshotV1, kw_only=True):
    """A snapshot's content, in memory: format 1's document, plus the replies of
    requests that carried an id (a resend after a restart is answered, not applied
    again: the journal records them, so a snapshot must not forget them)."""

    version: int = SNAPSHOT_VERSION
    applied: list[Applied] = []


class Meta(msgspec.Struct, kw_only=True):
    """The META frame: which journal place the snapshot covers, and the scalars."""

    created_at: float = 0.0
    wal_generation: int = 0
    wal_offset: int = 0
    lease_seq: int = 0
    team_velocity: dict[str, int] = {}


class End(msgspec.Struct, kw_only=True):
    """The END frame: what the blocks hold, so a lost block or a cut is seen."""

    items: int = 0
    agents: int = 0
    completions: int = 0
    frames: int = 0
    applied: int = 0


class SnapshotResult(msgspec.Struct, kw_only=True):
    """How a snapshot went; ``seconds`` is what the daemon's snapshot metric observes."""

    ok: bool
    reason: str = ""
    seconds: float = 0.0  # wall time from start to durable
    blocked: float = 0.0  # how long the loop was held (fork, or all of it if synchronous)
    bytes: int = 0
    items: int = 0


_encoder = msgspec.msgpack.Encoder()
_meta_decoder = msgspec.msgpack.Decoder(Meta)
_end_decoder = msgspec.msgpack.Decoder(End)
_block_decoders: dict[int, Any] = {
    frames.ITEMS: msgspec.msgpack.Decoder(list[WorkItem]),
    frames.AGENTS: msgspec.msgpack.Decoder(list[Agent]),
    frames.COMPLETIONS: msgspec.msgpack.Decoder(list[Completion]),
    frames.APPLIED: msgspec.msgpack.Decoder(list[Applied]),
}


# --- the document --------------------------------------------------------------


def document(state: State, now: float, generation: int, offset: int) -> Snapshot:
    """The snapshot of ``state``, covering the journal up to ``offset`` of ``generation``."""
    return Snapshot(
        created_at=now,
        wal_generation=generation,
        wal_offset=offset,
        lease_seq=state.lease_seq,
        items=list(state.items.values()),
        agents=list(state.agents.values()),
        completions=state.completions,
        team_velocity=state.team_velocity,
        applied=list(state.applied.values()),
    )


def restore(state: State, snap: Snapshot | None, records: Iterable[Record] = ()) -> int:
    """Put a snapshot's content (if any) and the records after it into ``state``
    (``State.restore`` rebuilds its indexes); returns the records applied."""
    if snap is None:
        return state.restore(records=records)
    return state.restore(
        snap.items,
        snap.agents,
        snap.completions,
        snap.team_velocity,
        snap.lease_seq,
        records,
        snap.applied,
    )


def encode(doc: Snapshot) -> bytes:
    """The bytes of ``snapshot.bin`` for ``doc``."""
    head = FILE_HEADER.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, 0)[:12]
    out = [head + struct.pack(">I", zlib.crc32(head))]
    meta = Meta(
        created_at=doc.created_at,
        wal_generation=doc.wal_generation,
        wal_offset=doc.wal_offset,
        lease_seq=doc.lease_seq,
        team_velocity=doc.team_velocity,
    )
    out.append(frames.encode(frames.META, _encoder.encode(meta)))
    n = 0
    for kind, rows in (
        (frames.ITEMS, doc.items),
        (frames.AGENTS, doc.agents),
        (frames.COMPLETIONS, doc.completions),
        (frames.APPLIED, doc.applied),
    ):
        for i in range(0, len(rows), BLOCK):
            out.append(frames.encode(kind, _encoder.encode(rows[i : i + BLOCK])))
            n += 1
    end = End(
        items=len(doc.items),
        agents=len(doc.agents),
        completions=len(doc.completions),
        frames=n,
        applied=len(doc.applied),
    )
    out.append(frames.encode(frames.END, _encoder.encode(end)))
    return b"".join(out)


# --- loading -------------------------------------------------------------------


def read_snapshot(path: Path) -> Snapshot | None:
    """The snapshot in ``path``, None when there is none; raises Corrupt (naming the
    byte offset) on any damage: a snapshot is written whole, so nothing is torn."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return decode(path, data)


def decode(path: Path, data: bytes) -> Snapshot:
    """The snapshot in ``data`` (the bytes of ``path``); raises Corrupt."""
    buf = memoryview(data)
    pos = _check_header(path, data)
    snap = Snapshot()
    end: End | None = None
    n = 0
    for fr in frames.scan(buf, pos, len(data)):
        if fr.problem:
            if fr.zero and fr.pos == len(data) and end is not None:
                break
            raise Corrupt(path, fr.pos, _what(fr, end))
        if end is not None:
            raise Corrupt(path, fr.pos, "a frame after the END frame")
        try:
            if fr.pos == pos:
                _put_meta(snap, _decode_kind(fr, frames.META, _meta_decoder))
            elif fr.kind == frames.END:
                end = _end_decoder.decode(fr.payload)
            else:
                _block(snap, fr)
                n += 1
        except frames.DECODE_ERRORS as e:
            raise Corrupt(path, fr.pos, f"a frame this coordd cannot read ({e})") from None
    if end is None:
        raise Corrupt(path, len(data), "no END frame: the snapshot was cut")
    got = (len(snap.items), len(snap.agents), len(snap.completions), n, len(snap.applied))
    if got != (end.items, end.agents, end.completions, end.frames, end.applied):
        raise Corrupt(path, len(data), f"holds {got}, its END frame says {end}")
    return snap


def _what(fr: frames.Frame, end: End | None) -> str:
    if end is not None:
        return "bytes after the END frame"
    if fr.zero:
        return "no END frame: the snapshot was cut"
    return fr.problem


def _check_header(path: Path, data: bytes) -> int:
    if len(data) < FILE_HEADER.size:
        raise Corrupt(path, len(data), f"only {len(data)} bytes, shorter than a snapshot header")
    magic, version, crc = FILE_HEADER.unpack_from(data, 0)
    if magic != SNAPSHOT_MAGIC:
        raise Corrupt(path, 0, "not a coordd snapshot (bad magic)")
    if zlib.crc32(data[:12]) != crc:
        raise Corrupt(path, 0, "snapshot header checksum mismatch")
    if version != SNAPSHOT_VERSION:
        raise Corrupt(path, 8, f"snapshot format {version}; this coordd reads {SNAPSHOT_VERSION}")
    return FILE_HEADER.size


def _decode_kind(fr: frames.Frame, kind: int, decoder: Any) -> Any:
    if fr.kind != kind:
        raise ValueError(f"frame of kind {fr.kind} where kind {kind} belongs")
    return decoder.decode(fr.payload)


def _put_meta(snap: Snapshot, meta: Meta) -> None:
    snap.created_at, snap.lease_seq = meta.created_at, meta.lease_seq
    snap.wal_generation, snap.wal_offset = meta.wal_generation, meta.wal_offset
    snap.team_velocity = meta.team_velocity


def _block(snap: Snapshot, fr: frames.Frame) -> None:
    decoder = _block_decoders.get(fr.kind)
    if decoder is None:
        raise ValueError(f"frame of kind {fr.kind} in a snapshot")
    rows = decoder.decode(fr.payload)
    if fr.kind == frames.ITEMS:
        snap.items.extend(rows)
    elif fr.kind == frames.AGENTS:
        snap.agents.extend(rows)
    elif fr.kind == frames.APPLIED:
        snap.applied.extend(rows)
    else:
        snap.completions.extend(rows)


class Salvage(msgspec.Struct, kw_only=True):
    """What a repair could read of a damaged snapshot."""

    snap: Snapshot | None  # None: not even its META frame (what it covers) is readable
    damaged: list[tuple[int, int]] = []  # (offset, bytes) of each unreadable stretch
    expected: End | None = None  # from its END frame, when that is readable
    dropped_ids: list[str] = []  # ids read (unchecked) from damaged blocks


def salvage_snapshot(path: Path) -> Salvage | None:
    """Every block of ``path`` whose checksum holds (None when there is no file)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    buf = memoryview(data)
    out = Salvage(snap=None)
    snap = Snapshot()
    try:
        pos = _check_header(path, data)
    except Corrupt:
        pos = FILE_HEADER.size
        out.damaged.append((0, FILE_HEADER.size))
    for fr in frames.salvage(buf, pos, len(data)):
        if fr.problem:
            out.damaged.append((fr.pos, fr.nxt - fr.pos))
            if fr.payload:
                out.dropped_ids += _guess_ids(fr.payload)
            continue
        try:
            if fr.kind == frames.META:
                _put_meta(snap, _meta_decoder.decode(fr.payload))
                out.snap = snap
            elif fr.kind == frames.END:
                out.expected = _end_decoder.decode(fr.payload)
            else:
                _block(snap, fr)
        except frames.DECODE_ERRORS:
            out.damaged.append((fr.pos, fr.nxt - fr.pos))
    if out.snap is None and (snap.items or snap.agents or snap.completions):
        out.snap = snap  # blocks without what they cover: kept, replayed from nowhere
    return out


def _guess_ids(payload: memoryview) -> list[str]:
    """Ids in a block whose checksum failed, when it still decodes (unchecked)."""
    try:
        rows = msgspec.msgpack.decode(payload)
    except frames.DECODE_ERRORS:
        return []
    if not isinstance(rows, list):
        return []
    ids = []
    for row in rows:
        if isinstance(row, dict):
            rid = row.get("work_item_id") or row.get("agent_id")
            if isinstance(rid, str):
                ids.append(rid)
    return ids


# --- writing -------------------------------------------------------------------


def write_snapshot(path: Path, doc: Snapshot, after: Callable[[], None] | None = None) -> int:
    """Write ``doc`` atomically, keeping the snapshot it replaces as the previous
    generation, then run ``after`` (the legacy export); its size in bytes."""
    data = encode(doc)
    prev = path.with_name(SNAPSHOT_PREV_NAME)

    def keep_previous() -> None:
        if path.exists():
            link_over(path, prev)

    write_atomic(path, data, before_rename=keep_previous)
    if after is not None:
        after()
    return len(data)


def fork_writer(
    path: Path,
    make_doc: Callable[[], Snapshot],
    after: Callable[[], None] | None,
    close_fds: tuple[int, ...],
    items: int,
) -> Child:
    """Fork a child that builds the document from its copy of the state and writes it."""
    # The child sees a copy-on-write image of the state, so the loop is held only for
    # the fork; it leaves with os._exit and the parent reaps it with waitpid(WNOHANG).
    t0 = time.monotonic()
    r, w = os.pipe()
    # While the child lives, a full collection in this process would write the GC
    # header of every tracked object and copy their pages (measured at 1M items:
    # 16 ms -> 29 ms); frozen objects are never visited. Unfrozen when it is reaped.
    gc.freeze()
    try:
        pid = os.fork()
    except BaseException:
        gc.unfreeze()
        os.close(r)
        os.close(w)
        raise
    if pid == 0:  # the child: touch no socket, leave with os._exit
        os.close(r)
        _child_main(w, path, make_doc, after, close_fds, t0)
    os.close(w)
    return Child(pid, r, t0, items, blocked=time.monotonic() - t0)


def _child_main(
    w: int,
    path: Path,
    make_doc: Callable[[], Snapshot],
    after: Callable[[], None] | None,
    close_fds: tuple[int, ...],
    t0: float,
) -> None:
    code = 1
    try:
        die_with_parent()
        # Below the loop in the scheduler's eyes: on 2 cores the child's seconds of
        # encoding otherwise took a core from the daemon and its clients, and their
        # round trips stalled for tens of ms while it ran (nice 10: a tenth of the weight).
        with contextlib.suppress(OSError):
            os.nice(CHILD_NICE)
        for fd in close_fds:
            # e.g. the state-dir lock: an orphan must not keep a restarted daemon out.
            with contextlib.suppress(OSError):
                os.close(fd)
        out: dict[str, Any]
        try:
            size = write_snapshot(path, make_doc(), after)
            out = {"ok": True, "seconds": time.monotonic() - t0, "bytes": size}
            code = 0
        except OSError as e:
            out = {"ok": False, "reason": os_reason(e, path)}
        except Exception as e:  # a bug; the parent logs it
            out = {"ok": False, "reason": f"{type(e).__name__}: {e}"}
        os.write(w, json.dumps(out).encode())
    finally:
        os._exit(code)


_PR_SET_PDEATHSIG = 1
CHILD_NICE = 10


def _load_libc() -> Any:
    with contextlib.suppress(OSError):
        return ctypes.CDLL(None, use_errno=True)
    return None


# Loaded once in the parent: dlopen in a child forked from a threaded process (the AI
# worker, the metrics server, the PostgreSQL store's threads) could deadlock on a
# loader lock another thread held at fork.
_LIBC = _load_libc()


def die_with_parent() -> None:
    # If the daemon is SIGKILLed, its snapshot child goes too (Linux only; best effort).
    with contextlib.suppress(Exception):
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:
            os._exit(1)


class Child:
    """A forked snapshot writer, as the parent sees it."""

    def __init__(self, pid: int, r: int, t0: float, items: int, blocked: float = 0.0) -> None:
        self.pid, self.r, self.t0, self.items = pid, r, t0, items
        self.blocked = blocked  # seconds the loop was held to start it

    def poll(self, block: bool = False) -> SnapshotResult | None:
        """Its result once it has ended (None while it runs, unless ``block``)."""
        pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        if pid == 0:
            return None
        return self._result(status)

    def wait(self) -> SnapshotResult:
        """Its result, waiting for it to end."""
        result = self.poll(block=True)
        assert result is not None
        return result

    def _result(self, status: int) -> SnapshotResult:
        chunks = []
        while chunk := os.read(self.r, 65536):
            chunks.append(chunk)
        os.close(self.r)
        gc.unfreeze()
        took = time.monotonic() - self.t0
        try:
            out = json.loads(b"".join(chunks) or b"{}")
        except ValueError:
            out = {}
        if not out:
            out = {"ok": False, "reason": f"snapshot child ended with status {status}"}
        return SnapshotResult(
            ok=bool(out.get("ok")),
            reason=str(out.get("reason", "")),
            # the child's own figure: ours also counts the wait for our next tick
            seconds=float(out.get("seconds", took)),
            blocked=self.blocked,
            bytes=int(out.get("bytes", 0)),
            items=self.items,
        )
