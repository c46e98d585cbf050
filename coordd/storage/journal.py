"""Files on disk: the write-ahead journal (WAL), atomic snapshots, replay, fsck.

Layout of ``state_dir``:
- ``snapshot.json``: the whole state as one versioned JSON document, replaced
  atomically (tmp file, fsync, rename, fsync of the directory);
- ``journal.wal``: a header (magic, format version, generation) then frames
  ``[u32 length][u32 crc32][msgpack Record]`` appended per drained batch.

How a snapshot and the WAL stay consistent without ever losing a record: the
snapshot names the WAL generation and byte offset it covers (``wal_generation``,
``wal_offset``). Only after the snapshot is durable is the WAL "started afresh":
the tail written since the snapshot began is copied into a new file of the next
generation, which atomically replaces ``journal.wal``. A crash at any point
leaves either (snapshot g@O, WAL g) - replay from O - or (snapshot g@O, WAL g+1)
- replay all of it. Any other pairing means files were lost or mixed up: refuse.

Snapshots are written by a forked child (as Redis BGSAVE does): the child sees a
copy-on-write image of the state, serializes, writes, fsyncs and leaves with
``os._exit``; the parent polls for it with ``waitpid(WNOHANG)`` on its tick.

This module holds no business rules: it stores and replays physical records.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import gc
import json
import mmap
import os
import signal
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import structlog

from coordd.core.state import Agent, Completion, Record, State, WorkItem

log = structlog.get_logger("coordd.storage.journal")

SNAPSHOT_NAME = "snapshot.json"
WAL_NAME = "journal.wal"
SNAPSHOT_FORMAT = "coordd-snapshot"
SNAPSHOT_VERSION = 1
WAL_MAGIC = b"COORDWAL"
WAL_VERSION = 1
# magic, format version, generation
_HEADER = struct.Struct(">8sIQ")
# payload length, crc32 of the payload
_FRAME = struct.Struct(">II")
# A frame longer than this is garbage, not a record (a record is one item or agent).
MAX_RECORD = 64 * 1024 * 1024
FSYNC_POLICIES = ("always", "everysec", "never")

FSCK_HINT = "run `coordd fsck` to inspect and `coordd fsck --repair` to repair (it keeps a copy)"


class JournalError(Exception):
    """The journal cannot be read or written; the message names file, offset and way out."""


class Corrupt(JournalError):
    def __init__(self, path: Path, offset: int, what: str) -> None:
        super().__init__(f"{path} is corrupt at byte offset {offset}: {what}; {FSCK_HINT}")
        self.path = path
        self.offset = offset
        self.what = what


class Snapshot(msgspec.Struct, kw_only=True):
    """The document in ``snapshot.json``."""

    format: str = SNAPSHOT_FORMAT
    version: int = SNAPSHOT_VERSION
    created_at: float = 0.0
    wal_generation: int = 0
    wal_offset: int = 0
    lease_seq: int = 0
    items: list[WorkItem] = []
    agents: list[Agent] = []
    completions: list[Completion] = []
    team_velocity: dict[str, int] = {}


class SnapshotResult(msgspec.Struct, kw_only=True):
    ok: bool
    reason: str = ""
    seconds: float = 0.0  # wall time from start to durable
    blocked: float = 0.0  # how long the loop was held (fork, or all of it if synchronous)
    bytes: int = 0
    items: int = 0


class LoadReport(msgspec.Struct, kw_only=True):
    snapshot: bool = False
    records: int = 0
    torn_bytes: int = 0
    generation: int = 1


_encoder = msgspec.msgpack.Encoder()
_record_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(Record)
_snapshot_decoder = msgspec.json.Decoder(Snapshot)


# --- small file helpers ------------------------------------------------------


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: tmp + fsync + rename + fsync dir.

    The tmp name carries our pid so an orphaned writer can never share it.
    On failure the previous file is untouched and the tmp file removed.
    """
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def lock_state_dir(state_dir: str | Path) -> int:
    """Take the state directory's lock (one coordd, or one offline tool, at a time).

    Returns the locked fd; raises JournalError naming the pid that holds it.
    """
    # ZeroMQ's ipc bind replaces an existing socket file, so a second daemon on the
    # same directory would silently steal the first one's clients: refuse it here.
    path = Path(state_dir) / "coordd.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise JournalError(
            f"another coordd (pid {other}) is running on {state_dir};"
            " stop it or use another COORDINATION_DIR"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def frame(records: list[Record]) -> bytes:
    """The bytes of one batch: a frame per record."""
    out = bytearray()
    for rec in records:
        payload = _encoder.encode(rec)
        out += _FRAME.pack(len(payload), zlib.crc32(payload))
        out += payload
    return bytes(out)


def corrupt_copy_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")


# --- reading -------------------------------------------------------------------


class WalScan(msgspec.Struct, kw_only=True):
    """What a read of ``journal.wal`` found."""

    generation: int
    records: list[tuple[int, Record]]  # (offset of the frame, record)
    end: int  # offset after the last good frame
    size: int
    torn: bool  # bytes after ``end`` that are an incomplete last frame


def read_wal(path: Path) -> WalScan | None:
    """Read every good frame. None when there is no WAL (or only a torn header).

    A bad frame that reaches the end of the file is a torn write (the process or
    machine died mid-append) and is reported as ``torn``; a bad frame followed by
    more data is corruption and raises ``Corrupt``.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) < _HEADER.size:
        return None  # died while creating it: nothing was ever acknowledged from it
    magic, version, generation = _HEADER.unpack_from(data, 0)
    if magic != WAL_MAGIC:
        raise Corrupt(path, 0, "not a coordd journal (bad magic)")
    if version != WAL_VERSION:
        raise Corrupt(path, 8, f"journal format {version}; this coordd reads {WAL_VERSION}")
    records: list[tuple[int, Record]] = []
    pos = _HEADER.size
    while pos < len(data):
        problem, rec, nxt = _read_frame(data, pos)
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


def _read_frame(data: bytes, pos: int) -> tuple[str, Record | None, int]:
    """(problem, record, next offset). ``problem`` is "" for a good frame."""
    if pos + _FRAME.size > len(data):
        return "incomplete frame header", None, len(data)
    length, crc = _FRAME.unpack_from(data, pos)
    start, nxt = pos + _FRAME.size, pos + _FRAME.size + length
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


def _is_tail(data: bytes, nxt: int) -> bool:
    """A bad frame is a torn tail if nothing but zeros (or nothing) follows it."""
    return not data[nxt:].strip(b"\0")


def read_snapshot(path: Path) -> Snapshot | None:
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, after the decode
    except FileNotFoundError:
        return None
    try:
        snap = _decode_snapshot(f)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise Corrupt(path, _error_offset(str(e)), f"not a valid snapshot ({e})") from None
    if snap.format != SNAPSHOT_FORMAT:
        raise Corrupt(path, 0, f"format is {snap.format!r}, not {SNAPSHOT_FORMAT!r}")
    if snap.version > SNAPSHOT_VERSION:
        raise Corrupt(path, 0, f"snapshot version {snap.version} is newer than this coordd's")
    return snap


def _decode_snapshot(f: Any) -> Snapshot:
    """Decode straight from the page cache (mmap): reading the file into bytes first
    was a 0.3 s copy of a 600 MB document at a million items, and twice its memory."""
    with f:
        if os.fstat(f.fileno()).st_size == 0:
            return _snapshot_decoder.decode(b"")  # raises; mmap refuses an empty file
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            # Every decoded str is a copy: nothing refers to the map once this returns.
            return _snapshot_decoder.decode(view)


def _error_offset(message: str) -> int:
    # msgspec says "... (byte 1234)" for malformed JSON.
    marker = "(byte "
    at = message.rfind(marker)
    if at < 0:
        return 0
    digits = message[at + len(marker) :].split(")")[0]
    return int(digits) if digits.isdigit() else 0


def restore(state: State, snap: Snapshot) -> None:
    """Put a snapshot's content into an empty ``state``."""
    state.items = {i.work_item_id: i for i in snap.items}
    state.agents = {a.agent_id: a for a in snap.agents}
    state.completions = list(snap.completions)
    state.team_velocity = dict(snap.team_velocity)
    state.lease_seq = snap.lease_seq


def records_after(snap: Snapshot | None, scan: WalScan, path: Path) -> Iterator[Record]:
    """The WAL records the snapshot does not hold yet (see the module docstring)."""
    if snap is None:
        if scan.generation != 1:
            raise Corrupt(
                path,
                0,
                f"journal generation {scan.generation} continues a snapshot, but"
                f" {path.with_name(SNAPSHOT_NAME)} is missing",
            )
        start = 0
    elif scan.generation == snap.wal_generation:
        start = snap.wal_offset
    elif scan.generation == snap.wal_generation + 1:
        start = 0
    else:
        raise Corrupt(
            path,
            0,
            f"journal generation {scan.generation} does not follow the snapshot"
            f" (which covers generation {snap.wal_generation})",
        )
    return (rec for off, rec in scan.records if off >= start)


# --- the journal ---------------------------------------------------------------


class Journal:
    """The WAL and the snapshots of one ``state_dir``. Owned by the event loop."""

    def __init__(
        self,
        state_dir: str | Path,
        fsync: str = "always",
        observe_fsync: Callable[[float], None] | None = None,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}")
        self.dir = Path(state_dir)
        self.snapshot_path = self.dir / SNAPSHOT_NAME
        self.wal_path = self.dir / WAL_NAME
        self.fsync = fsync
        self.generation = 1
        self._fd: int | None = None
        self._offset = 0
        self._dirty = False
        self._last_sync = 0.0
        self._child: _Child | None = None
        self.loaded_snapshot = False
        # Told the seconds of each fsync of the log (the daemon's metrics); storage
        # itself imports no metrics.
        self.observe_fsync = observe_fsync

    # --- start ---------------------------------------------------------------------

    def load(self, state: State) -> LoadReport:
        """Snapshot, then the WAL after it; open the WAL for appending. Raises Corrupt."""
        snap = read_snapshot(self.snapshot_path)
        scan = read_wal(self.wal_path)
        report = LoadReport(snapshot=snap is not None)
        self.loaded_snapshot = snap is not None
        if snap is not None:
            restore(state, snap)
        if scan is None:
            self.generation = snap.wal_generation + 1 if snap is not None else 1
            self._create_wal(self.generation)
        else:
            for rec in records_after(snap, scan, self.wal_path):
                state.apply_record(rec)
                report.records += 1
            if scan.torn:
                report.torn_bytes = scan.size - scan.end
                log.warning(
                    "journal_torn_tail_dropped",
                    path=str(self.wal_path),
                    offset=scan.end,
                    bytes=report.torn_bytes,
                )
            self.generation = scan.generation
            self._open_wal(scan.end)
        state.rebuild_indexes()
        report.generation = self.generation
        return report

    def _create_wal(self, generation: int) -> None:
        header = _HEADER.pack(WAL_MAGIC, WAL_VERSION, generation)
        write_atomic(self.wal_path, header)
        self._open_wal(len(header))

    def _open_wal(self, end: int) -> None:
        # Read-write: starting afresh after a background snapshot preads the tail
        # written meanwhile (write-only, that pread failed with EBADF and the journal
        # was never rotated: it grew with every record and a restart replayed it all).
        fd = os.open(self.wal_path, os.O_RDWR)
        # Cut a torn tail so new frames follow the last good one.
        os.ftruncate(fd, end)
        os.fsync(fd)
        self._fd = fd
        self._offset = end

    # --- appending -----------------------------------------------------------------

    def write(self, records: list[Record]) -> None:
        """Append one batch; with ``always`` it is on disk when this returns."""
        if not records:
            return
        fd = self._require_fd()
        data = frame(records)
        try:
            os.lseek(fd, self._offset, os.SEEK_SET)
            _write_all(fd, data)
        except OSError as e:
            # Never leave half a batch in the middle of the file: later appends
            # would turn a torn write into corruption. The batch was not acknowledged;
            # the caller must stop rather than serve state the disk does not hold.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._offset)
            raise JournalError(
                f"cannot append to {self.wal_path} at byte offset {self._offset}:"
                f" {_os_reason(e, self.wal_path)}; coordd stops so that nothing"
                " unwritten is acknowledged"
            ) from e
        self._offset += len(data)
        self._dirty = True
        if self.fsync == "always":
            self.sync()

    def _require_fd(self) -> int:
        if self._fd is None:
            raise JournalError("the journal is not open (load() first)")
        return self._fd

    def sync(self) -> None:
        if self._fd is not None and self._dirty:
            started = time.perf_counter()
            try:
                os.fdatasync(self._fd)
            except OSError as e:
                # After a failed fsync the kernel may have dropped the pages: what was
                # written cannot be trusted to be on disk, so stop (PostgreSQL does too).
                raise JournalError(
                    f"cannot fsync {self.wal_path}: {_os_reason(e, self.wal_path)};"
                    " coordd stops so that nothing unwritten is acknowledged"
                ) from e
            if self.observe_fsync is not None:
                self.observe_fsync(time.perf_counter() - started)
            self._dirty = False
        self._last_sync = time.monotonic()

    def tick(self) -> None:
        """Called on every wake-up of the loop: the ``everysec`` fsync."""
        if self.fsync == "everysec" and self._dirty and time.monotonic() - self._last_sync >= 1.0:
            self.sync()

    def close(self) -> None:
        if self._child is not None:
            self._child.wait()
            self._child = None
            gc.unfreeze()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                if self._dirty and self.fsync != "never":
                    os.fdatasync(self._fd)
            os.close(self._fd)
            self._fd = None

    # --- snapshots -----------------------------------------------------------------

    @property
    def snapshot_running(self) -> bool:
        return self._child is not None

    def _document(self, state: State, now: float) -> Snapshot:
        return document(state, now, self.generation, self._offset)

    def snapshot(
        self, state: State, now: float, after: Callable[[], None] | None = None
    ) -> SnapshotResult:
        """Write a snapshot in this process (start-up, shutdown, import, fsck)."""
        if self._child is not None:
            self._child.wait()
            self._child = None
            gc.unfreeze()
        self._sync_before_snapshot()
        t0 = time.monotonic()
        doc = self._document(state, now)
        try:
            size = _write_snapshot(self.snapshot_path, doc, after)
        except OSError as e:
            return SnapshotResult(ok=False, reason=_os_reason(e, self.snapshot_path))
        self._rotate(doc.wal_generation, doc.wal_offset)
        took = time.monotonic() - t0
        return SnapshotResult(ok=True, seconds=took, blocked=took, bytes=size, items=len(doc.items))

    def snapshot_background(
        self,
        state: State,
        now: float,
        after: Callable[[], None] | None = None,
        close_in_child: tuple[int, ...] = (),
    ) -> bool:
        """Fork a child that writes the snapshot. False if one is already running."""
        if self._child is not None:
            return False
        self._sync_before_snapshot()
        t0 = time.monotonic()
        generation, offset = self.generation, self._offset
        r, w = os.pipe()
        # While the child lives, a full collection in this process would write the GC
        # header of every tracked object and copy their pages (measured at 1M items:
        # 16 ms -> 29 ms); frozen objects are never visited. Unfrozen when it ends.
        gc.freeze()
        try:
            pid = os.fork()
        except BaseException:
            gc.unfreeze()
            raise
        if pid == 0:  # the child: touch no socket, leave with os._exit
            os.close(r)
            doc = self._document(state, now)
            _child_main(w, self.snapshot_path, doc, after, close_in_child, t0)
        os.close(w)
        self._child = _Child(pid, r, t0, generation, offset, len(state.items))
        self._child.blocked = time.monotonic() - t0
        return True

    def poll_snapshot(self) -> SnapshotResult | None:
        """On each tick: the result of the background snapshot once it is done."""
        child = self._child
        if child is None:
            return None
        result = child.poll()
        if result is None:
            return None
        self._child = None
        gc.unfreeze()
        if result.ok:
            self._rotate(child.generation, child.offset)
        return result

    def _rotate(self, generation: int, offset: int) -> None:
        try:
            self._start_afresh(generation, offset)
        except OSError as e:
            # The snapshot is good and the old WAL still replays from its offset;
            # the next snapshot tries again.
            log.warning("journal_rotate_failed", reason=_os_reason(e, self.wal_path))

    def _sync_before_snapshot(self) -> None:
        # The snapshot must never hold a transition that the WAL could still lose
        # on power failure while the snapshot survives (everysec / never).
        if self._fd is not None and self._dirty:
            self.sync()

    def _start_afresh(self, generation: int, offset: int) -> None:
        """Replace the WAL by one of the next generation holding only what follows
        ``offset`` (what was appended while the snapshot was being written)."""
        if self._fd is None or generation != self.generation:
            return
        tail = os.pread(self._fd, self._offset - offset, offset) if self._offset > offset else b""
        header = _HEADER.pack(WAL_MAGIC, WAL_VERSION, generation + 1)
        write_atomic(self.wal_path, header + tail)
        old = self._fd
        self._fd = None
        os.close(old)
        self.generation = generation + 1
        self._open_wal(len(header) + len(tail))


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
    )


def _os_reason(e: OSError, path: Path) -> str:
    name = getattr(e, "filename", None) or path
    return f"{e.strerror or e} ({_errno_name(e)}) on {name}"


def _errno_name(e: OSError) -> str:
    import errno

    return errno.errorcode.get(e.errno or 0, str(e.errno))


def _write_snapshot(path: Path, doc: Snapshot, after: Callable[[], None] | None) -> int:
    data = msgspec.json.encode(doc)
    write_atomic(path, data)
    if after is not None:
        after()
    return len(data)


def _child_main(
    w: int,
    path: Path,
    doc: Snapshot,
    after: Callable[[], None] | None,
    close_fds: tuple[int, ...],
    t0: float,
) -> None:
    code = 1
    try:
        _die_with_parent()
        for fd in close_fds:
            # e.g. the state-dir lock: an orphan must not keep a restarted daemon out.
            with contextlib.suppress(OSError):
                os.close(fd)
        out: dict[str, Any]
        try:
            size = _write_snapshot(path, doc, after)
            out = {"ok": True, "seconds": time.monotonic() - t0, "bytes": size}
            code = 0
        except OSError as e:
            out = {"ok": False, "reason": _os_reason(e, path)}
        except Exception as e:  # a bug; the parent logs it
            out = {"ok": False, "reason": f"{type(e).__name__}: {e}"}
        os.write(w, json.dumps(out).encode())
    finally:
        os._exit(code)


_PR_SET_PDEATHSIG = 1


def _load_libc() -> Any:
    with contextlib.suppress(OSError):
        return ctypes.CDLL(None, use_errno=True)
    return None


# Loaded once in the parent: dlopen in a child forked from a threaded process (the AI
# worker, the metrics server) could deadlock on a loader lock another thread held at fork.
_LIBC = _load_libc()


def _die_with_parent() -> None:
    # If the daemon is SIGKILLed, its snapshot child goes too (Linux only; best effort).
    with contextlib.suppress(Exception):
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:
            os._exit(1)


class _Child:
    def __init__(
        self, pid: int, r: int, t0: float, generation: int, offset: int, items: int
    ) -> None:
        self.pid, self.r, self.t0 = pid, r, t0
        self.generation, self.offset, self.items = generation, offset, items
        self.blocked = 0.0

    def poll(self, block: bool = False) -> SnapshotResult | None:
        pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        if pid == 0:
            return None
        return self._result(status)

    def wait(self) -> SnapshotResult:
        result = self.poll(block=True)
        assert result is not None
        return result

    def _result(self, status: int) -> SnapshotResult:
        chunks = []
        while chunk := os.read(self.r, 65536):
            chunks.append(chunk)
        os.close(self.r)
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


# --- fsck ------------------------------------------------------------------------


class FsckReport(msgspec.Struct, kw_only=True):
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
    if isinstance(snap, Snapshot):
        restore(state, snap)
    if wal_corrupt:
        _keep_copy(report, wal_path, move=False)
    good = _salvage_wal(wal_path, snap if isinstance(snap, Snapshot) else None)
    for rec in good:
        state.apply_record(rec)
    report.actions.append(f"kept {len(good)} journal records readable before the damage")
    state.rebuild_indexes()
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
    if len(data) < _HEADER.size or data[:8] != WAL_MAGIC:
        return []
    generation = _HEADER.unpack_from(data, 0)[2]
    start = _HEADER.size
    if snap is not None and generation == snap.wal_generation:
        start = snap.wal_offset
    elif snap is not None and generation < snap.wal_generation:
        return []  # an older journal: the snapshot already holds all of it
    out: list[Record] = []
    pos = _HEADER.size
    while pos < len(data):
        problem, rec, nxt = _read_frame(data, pos)
        if problem or rec is None:
            break
        if pos >= start:
            out.append(rec)
        pos = nxt
    return out


def _rewrite(d: Path, state: State, now: float) -> None:
    """A fresh, consistent pair: WAL generation 1 empty, snapshot covering it."""
    header = _HEADER.pack(WAL_MAGIC, WAL_VERSION, 1)
    doc = document(state, now, 1, len(header))
    write_atomic(d / SNAPSHOT_NAME, msgspec.json.encode(doc))
    write_atomic(d / WAL_NAME, header)
