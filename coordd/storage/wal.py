"""The write-ahead log ``journal.wal``: framing, reading, and the writer that appends
group-committed batches, makes them durable per the fsync policy and rotates the file."""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from coordd.core.model import Record
from coordd.kinds import FsyncPolicy
from coordd.storage import format1, frames
from coordd.storage.files import Corrupt, StoreError, fsync_dir, os_reason

# Format 2. A journal file is a 64-byte header, then one frame (storage/frames.py) per
# record; a drained batch is one write. The file is preallocated (posix_fallocate) to
# a capacity its header records, as PostgreSQL's WAL segments are: a file shorter than
# its header says was cut (refused), zeros after the last frame are the normal end, and
# a torn write shows as a damaged frame inside the preallocated space. When a batch
# does not fit, the file grows by another preallocated extent (double, at most
# GROW_MAX) and the header is rewritten: one extra sync per extent, never per batch.
# We grow one file rather than roll to numbered segments because the journal already
# starts afresh at every snapshot (a new generation holding only the tail): the file
# stays small, and the snapshot's (generation, offset) names a place in one file.
WAL_NAME = "journal.wal"
WAL_PREV_NAME = "journal.prev.wal"  # the generation before: the previous snapshot needs it
WAL_MAGIC = b"COORDWAL"
WAL_VERSION = 2
# magic, version, generation, capacity, base generation, base offset, header crc32
HEADER = struct.Struct(">8sIQQQQI")
HEADER_SIZE = 64  # frames start here (the rest of the header is zero, for later fields)
# The journal of generation g+1 begins with a copy of generation g's frames from
# ``base offset`` (the place the snapshot covers); generation 1 has base (0, 0).
INITIAL_CAPACITY = 4 * 1024 * 1024
GROW_MAX = 64 * 1024 * 1024
MAX_RECORD = frames.MAX_PAYLOAD
FSYNC_POLICIES = tuple(p.value for p in FsyncPolicy)

_encoder = msgspec.msgpack.Encoder()
_record_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(Record)


def header(generation: int, capacity: int, base: tuple[int, int] = (0, 0)) -> bytes:
    """The first HEADER_SIZE bytes of a journal of ``generation``."""
    head = HEADER.pack(WAL_MAGIC, WAL_VERSION, generation, capacity, base[0], base[1], 0)
    crc = zlib.crc32(head[: HEADER.size - 4])
    return head[: HEADER.size - 4] + struct.pack(">I", crc) + bytes(HEADER_SIZE - HEADER.size)


def frame(records: list[Record]) -> bytes:
    """The bytes of one batch: a frame per record."""
    return b"".join(frames.encode(frames.RECORD, _encoder.encode(rec)) for rec in records)


# --- reading -------------------------------------------------------------------


class WalScan(msgspec.Struct, kw_only=True):
    """What a read of a journal file found (format 1 or 2)."""

    path: str
    version: int
    generation: int
    capacity: int
    base: tuple[int, int]  # (generation, offset) its first frames were copied from
    header_size: int
    records: list[tuple[int, Record]]  # (offset of the frame, record)
    end: int  # offset after the last good frame
    size: int
    # A damaged last write with nothing valid after it: (offset, bytes). Start keeps a
    # copy of these bytes, then zeroes them; nothing in them was acknowledged.
    torn: tuple[int, int] | None = None

    def offsets(self) -> set[int]:
        return {off for off, _ in self.records} | {self.end}


def read_wal(path: Path) -> WalScan | None:
    """Every record of the journal in ``path``; None when there is no such file.
    Raises Corrupt on damage that is not a torn last write, and on a cut file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) < 12:
        raise Corrupt(path, len(data), f"the journal is {len(data)} bytes, shorter than its header")
    magic, version = data[:8], struct.unpack_from(">I", data, 8)[0]
    if magic != WAL_MAGIC:
        raise Corrupt(path, 0, "not a coordd journal (bad magic)")
    if version == 1 and len(data) >= format1.HEADER_V1.size:
        generation, records, end = format1.read_journal_v1(path, data)
        return WalScan(
            path=str(path),
            version=1,
            generation=generation,
            capacity=0,
            base=(0, 0),
            header_size=format1.HEADER_V1.size,
            records=records,
            end=end,
            size=len(data),
            torn=(end, len(data) - end) if end < len(data) else None,
        )
    if version != WAL_VERSION:
        raise Corrupt(path, 8, f"journal format {version}; this coordd reads 1 and {WAL_VERSION}")
    gen, cap, base = _read_header(path, data)
    scan = WalScan(
        path=str(path),
        version=2,
        generation=gen,
        capacity=cap,
        base=base,
        header_size=HEADER_SIZE,
        records=[],
        end=HEADER_SIZE,
        size=len(data),
    )
    _read_frames(path, memoryview(data), scan)
    return scan


def _read_header(path: Path, data: bytes) -> tuple[int, int, tuple[int, int]]:
    if len(data) < HEADER_SIZE:
        raise Corrupt(path, len(data), f"the journal is {len(data)} bytes, shorter than its header")
    _m, _v, gen, cap, base_gen, base_off, crc = HEADER.unpack_from(data, 0)
    if zlib.crc32(data[: HEADER.size - 4]) != crc:
        raise Corrupt(path, 0, "journal header checksum mismatch")
    if len(data) < cap:
        raise Corrupt(
            path,
            len(data),
            f"the journal was cut: it is {len(data)} bytes but was preallocated to {cap}"
            " (its header says so); records after the cut may be lost",
        )
    return gen, cap, (base_gen, base_off)


def _read_frames(path: Path, buf: memoryview, scan: WalScan) -> None:
    limit = len(buf)
    run, stop = frames.good_run(buf, HEADER_SIZE, limit)
    for pos, kind, payload in run:
        scan.records.append((pos, _record(path, pos, kind, payload)))
    scan.end = stop
    for fr in frames.scan(buf, stop, limit):
        if not fr.problem:  # good_run stops only at a frame that is not whole
            scan.records.append((fr.pos, _record(path, fr.pos, fr.kind, fr.payload)))
            scan.end = fr.nxt
            continue
        # A bad frame with a good one after it is damage to acknowledged records; with
        # nothing good after it, it is the last write, torn (never acknowledged).
        good = frames.next_good(buf, fr.pos, limit)
        if good is not None:
            raise Corrupt(
                path,
                fr.pos,
                f"{fr.problem}, and a whole record follows at byte offset {good}:"
                " this is damage, not a torn last write",
            )
        if not (fr.zero and frames.zeros(buf, fr.pos, limit)):
            scan.torn = (fr.pos, frames.last_nonzero(buf, fr.pos, limit) - fr.pos)
        return


def _record(path: Path, pos: int, kind: int, payload: memoryview) -> Record:
    if kind != frames.RECORD:
        raise Corrupt(path, pos, f"frame of kind {kind} in a journal")
    try:
        rec: Record = _record_decoder.decode(payload)
    except frames.DECODE_ERRORS as e:
        # Checksums match, so coordd wrote this: a newer release's record, not damage.
        raise Corrupt(path, pos, f"a record this coordd cannot read ({e})") from None
    return rec


# --- writing -------------------------------------------------------------------


class WalWriter:
    """The open ``journal.wal``: appends batches, syncs them per policy, grows and
    rotates the preallocated file."""

    def __init__(
        self,
        path: Path,
        fsync: str = FsyncPolicy.ALWAYS,
        observe_fsync: Callable[[float], None] | None = None,
        initial_capacity: int = INITIAL_CAPACITY,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}")
        self.path = path
        self.prev_path = path.with_name(WAL_PREV_NAME)
        self.fsync = fsync
        self.generation = 1
        self.offset = 0
        self.capacity = 0
        self.base = (0, 0)
        self.initial_capacity = max(initial_capacity, HEADER_SIZE + 4096)
        self._observe_fsync = observe_fsync
        self._fd: int | None = None
        self._dirty = False
        self._last_sync = 0.0
        # everysec: the once-a-second fdatasync runs on a thread (as Redis's does), not
        # on the loop, where it held every request of that wake-up for its duration.
        self._bg = BackgroundSync(observe_fsync) if fsync == FsyncPolicy.EVERYSEC else None

    def create(self, generation: int, base: tuple[int, int] = (0, 0), tail: bytes = b"") -> None:
        """Start a journal of ``generation`` holding ``tail`` (whole frames copied from
        the generation before, from ``base``), preallocated, and open it. Atomic: the
        file appears under its name whole, or not at all."""
        capacity = _rounded(max(self.capacity, self.initial_capacity, HEADER_SIZE + len(tail)))
        tmp = self.path.with_name(f"{self.path.name}.tmp.{os.getpid()}")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            capacity = _preallocate_down(fd, capacity, _rounded(HEADER_SIZE + len(tail) + 1))
            _pwrite_all(fd, header(generation, capacity, base) + tail, 0)
            os.fsync(fd)
            os.rename(tmp, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_dir(self.path.parent)
        self._close_fd()
        self._fd = fd
        self.generation, self.capacity, self.base = generation, capacity, base
        self.offset = HEADER_SIZE + len(tail)

    def open(self, scan: WalScan) -> None:
        """Open the existing format-2 journal ``scan`` read for appending after its last
        good frame (a torn tail must have been zeroed first)."""
        # Read-write: a rotation preads the tail written while the snapshot was made.
        fd = os.open(self.path, os.O_RDWR)
        self._close_fd()
        self._fd = fd
        self.generation, self.capacity, self.base = scan.generation, scan.capacity, scan.base
        self.offset = scan.end

    def append(self, records: list[Record]) -> None:
        """Append one batch (one write); with ``always`` it is on disk when this returns."""
        if not records:
            return
        fd = self._require_fd()
        data = frame(records)
        try:
            if self.offset + len(data) > self.capacity:
                self._grow(fd, self.offset + len(data))
            _pwrite_all(fd, data, self.offset)
        except OSError as e:
            # Never leave half a batch in the file: later appends would turn a torn
            # write into damage. The batch was not acknowledged; the caller must stop
            # rather than serve state the disk does not hold.
            with contextlib.suppress(OSError):
                os.pwrite(fd, bytes(len(data)), self.offset)
            raise StoreError(
                f"cannot append to {self.path} at byte offset {self.offset}:"
                f" {os_reason(e, self.path)}; coordd stops so that nothing"
                " unwritten is acknowledged"
            ) from e
        self.offset += len(data)
        self._dirty = True
        if self.fsync == FsyncPolicy.ALWAYS:
            self.sync()

    def _grow(self, fd: int, need: int) -> None:
        # The new extent is allocated and its size durable before the header says so:
        # a crash in between leaves a file longer than its header, which is fine.
        want = _rounded(max(need, self.capacity + min(self.capacity, GROW_MAX)))
        capacity = _preallocate_down(fd, want, _rounded(need), self.capacity)
        os.fsync(fd)
        _pwrite_all(fd, header(self.generation, capacity, self.base), 0)
        self.capacity = capacity
        self._dirty = True

    def _require_fd(self) -> int:
        if self._fd is None:
            raise StoreError("the journal is not open (load() first)")
        return self._fd

    def sync(self) -> None:
        """Make every appended batch durable now (one fdatasync, timed for the metrics)."""
        self._bg_idle()
        if self._fd is not None and self._dirty:
            t0 = time.perf_counter()
            try:
                os.fdatasync(self._fd)
            except OSError as e:
                # After a failed fsync the kernel may have dropped the pages: what was
                # written cannot be trusted to be on disk, so stop (PostgreSQL does too).
                raise StoreError(
                    f"cannot fsync {self.path}: {os_reason(e, self.path)};"
                    " coordd stops so that nothing unwritten is acknowledged"
                ) from e
            if self._observe_fsync is not None:
                self._observe_fsync(time.perf_counter() - t0)
            self._dirty = False
        self._last_sync = time.monotonic()

    def tick(self) -> None:
        """The ``everysec`` fsync, on every wake-up of the loop: handed to the background
        thread (a sync still running is not doubled; its failure stops coordd here)."""
        bg = self._bg
        if bg is None:
            return
        self._raise_bg_error()
        due = self._dirty and time.monotonic() - self._last_sync >= 1.0
        # What is written before the hand-over is covered by that sync; a later append
        # sets _dirty again for the next second.
        if due and self._fd is not None and bg.start(self._fd):
            self._dirty = False
            self._last_sync = time.monotonic()

    def _bg_idle(self) -> None:
        """Wait for a background sync to end (before a sync, a rotation, a close)."""
        if self._bg is not None:
            self._bg.idle()
            self._raise_bg_error()

    def _raise_bg_error(self) -> None:
        if self._bg is not None and self._bg.error is not None:
            e = self._bg.error
            raise StoreError(
                f"cannot fsync {self.path}: {os_reason(e, self.path)};"
                " coordd stops so that nothing unwritten is acknowledged"
            ) from e

    def sync_if_dirty(self) -> None:
        """Sync whatever the policy, before a snapshot: a snapshot must never hold a
        transition that the WAL could still lose on power failure (everysec / never)."""
        if self._fd is not None and self._dirty:
            self.sync()

    def close(self) -> None:
        """Flush what the policy promised, then close."""
        if self._bg is not None:
            self._bg.idle()
            self._bg.close()
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if self._dirty and self.fsync != FsyncPolicy.NEVER:
                os.fdatasync(self._fd)
        self._close_fd()

    def _close_fd(self) -> None:
        if self._bg is not None:
            self._bg.idle()  # the thread must not sync a closed (or reused) fd number
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def rotate(self, generation: int, offset: int) -> None:
        """Start the next generation holding only what follows ``offset`` (appended
        while the snapshot was written); this one is kept as ``journal.prev.wal``,
        which the previous snapshot needs until the next snapshot is durable."""
        if self._fd is None or generation != self.generation:
            return
        tail = os.pread(self._fd, self.offset - offset, offset) if self.offset > offset else b""
        # Synced before it becomes the previous generation (everysec/never leave it dirty).
        os.fdatasync(self._fd)
        link_over(self.path, self.prev_path)
        self.create(generation + 1, (generation, offset), tail)


class BackgroundSync:
    """The ``everysec`` fdatasync on a thread of its own, as Redis's bio thread does it:
    the loop hands the fd over and goes on serving; a sync still running when the next
    second comes is not doubled. A failure is kept and raised on the loop by ``check``.
    Whoever closes the fd waits for ``idle`` first (a closed number may be reused)."""

    def __init__(self, observe: Callable[[float], None] | None) -> None:
        self._observe = observe
        self._cond = threading.Condition()
        self._fd: int | None = None  # handed over, not yet synced
        self._busy = False
        self._stop = False
        self.error: OSError | None = None
        self._thread: threading.Thread | None = None

    def start(self, fd: int) -> bool:
        """Sync ``fd`` in the background; False if one is still running."""
        with self._cond:
            if self._busy:
                return False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="coordd-fsync", daemon=True)
                self._thread.start()
            self._fd, self._busy = fd, True
            self._cond.notify_all()
        return True

    def idle(self) -> None:
        """Wait until no sync is running."""
        with self._cond:
            while self._busy:
                self._cond.wait()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._fd is None and not self._stop:
                    self._cond.wait()
                if self._fd is None:
                    return
                fd, self._fd = self._fd, None
            t0 = time.perf_counter()
            try:
                os.fdatasync(fd)
            except OSError as e:
                self.error = e
            else:
                if self._observe is not None:
                    self._observe(time.perf_counter() - t0)
            with self._cond:
                self._busy = False
                self._cond.notify_all()


def link_over(src: Path, dst: Path) -> None:
    """Make ``dst`` a second name of ``src`` (replacing ``dst`` atomically)."""
    tmp = dst.with_name(f"{dst.name}.tmp.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.link(src, tmp)
    os.rename(tmp, dst)


def _rounded(n: int) -> int:
    return -(-n // 4096) * 4096


def _preallocate_down(fd: int, want: int, least: int, have: int = 0) -> int:
    """Preallocate the file to ``want`` bytes, or less (halving, not below ``least``)
    on a nearly full disk: a small journal beats no journal. The size reached."""
    while True:
        try:
            _preallocate(fd, have, want - have)
            return want
        except OSError as e:
            if e.errno != errno.ENOSPC or want <= least:
                raise
            want = max(least, _rounded((have + want) // 2))


def _preallocate(fd: int, offset: int, length: int) -> None:
    """Reserve blocks now, so later appends and fdatasync change no file metadata."""
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        _pwrite_all(fd, bytes(length), offset)  # a filesystem without fallocate


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
