"""The write-ahead log ``journal.wal``: framing, reading, and the writer that appends
group-committed batches, makes them durable per the fsync policy and rotates the file."""

from __future__ import annotations

import contextlib
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from coordd.core.model import Record
from coordd.kinds import FsyncPolicy
from coordd.storage.files import Corrupt, StoreError, os_reason, write_all, write_atomic

# Layout: a header (magic, format version, generation), then one frame per record,
# ``[u32 length][u32 crc32][msgpack Record]``; a drained batch is one write.
WAL_NAME = "journal.wal"
WAL_MAGIC = b"COORDWAL"
WAL_VERSION = 1
# magic, format version, generation
HEADER = struct.Struct(">8sIQ")
# payload length, crc32 of the payload
FRAME = struct.Struct(">II")
# A frame longer than this is garbage, not a record (a record is one item or agent).
MAX_RECORD = 64 * 1024 * 1024
FSYNC_POLICIES = tuple(p.value for p in FsyncPolicy)

_encoder = msgspec.msgpack.Encoder()
_record_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(Record)


def header(generation: int) -> bytes:
    """The first bytes of a WAL of ``generation``."""
    return HEADER.pack(WAL_MAGIC, WAL_VERSION, generation)


def frame(records: list[Record]) -> bytes:
    """The bytes of one batch: a frame per record."""
    out = bytearray()
    for rec in records:
        payload = _encoder.encode(rec)
        out += FRAME.pack(len(payload), zlib.crc32(payload))
        out += payload
    return bytes(out)


# --- reading -------------------------------------------------------------------


class WalScan(msgspec.Struct, kw_only=True):
    """What a read of ``journal.wal`` found."""

    generation: int
    records: list[tuple[int, Record]]  # (offset of the frame, record)
    end: int  # offset after the last good frame
    size: int
    torn: bool  # bytes after ``end`` that are an incomplete last frame


def read_wal(path: Path) -> WalScan | None:
    """Every good frame; None when there is no WAL (or only a torn header).
    A torn last frame is reported as ``torn``; a bad frame before more data raises Corrupt."""
    # A bad frame that reaches the end of the file is a torn write (the process or
    # machine died mid-append): nothing in it was acknowledged, so it can be dropped.
    # A bad frame followed by more data is damage to acknowledged records.
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) < HEADER.size:
        return None  # died while creating it: nothing was ever acknowledged from it
    magic, version, generation = HEADER.unpack_from(data, 0)
    if magic != WAL_MAGIC:
        raise Corrupt(path, 0, "not a coordd journal (bad magic)")
    if version != WAL_VERSION:
        raise Corrupt(path, 8, f"journal format {version}; this coordd reads {WAL_VERSION}")
    records: list[tuple[int, Record]] = []
    pos = HEADER.size
    while pos < len(data):
        problem, rec, nxt = read_frame(data, pos)
        if problem:
            if _is_tail(data, nxt):
                return WalScan(
                    generation=generation, records=records, end=pos, size=len(data), torn=True
                )
            raise Corrupt(path, pos, problem)
        assert rec is not None
        records.append((pos, rec))
        pos = nxt
    return WalScan(generation=generation, records=records, end=pos, size=len(data), torn=False)


def read_frame(data: bytes, pos: int) -> tuple[str, Record | None, int]:
    """(problem, record, next offset). ``problem`` is "" for a good frame."""
    if pos + FRAME.size > len(data):
        return "incomplete frame header", None, len(data)
    length, crc = FRAME.unpack_from(data, pos)
    start, nxt = pos + FRAME.size, pos + FRAME.size + length
    if length == 0 or length > MAX_RECORD:
        return f"impossible record length {length}", None, len(data)
    if nxt > len(data):
        return "record runs past the end of the file", None, len(data)
    payload = data[start:nxt]
    if zlib.crc32(payload) != crc:
        return "checksum mismatch", None, nxt
    try:
        return "", _record_decoder.decode(payload), nxt
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        return f"undecodable record ({e})", None, nxt


def good_frames(data: bytes) -> Iterator[tuple[int, Record]]:
    """(offset, record) of every good frame before the first bad one (what fsck salvages)."""
    pos = HEADER.size
    while pos < len(data):
        problem, rec, nxt = read_frame(data, pos)
        if problem or rec is None:
            return
        yield pos, rec
        pos = nxt


def _is_tail(data: bytes, nxt: int) -> bool:
    """A bad frame is a torn tail if nothing but zeros (or nothing) follows it."""
    return not data[nxt:].strip(b"\0")


# --- writing -------------------------------------------------------------------


class WalWriter:
    """The open ``journal.wal``: appends batches, syncs them per policy, rotates."""

    def __init__(
        self,
        path: Path,
        fsync: str = FsyncPolicy.ALWAYS,
        observe_fsync: Callable[[float], None] | None = None,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}")
        self.path = path
        self.fsync = fsync
        self.generation = 1
        self.offset = 0
        self._observe_fsync = observe_fsync
        self._fd: int | None = None
        self._dirty = False
        self._last_sync = 0.0

    def create(self, generation: int) -> None:
        """Start a new, empty WAL of ``generation`` and open it."""
        head = header(generation)
        write_atomic(self.path, head)
        self.generation = generation
        self.open(len(head))

    def open(self, end: int) -> None:
        """Open the existing WAL for appending after byte ``end`` (cutting what follows)."""
        # Read-write: starting afresh after a background snapshot preads the tail
        # written meanwhile (write-only, that pread failed with EBADF and the journal
        # was never rotated: it grew with every record and a restart replayed it all).
        fd = os.open(self.path, os.O_RDWR)
        # Cut a torn tail so new frames follow the last good one.
        os.ftruncate(fd, end)
        os.fsync(fd)
        self._fd = fd
        self.offset = end

    def append(self, records: list[Record]) -> None:
        """Append one batch; with ``always`` it is on disk when this returns."""
        if not records:
            return
        fd = self._require_fd()
        data = frame(records)
        try:
            os.lseek(fd, self.offset, os.SEEK_SET)
            write_all(fd, data)
        except OSError as e:
            # Never leave half a batch in the middle of the file: later appends
            # would turn a torn write into corruption. The batch was not acknowledged;
            # the caller must stop rather than serve state the disk does not hold.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self.offset)
            raise StoreError(
                f"cannot append to {self.path} at byte offset {self.offset}:"
                f" {os_reason(e, self.path)}; coordd stops so that nothing"
                " unwritten is acknowledged"
            ) from e
        self.offset += len(data)
        self._dirty = True
        if self.fsync == FsyncPolicy.ALWAYS:
            self.sync()

    def _require_fd(self) -> int:
        if self._fd is None:
            raise StoreError("the journal is not open (load() first)")
        return self._fd

    def sync(self) -> None:
        """Make every appended batch durable now (one fdatasync, timed for the metrics)."""
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
        """The ``everysec`` fsync, on every wake-up of the loop."""
        if (
            self.fsync == FsyncPolicy.EVERYSEC
            and self._dirty
            and time.monotonic() - self._last_sync >= 1.0
        ):
            self.sync()

    def sync_if_dirty(self) -> None:
        """Sync whatever the policy, before a snapshot: a snapshot must never hold a
        transition that the WAL could still lose on power failure (everysec / never)."""
        if self._fd is not None and self._dirty:
            self.sync()

    def close(self) -> None:
        """Flush what the policy promised, then close."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if self._dirty and self.fsync != FsyncPolicy.NEVER:
                os.fdatasync(self._fd)
        os.close(self._fd)
        self._fd = None

    def rotate(self, generation: int, offset: int) -> None:
        """Replace the WAL by one of the next generation holding only what follows
        ``offset`` (what was appended while the snapshot was being written)."""
        if self._fd is None or generation != self.generation:
            return
        tail = os.pread(self._fd, self.offset - offset, offset) if self.offset > offset else b""
        head = header(generation + 1)
        write_atomic(self.path, head + tail)
        old = self._fd
        self._fd = None
        os.close(old)
        self.generation = generation + 1
        self.open(len(head) + len(tail))
