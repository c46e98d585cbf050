"""The seam between the daemon and its storage: the ``Store`` interface, ``open_store``,
and ``FileStore`` (WAL + snapshots in ``state_dir``), today's only implementation."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import structlog

from coordd.core.model import Record
from coordd.core.state import State
from coordd.kinds import FsyncPolicy
from coordd.storage import fsck as fsck_mod
from coordd.storage import loader
from coordd.storage.files import (
    Corrupt,
    StoreError,
    corrupt_copy_name,
    fsync_dir,
    lock_state_dir,
    os_reason,
    write_atomic,
)
from coordd.storage.format1 import SNAPSHOT_V1_NAME
from coordd.storage.fsck import FsckReport
from coordd.storage.reports import LEADING, LoadReport, ObserveFsync, Role
from coordd.storage.snapshot import (
    SNAPSHOT_NAME,
    SNAPSHOT_PREV_NAME,
    Child,
    SnapshotResult,
    document,
    fork_writer,
    restore,
    write_snapshot,
)
from coordd.storage.wal import INITIAL_CAPACITY, WAL_NAME, WalScan, WalWriter, link_over

if TYPE_CHECKING:
    from coordd.config import Config

__all__ = [
    "Corrupt",
    "FileStore",
    "FsckReport",
    "LoadReport",
    "Role",
    "SnapshotResult",
    "Store",
    "StoreError",
    "open_store",
]

log = structlog.get_logger("coordd.storage")


class Store(Protocol):
    """What the daemon and the ``coordd`` CLI may ask of a store; nothing else."""

    @property
    def snapshot_running(self) -> bool:
        """A background snapshot is being written."""
        ...

    def lock(self, standby: Callable[[], None] | None = None) -> None:
        """Hold the store for this process alone; raises StoreError naming the holder.
        With ``standby`` (a callable that wakes the daemon's loop from any thread), a
        store that several coordd share makes this process a standby instead when
        another holds it: it follows, and calls ``standby`` when there is news."""

    def role(self) -> Role:
        """Leader or standby, now; cheap (called on every wake-up of the loop)."""
        ...

    def follow(self, state: State) -> int:
        """A standby: apply what the leader journaled since the last call."""
        ...

    def take_over(self, state: State) -> None:
        """A standby whose ``role()`` became leader: apply the rest of the journal;
        from here on it writes. Raises StoreError."""

    def load(self, state: State) -> LoadReport:
        """Fill an empty ``state`` with what is stored; raises StoreError (Corrupt)."""
        ...

    def append(self, records: list[Record]) -> None:
        """Append one batch (one write, one sync): durable per the fsync policy on return."""

    def sync(self) -> None:
        """Make every appended batch durable now, whatever the policy."""

    def tick(self) -> None:
        """Called on every wake-up of the loop (the ``everysec`` sync)."""

    def snapshot(
        self, state: State, now: float, after: Callable[[], None] | None = None
    ) -> SnapshotResult:
        """Write a snapshot, blocking (import, shutdown); ``after`` runs once it is durable."""
        ...

    def snapshot_background(
        self, state: State, now: float, after: Callable[[], None] | None = None
    ) -> bool:
        """Start a snapshot off the loop; False if one is already running."""
        ...

    def poll_snapshot(self) -> SnapshotResult | None:
        """The background snapshot's result once it is done, else None."""
        ...

    def fsck(self, repair: bool, now: float) -> FsckReport:
        """Check (and with ``repair`` fix) what is stored; offline, instead of load."""
        ...

    def migrate(self) -> str:
        """Create or upgrade what the store needs before first use; says what it did."""
        ...

    def close(self) -> None:
        """Wait for a running snapshot, flush what the policy promised, release the lock."""


def open_store(cfg: Config, observe_fsync: ObserveFsync | None = None) -> Store:
    """The store ``cfg`` names: the file store in ``cfg.state_dir`` (the default) or
    the PostgreSQL store of ``cfg.cluster`` (psycopg is imported only then)."""
    if cfg.store == "postgres":
        from coordd.storage.postgres import open_postgres

        return open_postgres(cfg, observe_fsync)
    return FileStore(cfg.state_dir, cfg.fsync, observe_fsync)


class FileStore:
    """The WAL and the snapshots of one ``state_dir``. Owned by the event loop."""

    def __init__(
        self,
        state_dir: str | Path,
        fsync: str = FsyncPolicy.ALWAYS,
        observe_fsync: ObserveFsync | None = None,
        journal_capacity: int = INITIAL_CAPACITY,
    ) -> None:
        self.dir = Path(state_dir)
        self.snapshot_path = self.dir / SNAPSHOT_NAME
        self.wal_path = self.dir / WAL_NAME
        self._wal = WalWriter(self.wal_path, fsync, observe_fsync, journal_capacity)
        self._child: Child | None = None
        # The WAL position (generation, offset) the running child's snapshot covers.
        self._child_covers = (0, 0)
        self._lock_fd: int | None = None

    @property
    def generation(self) -> int:
        return self._wal.generation

    @property
    def snapshot_running(self) -> bool:
        return self._child is not None

    def lock(self, standby: Callable[[], None] | None = None) -> None:
        # One process per directory: there is no standby of a file store.
        self._lock_fd = lock_state_dir(self.dir)

    def role(self) -> Role:
        return LEADING

    def follow(self, state: State) -> int:
        return 0

    def take_over(self, state: State) -> None:
        pass

    # --- start ---------------------------------------------------------------------

    def load(self, state: State) -> LoadReport:
        """Snapshot, then the journal after it; open the journal for appending.
        Raises Corrupt (nothing is changed on disk then)."""
        p = loader.plan(self.dir)
        report = LoadReport(snapshot=p.snap is not None)
        report.records = restore(state, p.snap, p.records())
        if p.fallback is not None:
            report.fallback = self._use_previous(p)
        top = p.top
        if top is None:
            self._wal.create(1)
        elif top.version == 2:
            if top.torn is not None:
                report.torn_bytes = self._drop_torn_tail(top)
            self._wal.open(top)
        if p.format1:
            report.upgraded_from = 1
            self._upgrade(p, state)
        report.generation = self._wal.generation
        return report

    def _drop_torn_tail(self, top: WalScan) -> int:
        """Keep a copy of a torn last write, then zero it so new frames follow the
        last good one. Nothing in it was acknowledged (its sync never returned)."""
        assert top.torn is not None
        offset, size = top.torn
        with open(self.wal_path, "r+b") as f:
            f.seek(offset)
            dropped = f.read(size)
            copy = self.wal_path.with_name(
                f"{WAL_NAME}.torn-{top.generation}-{offset}-{time.strftime('%Y%m%dT%H%M%S')}"
            )
            write_atomic(copy, dropped)
            f.seek(offset)
            f.write(bytes(size))
            f.flush()
            os.fdatasync(f.fileno())
        log.warning(
            "journal_torn_tail_dropped",
            path=str(self.wal_path),
            offset=offset,
            bytes=size,
            copy=str(copy),
            detail="the last write was torn (a crash during it); it was never acknowledged",
        )
        return size

    def _use_previous(self, p: loader.Plan) -> str:
        """The newest snapshot is damaged; the previous one with the journals after it
        was loaded. Keep the damaged file as a copy; the one used becomes the newest."""
        assert p.fallback is not None and p.snap_path is not None
        damaged = self.snapshot_path
        copy = corrupt_copy_name(damaged)
        if damaged.exists():
            os.rename(damaged, copy)
        if p.snap_path.name == SNAPSHOT_PREV_NAME:
            os.rename(p.snap_path, damaged)
        fsync_dir(self.dir)
        log.error(
            "snapshot_damaged_previous_used",
            damaged=str(p.fallback.path),
            offset=p.fallback.offset,
            reason=p.fallback.what,
            used=p.snap_path.name,
            copy=str(copy),
            detail="nothing is lost: the previous snapshot and the journal after it hold it all",
        )
        return str(copy)

    def _upgrade(self, p: loader.Plan, state: State) -> None:
        """Format 1 files were read as they are; write them once in format 2, keeping a
        copy of each first (``format1-copy/``). Each step leaves a loadable directory."""
        copy_dir = self.dir / "format1-copy"
        copy_dir.mkdir(exist_ok=True)
        v1_snap = self.dir / SNAPSHOT_V1_NAME
        for f in (v1_snap, self.wal_path):
            if f.exists() and not (copy_dir / f.name).exists():
                write_atomic(copy_dir / f.name, f.read_bytes())
        top = p.top
        if top is not None and top.version == 1:
            # The format-1 journal stays readable as the previous generation while the
            # snapshot below is not yet durable.
            link_over(self.wal_path, self._wal.prev_path)
            self._wal.create(top.generation + 1, (top.generation, top.end))
        doc = document(state, time.time(), self._wal.generation, self._wal.offset)
        write_snapshot(self.snapshot_path, doc)
        v1_snap.unlink(missing_ok=True)
        fsync_dir(self.dir)
        log.warning(
            "state_upgraded",
            from_format=1,
            to_format=2,
            copy=str(copy_dir),
            items=len(state.items),
            detail="format-1 files were read as they are and written once in format 2",
        )

    def fsck(self, repair: bool, now: float) -> FsckReport:
        return fsck_mod.fsck(self.dir, repair, now)

    def migrate(self) -> str:
        return f"{self.dir}: the file store has no schema; nothing to migrate"

    # --- appending -----------------------------------------------------------------

    def append(self, records: list[Record]) -> None:
        self._wal.append(records)

    def sync(self) -> None:
        self._wal.sync()

    def tick(self) -> None:
        self._wal.tick()

    def close(self) -> None:
        self._reap()
        self._wal.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- snapshots -----------------------------------------------------------------

    def snapshot(
        self, state: State, now: float, after: Callable[[], None] | None = None
    ) -> SnapshotResult:
        self._reap()
        self._wal.sync_if_dirty()
        t0 = time.monotonic()
        doc = document(state, now, self._wal.generation, self._wal.offset)
        try:
            size = write_snapshot(self.snapshot_path, doc, after)
        except OSError as e:
            return SnapshotResult(ok=False, reason=os_reason(e, self.snapshot_path))
        self._rotate(doc.wal_generation, doc.wal_offset)
        took = time.monotonic() - t0
        return SnapshotResult(ok=True, seconds=took, blocked=took, bytes=size, items=len(doc.items))

    def snapshot_background(
        self, state: State, now: float, after: Callable[[], None] | None = None
    ) -> bool:
        if self._child is not None:
            return False
        self._wal.sync_if_dirty()
        covers = generation, offset = self._wal.generation, self._wal.offset
        # The child closes the state-dir lock: an orphan must not keep a restart out.
        fds = (self._lock_fd,) if self._lock_fd is not None else ()
        self._child = fork_writer(
            self.snapshot_path,
            lambda: document(state, now, generation, offset),
            after,
            fds,
            len(state.items),
        )
        self._child_covers = covers
        return True

    def poll_snapshot(self) -> SnapshotResult | None:
        child = self._child
        if child is None:
            return None
        result = child.poll()
        if result is None:
            return None
        self._child = None
        if result.ok:
            self._rotate(*self._child_covers)
        return result

    def _reap(self) -> None:
        # A blocking snapshot or a close waits for the running child (its result is
        # superseded); its WAL position is stale, so no rotation follows.
        if self._child is not None:
            self._child.wait()
            self._child = None

    def _rotate(self, generation: int, offset: int) -> None:
        # The snapshot must be durable before this: only then may the WAL lose the
        # records it holds (see snapshot.records_after for the pairing rule).
        try:
            self._wal.rotate(generation, offset)
        except OSError as e:
            # The snapshot is good and the old WAL still replays from its offset;
            # the next snapshot tries again.
            log.warning("journal_rotate_failed", reason=os_reason(e, self.wal_path))
