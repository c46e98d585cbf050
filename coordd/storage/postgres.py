"""The PostgreSQL store: the journal, the snapshots and the leader lease of one
``cluster`` in PostgreSQL, behind the same ``Store`` seam as the file store.

What lives where (schema in ``pg_schema``):
- ``coordd_journal``: one row per drained batch (group commit: one transaction, one
  commit, replies after it), the records as msgpack of the ``Record`` union, so a new
  record kind needs no schema change; ``seq`` (bigserial) orders the rows.
- ``coordd_snapshot`` + ``coordd_snapshot_chunk``: the last snapshot (chunks of
  records, so no bytea nears PostgreSQL's 1 GB value limit); writing one deletes the
  journal rows it covers, in the same transaction.
- ``coordd_lease``: who serves the cluster (holder, term, expiry judged by
  PostgreSQL's ``now()``). Every journal and snapshot transaction locks that row
  ``FOR SHARE`` and checks the term, so a stale leader can never write.

Threads: the event loop never talks to PostgreSQL itself. Commits run on one
journal thread (the loop waits for a commit where the file store waits for fsync, at
most ``postgres_timeout``); the lease is renewed by its own thread and connection
(``pg_lease``); a background snapshot is written by a forked child with its own
connection, as the file store's child writes its file.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import msgspec
import psycopg
import structlog

from coordd.core.model import (
    AddCompletion,
    Agent,
    Applied,
    Completion,
    PutAgent,
    PutItem,
    Record,
    WorkItem,
)
from coordd.core.state import State
from coordd.storage.files import StoreError
from coordd.storage.fsck import FsckReport
from coordd.storage.pg_lease import Lease, LeaseLost, one_line
from coordd.storage.pg_schema import Connector, check_schema
from coordd.storage.pg_schema import migrate as migrate_schema
from coordd.storage.reports import LoadReport, ObserveFsync, Role
from coordd.storage.snapshot import Child, SnapshotResult, die_with_parent

if TYPE_CHECKING:
    from coordd.config import Config

log = structlog.get_logger("coordd.storage")

# Records per snapshot chunk: ~10 MB of msgpack at typical item sizes.
CHUNK_RECORDS = 20_000
SNAPSHOT_FORMAT_VERSION = 1


class SnapshotHeader(msgspec.Struct, kw_only=True):
    """What a snapshot holds besides its records."""

    version: int = SNAPSHOT_FORMAT_VERSION
    created_at: float = 0.0
    lease_seq: int = 0
    team_velocity: dict[str, int] = {}


_encoder = msgspec.msgpack.Encoder()
_records = msgspec.msgpack.Decoder(list[Record])
_header = msgspec.msgpack.Decoder(SnapshotHeader)


def encode_records(records: list[Record]) -> bytes:
    return _encoder.encode(records)


class Loaded(msgspec.Struct, kw_only=True):
    """A consistent read of the cluster: the snapshot and the journal after it
    (``full``), or only the journal rows after a sequence number a reader had."""

    full: bool = True
    snapshot: bool = False
    covers: int = 0
    last_seq: int = 0
    header: SnapshotHeader = msgspec.field(default_factory=SnapshotHeader)
    items: list[WorkItem] = []
    agents: list[Agent] = []
    completions: list[Completion] = []
    applied: list[Applied] = []
    journal: list[Record] = []

    def apply_to(self, state: State) -> int:
        """Replace ``state`` with a full read, or follow the rows of a partial one."""
        if not self.full:
            return state.follow(self.journal)
        return state.restore(
            self.items,
            self.agents,
            self.completions,
            self.header.team_velocity,
            self.header.lease_seq,
            self.journal,
            self.applied,
        )


def read_cluster(conn: psycopg.Connection[Any], cluster: str, after: int | None = None) -> Loaded:
    """Snapshot + journal in one REPEATABLE READ transaction (a snapshot written
    meanwhile cannot delete rows from under us). With ``after`` (the last row a reader
    applied): only the rows after it, unless a snapshot has compacted past it since,
    in which case everything again (``full``)."""
    out = Loaded()
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        row = conn.execute(
            "SELECT covers_seq, header FROM coordd_snapshot WHERE cluster = %s", (cluster,)
        ).fetchone()
        out.covers = row[0] if row is not None else 0
        out.full = after is None or out.covers > after
        if row is not None and out.full:
            out.snapshot = True
            out.header = _header.decode(row[1])
            cur = conn.execute(
                "SELECT records FROM coordd_snapshot_chunk WHERE cluster = %s ORDER BY n",
                (cluster,),
            )
            for (data,) in cur:
                _sort_snapshot_records(out, _records.decode(data))
        start = out.covers if out.full or after is None else after
        out.last_seq = start
        cur = conn.execute(
            "SELECT seq, records FROM coordd_journal WHERE cluster = %s AND seq > %s ORDER BY seq",
            (cluster, start),
        )
        for seq, data in cur:
            out.journal.extend(_records.decode(data))
            out.last_seq = seq
    return out


class Follower:
    """A standby's reader of the journal: LISTENs on ``coordd_journal`` (and
    ``coordd_lease``, to try the lease at once when a leader releases it), reads the
    rows after the last it read, and queues them for the loop. Its own thread and
    connection; a missed notification costs at most ``poll`` seconds."""

    def __init__(
        self, connector: Connector, lease: Lease, after: int, wake: Callable[[], None]
    ) -> None:
        self.connector, self.lease, self.wake = connector, lease, wake
        self.cluster = lease.cluster
        self.poll = lease.retry
        self.read_seq = after  # the last row read (queued), on the thread
        self.queue: collections.deque[Loaded] = collections.deque()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="coordd-follow", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        self._thread.join(self.poll + self.connector.timeout + 1)

    def _loop(self) -> None:
        while not self._stopped:
            try:
                with self.connector.connect() as conn:
                    self._listen(conn)
            except psycopg.Error as e:
                log.warning("follow_failed", cluster=self.cluster, reason=one_line(e))
                time.sleep(self.poll)

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute("LISTEN coordd_journal")
        conn.execute("LISTEN coordd_lease")
        again = threading.Event()
        # A notification that arrives during a read is handed here, not to notifies().
        conn.add_notify_handler(lambda n: self._heard(n, again))
        while not self._stopped:
            again.clear()
            self._read(conn)
            if again.is_set():
                continue
            for n in conn.notifies(timeout=self.poll, stop_after=1):
                self._heard(n, again)

    def _heard(self, n: psycopg.Notify, again: threading.Event) -> None:
        if n.payload != self.cluster:
            return
        if n.channel == "coordd_lease":
            self.lease.poke()
        again.set()

    def _read(self, conn: psycopg.Connection[Any]) -> None:
        loaded = read_cluster(conn, self.cluster, self.read_seq)
        if loaded.full or loaded.journal:
            self.read_seq = loaded.last_seq
            self.queue.append(loaded)
            self.wake()


def _sort_snapshot_records(out: Loaded, records: list[Record]) -> None:
    for rec in records:
        if isinstance(rec, PutItem):
            out.items.append(rec.item)
        elif isinstance(rec, PutAgent):
            out.agents.append(rec.agent)
        elif isinstance(rec, Applied):
            out.applied.append(rec)
        elif isinstance(rec, AddCompletion):  # (a snapshot holds no Pruned record)
            out.completions.append(rec.entry)


def snapshot_chunks(state: State) -> Iterable[bytes]:
    """The state's records in chunks of ``CHUNK_RECORDS``."""
    batch: list[Record] = []
    everything: Iterable[Record] = itertools.chain(
        (PutItem(i) for i in state.items.values()),
        (PutAgent(a) for a in state.agents.values()),
        (AddCompletion(c) for c in state.completions),
        state.applied.values(),  # remembered replies: a resend after failover is answered
    )
    for rec in everything:
        batch.append(rec)
        if len(batch) >= CHUNK_RECORDS:
            yield _encoder.encode(batch)
            batch = []
    if batch:
        yield _encoder.encode(batch)


def write_snapshot(
    conn: psycopg.Connection[Any], lease: Lease, state: State, now: float, covers: int
) -> int:
    """Replace the cluster's snapshot with ``state`` (which holds the journal up to
    ``covers``) and delete the rows it covers; one transaction, fenced by the term.
    Returns the bytes written."""
    header = _encoder.encode(
        SnapshotHeader(
            created_at=now, lease_seq=state.lease_seq, team_velocity=dict(state.team_velocity)
        )
    )
    size = len(header)
    cluster = lease.cluster
    with conn.transaction():
        lease.check_term(conn)
        conn.execute("DELETE FROM coordd_snapshot_chunk WHERE cluster = %s", (cluster,))
        with conn.cursor().copy(
            "COPY coordd_snapshot_chunk (cluster, n, records) FROM STDIN"
        ) as copy:
            for n, chunk in enumerate(snapshot_chunks(state)):
                copy.write_row((cluster, n, chunk))
                size += len(chunk)
        conn.execute(
            "INSERT INTO coordd_snapshot (cluster, covers_seq, created_at, header)"
            " VALUES (%s, %s, now(), %s) ON CONFLICT (cluster) DO UPDATE SET"
            " covers_seq = EXCLUDED.covers_seq, created_at = EXCLUDED.created_at,"
            " header = EXCLUDED.header",
            (cluster, covers, header),
        )
        conn.execute(
            "DELETE FROM coordd_journal WHERE cluster = %s AND seq <= %s", (cluster, covers)
        )
    return size


class PostgresStore:
    """The journal and snapshots of one cluster in PostgreSQL, written by the lease
    holder only. Owned by the event loop; its threads own their connections."""

    def __init__(
        self,
        connector: Connector,
        lease: Lease,
        timeout: float,
        observe_fsync: ObserveFsync | None = None,
    ) -> None:
        self.connector = connector
        self.lease = lease
        self.cluster = lease.cluster
        self.timeout = timeout
        self.observe = observe_fsync
        self.last_seq = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="coordd-pg")
        self._local = threading.local()
        self._child: Child | None = None
        self._child_covers = 0
        self._broken = ""
        self._wake: Callable[[], None] | None = None
        self._follower: Follower | None = None

    @property
    def snapshot_running(self) -> bool:
        return self._child is not None

    # --- the journal thread -------------------------------------------------------

    def _conn(self) -> psycopg.Connection[Any]:
        """This thread's connection (made on first use, and again after a failure)."""
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self.connector.connect()
            self._local.conn = conn
        return conn

    def _drop_conn(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def _run(
        self, job: Callable[[psycopg.Connection[Any]], Any], what: str, fatal: bool = True
    ) -> Any:
        """Run ``job`` on the journal thread and wait for it (at most ``timeout``).
        Raises StoreError saying what failed. A ``fatal`` failure (a commit: its outcome
        is unknown, it may still land) or a refused term leaves the store broken: the
        daemon stops acknowledging and steps down."""

        def on_thread() -> Any:
            try:
                return job(self._conn())
            except psycopg.Error:
                self._drop_conn()
                raise

        future = self._pool.submit(on_thread)
        try:
            return future.result(self.timeout)
        except concurrent.futures.TimeoutError:
            problem = f"PostgreSQL did not answer within {self.timeout:g}s ({what})"
        except LeaseLost as e:
            problem, fatal = f"{what} refused: {e}", True
        except psycopg.Error as e:
            problem = f"{what} failed: PostgreSQL: {one_line(e)}"
        if fatal:
            self._broken = problem
        raise StoreError(problem)

    # --- the seam -----------------------------------------------------------------

    def lock(self, standby: Callable[[], None] | None = None) -> None:
        """Take the cluster's lease (the file store's state-dir lock); raises StoreError
        naming the holder, or with ``standby`` stands by when another holds it."""
        self._run(lambda conn: check_schema(conn), "schema check")
        if standby is None:
            self.lease.acquire_or_raise()
        else:
            self._wake = standby
            self.lease.wake = standby
            held = self.lease.acquire_or_stand_by()
            if held is not None:
                log.info("standing_by", cluster=self.cluster, leader=held.holder, term=held.term)
        self.lease.start()

    def load(self, state: State) -> LoadReport:
        loaded: Loaded = self._run(lambda c: read_cluster(c, self.cluster), "load")
        report = LoadReport(snapshot=loaded.snapshot, generation=self.lease.term)
        report.records = loaded.apply_to(state)
        self.last_seq = loaded.last_seq
        if not self.lease.leading and self._wake is not None:
            self._follower = Follower(self.connector, self.lease, self.last_seq, self._wake)
            self._follower.start()
        return report

    def role(self) -> Role:
        lease = self.lease
        if lease.leading:
            return Role(leader=True, term=lease.term, problem=self._broken or lease.problem())
        seen = lease.seen
        return Role(leader=False, leader_address=seen.address if seen is not None else "")

    def follow(self, state: State) -> int:
        follower, n = self._follower, 0
        while follower is not None and follower.queue:
            loaded = follower.queue.popleft()
            n += loaded.apply_to(state)
            self.last_seq = loaded.last_seq
        return n

    def take_over(self, state: State) -> None:
        """The lease is ours (term bumped): the old leader can commit nothing more, so
        the rows after ours are final. Apply them; from here on this process writes."""
        if self._follower is not None:
            self._follower.stop()
            self.follow(state)
            self._follower = None
        after = self.last_seq
        loaded: Loaded = self._run(lambda c: read_cluster(c, self.cluster, after), "catch-up")
        records = loaded.apply_to(state)
        self.last_seq = loaded.last_seq
        log.info("took_over", cluster=self.cluster, term=self.lease.term, records=records)

    def append(self, records: list[Record]) -> None:
        self._check_usable()
        data = encode_records(records)
        t0 = time.monotonic()
        self.last_seq = self._run(lambda c: self._insert(c, data), "journal commit")
        if self.observe is not None:
            self.observe(time.monotonic() - t0)

    def _insert(self, conn: psycopg.Connection[Any], data: bytes) -> int:
        # One statement (one round trip, one commit in autocommit mode): the CTE locks
        # the lease row FOR SHARE, so a takeover waits for this commit or this insert
        # sees the new term and writes nothing.
        row = conn.execute(
            "WITH l AS (SELECT term FROM coordd_lease WHERE cluster = %(c)s AND term = %(t)s"
            " AND holder = %(h)s FOR SHARE)"
            " INSERT INTO coordd_journal (cluster, term, records)"
            " SELECT %(c)s, l.term, %(r)s FROM l RETURNING seq",
            {"c": self.cluster, "t": self.lease.term, "h": self.lease.holder, "r": data},
        ).fetchone()
        if row is None:
            raise LeaseLost(self.lease.describe_loss(conn))
        seq: int = row[0]
        return seq

    def sync(self) -> None:
        """Every append has committed already."""

    def tick(self) -> None:
        """Step down when the lease is gone: refused, or not renewed in time by our own
        monotonic clock (a margin before PostgreSQL's expiry)."""
        self._check_usable()

    def _check_usable(self) -> None:
        if self._broken:
            raise StoreError(self._broken)
        problem = self.lease.problem()
        if problem:
            self._broken = problem
            raise StoreError(problem)

    def fsck(self, repair: bool, now: float) -> FsckReport:
        report = FsckReport()
        try:
            loaded: Loaded = self._run(lambda c: read_cluster(c, self.cluster), "read")
        except StoreError as e:
            report.problems.append(str(e))
            return report
        except msgspec.DecodeError as e:
            report.problems.append(f"cluster {self.cluster}: a row cannot be decoded: {e}")
            return report
        if repair:
            report.actions.append("nothing to repair: PostgreSQL keeps its own consistency")
        log.info("fsck_read", records=len(loaded.journal), items=len(loaded.items))
        return report

    def migrate(self) -> str:
        before, after = self._run(migrate_schema, "migrate")
        where = f"{self.connector.redacted()}"
        if before == after:
            return f"{where}: coordd schema is at version {after}; nothing to do"
        return f"{where}: coordd schema upgraded from version {before} to {after}"

    def close(self) -> None:
        if self._child is not None:
            self._child.wait()
            self._child = None
        if self._follower is not None:
            self._follower.stop()
        self.lease.stop(release=not self._broken)
        self._pool.submit(self._drop_conn)
        self._pool.shutdown(wait=False, cancel_futures=False)

    # --- snapshots ----------------------------------------------------------------

    def snapshot(
        self, state: State, now: float, after: Callable[[], None] | None = None
    ) -> SnapshotResult:
        if self._child is not None:
            self._child.wait()
            self._child = None
        t0 = time.monotonic()
        covers = self.last_seq
        try:
            # Not fatal: a failed snapshot degrades the daemon; the journal still holds all.
            size = self._run(
                lambda c: write_snapshot(c, self.lease, state, now, covers), "snapshot", False
            )
        except StoreError as e:
            return SnapshotResult(ok=False, reason=str(e))
        if after is not None:
            after()
        took = time.monotonic() - t0
        return SnapshotResult(
            ok=True, seconds=took, blocked=took, bytes=size, items=len(state.items)
        )

    def snapshot_background(
        self, state: State, now: float, after: Callable[[], None] | None = None
    ) -> bool:
        if self._child is not None:
            return False
        covers = self.last_seq
        connector, lease = self.connector, self.lease

        def job() -> dict[str, Any]:
            conn = connector.connect()
            size = write_snapshot(conn, lease, state, now, covers)
            conn.close()
            if after is not None:
                after()
            return {"bytes": size}

        self._child = _fork(job, len(state.items))
        self._child_covers = covers
        return True

    def poll_snapshot(self) -> SnapshotResult | None:
        child = self._child
        if child is None:
            return None
        result = child.poll()
        if result is not None:
            self._child = None
        return result


# --- the snapshot child ----------------------------------------------------------


def _fork(job: Callable[[], dict[str, Any]], items: int) -> Child:
    """Run ``job`` in a forked child (a copy-on-write image of the state): the loop is
    held only for the fork. The child opens its own connection, never the parent's."""
    t0 = time.monotonic()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            die_with_parent()
            try:
                out = {"ok": True, **job(), "seconds": time.monotonic() - t0}
                code = 0
            except LeaseLost as e:
                out = {"ok": False, "reason": f"snapshot refused: {e}"}
            except psycopg.Error as e:
                out = {"ok": False, "reason": f"snapshot failed: PostgreSQL: {one_line(e)}"}
            except Exception as e:  # a bug; the parent logs it
                out = {"ok": False, "reason": f"{type(e).__name__}: {e}"}
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(code)
    os.close(w)
    return Child(pid, r, t0, items, blocked=time.monotonic() - t0)


def open_postgres(cfg: Config, observe_fsync: ObserveFsync | None = None) -> PostgresStore:
    """The PostgreSQL store of ``cfg.cluster``; this process's holder name is its host
    and pid, its address the agent endpoint clients should use while it leads."""
    connector = Connector(cfg.postgres_dsn, cfg.postgres_password_file, cfg.postgres_timeout)
    lease = Lease(
        connector,
        cfg.cluster,
        holder=f"{socket.gethostname()}:{os.getpid()}",
        address=cfg.agent_endpoint,
        duration=cfg.lease_duration,
        renew=cfg.lease_renew,
        retry=cfg.lease_retry,
    )
    return PostgresStore(connector, lease, cfg.postgres_timeout, observe_fsync)
