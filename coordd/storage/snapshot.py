"""The snapshot ``snapshot.json``: the document, its writer (in this process or in a
forked child, as Redis BGSAVE does), its loader, and how it pairs with the WAL."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import mmap
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from coordd.core.model import Agent, Completion, Record, WorkItem
from coordd.core.state import State
from coordd.storage.files import Corrupt, os_reason, write_atomic
from coordd.storage.wal import WalScan

SNAPSHOT_NAME = "snapshot.json"
SNAPSHOT_FORMAT = "coordd-snapshot"
SNAPSHOT_VERSION = 1


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
    """How a snapshot went; ``seconds`` is what the daemon's snapshot metric observes."""

    ok: bool
    reason: str = ""
    seconds: float = 0.0  # wall time from start to durable
    blocked: float = 0.0  # how long the loop was held (fork, or all of it if synchronous)
    bytes: int = 0
    items: int = 0


_snapshot_decoder = msgspec.json.Decoder(Snapshot)


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
    )


def restore(state: State, snap: Snapshot | None, records: Iterable[Record] = ()) -> int:
    """Put a snapshot's content (if any) and the records after it into ``state``
    (``State.restore`` rebuilds its indexes); returns the records applied."""
    if snap is None:
        return state.restore(records=records)
    return state.restore(
        snap.items, snap.agents, snap.completions, snap.team_velocity, snap.lease_seq, records
    )


def records_after(snap: Snapshot | None, scan: WalScan, path: Path) -> Iterator[Record]:
    """The WAL records the snapshot does not hold yet; raises Corrupt on a bad pairing."""
    # The snapshot names the WAL generation and offset it covers; the WAL is started
    # afresh (next generation) only once the snapshot is durable. So a crash leaves
    # (snapshot g@O, WAL g): replay from O, or (snapshot g@O, WAL g+1): replay all of
    # it. Any other pairing means files were lost or mixed up: refuse.
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


# --- loading -------------------------------------------------------------------


def read_snapshot(path: Path) -> Snapshot | None:
    """The snapshot in ``path``, None when there is none; raises Corrupt."""
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


# --- writing -------------------------------------------------------------------


def write_snapshot(path: Path, doc: Snapshot, after: Callable[[], None] | None = None) -> int:
    """Write ``doc`` atomically, then run ``after`` (the legacy export); its size in bytes."""
    data = msgspec.json.encode(doc)
    write_atomic(path, data)
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
    child = Child(pid, r, t0, items)
    child.blocked = time.monotonic() - t0
    return child


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
        _die_with_parent()
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


class Child:
    """A forked snapshot writer, as the parent sees it."""

    def __init__(self, pid: int, r: int, t0: float, items: int) -> None:
        self.pid, self.r, self.t0, self.items = pid, r, t0, items
        self.blocked = 0.0

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
