"""The leader lease of a cluster: one row (holder, address, term, expiry) in
``coordd_lease``, expiry judged by PostgreSQL's ``now()``.

A holder takes the row when it is free or expired, which bumps the term; it renews
every ``renew`` seconds on its own thread and connection. It counts itself leader
until ``renew`` seconds before the expiry it last obtained, measured on its own
monotonic clock from the moment it *sent* the renewal (PostgreSQL's ``now()`` is
later, so its expiry is later still): a paused or partitioned leader gives up before
anyone may take over. Writes are fenced by the term (``check_term`` and the journal's
insert), not by the clock, so even a leader whose clock lies cannot write once a
successor holds the row.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec
import psycopg
import structlog

from coordd.storage.files import StoreError
from coordd.storage.pg_schema import Connector

log = structlog.get_logger("coordd.storage")


class LeaseLost(Exception):
    """The lease row names another term or holder: this process may not write."""


class Holder(msgspec.Struct, kw_only=True):
    """Who holds a cluster's lease, as PostgreSQL saw it."""

    holder: str
    address: str
    term: int
    seconds_left: float


_ACQUIRE = """
INSERT INTO coordd_lease AS l (cluster, holder, address, term, expires_at)
VALUES (%(c)s, %(h)s, %(a)s, 1, now() + make_interval(secs => %(d)s))
ON CONFLICT (cluster) DO UPDATE SET holder = EXCLUDED.holder, address = EXCLUDED.address,
    term = l.term + 1, expires_at = EXCLUDED.expires_at
WHERE l.expires_at < now()
RETURNING term
"""
_RENEW = """
UPDATE coordd_lease SET expires_at = now() + make_interval(secs => %(d)s)
WHERE cluster = %(c)s AND holder = %(h)s AND term = %(t)s
RETURNING term
"""
_HOLDER = """
SELECT holder, address, term, extract(epoch FROM expires_at - now())::float8
FROM coordd_lease WHERE cluster = %s
"""


class Lease:
    """This process's claim on one cluster: taken at start, or (a standby) tried every
    ``retry`` seconds and right at the holder's expiry, then renewed every ``renew``."""

    def __init__(
        self,
        connector: Connector,
        cluster: str,
        holder: str,
        address: str,
        duration: float = 15.0,
        renew: float = 5.0,
        retry: float = 2.0,
    ) -> None:
        self.connector = connector
        self.cluster = cluster
        self.holder = holder
        self.address = address
        self.duration, self.renew, self.retry = duration, renew, retry
        self.term = 0
        self.leading = False
        self.seen: Holder | None = None  # the holder, as a standby last saw it
        self.wake: Callable[[], None] = _nothing  # called from the thread on news
        self._valid_until = 0.0  # monotonic
        self._lost = ""
        self._poke = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None

    # --- taking it ------------------------------------------------------------------

    def try_acquire(self, conn: psycopg.Connection[Any]) -> Holder | None:
        """Take the lease if it is free or expired (None), else say who holds it."""
        sent = time.monotonic()
        params = {"c": self.cluster, "h": self.holder, "a": self.address, "d": self.duration}
        row = conn.execute(_ACQUIRE, params).fetchone()
        if row is not None:
            self.term = int(row[0])
            self._valid_until = sent + self.duration - self.renew
            self._lost = ""
            self.leading = True
            self.seen = None
            log.info("lease_acquired", cluster=self.cluster, term=self.term, holder=self.holder)
            return None
        self.seen = self.current(conn)
        return self.seen

    def current(self, conn: psycopg.Connection[Any]) -> Holder | None:
        row = conn.execute(_HOLDER, (self.cluster,)).fetchone()
        if row is None:
            return None
        return Holder(holder=row[0], address=row[1], term=int(row[2]), seconds_left=row[3])

    def acquire_or_raise(self) -> None:
        """Take the lease now or raise StoreError naming the holder."""
        held = self.acquire_or_stand_by()
        if held is not None:
            raise StoreError(
                f"cluster {self.cluster!r} is served by {held.holder} at {held.address}"
                f" (term {held.term}, lease expires in {max(0.0, held.seconds_left):.1f}s)"
            )

    def acquire_or_stand_by(self) -> Holder | None:
        """Try once: None when the lease is ours, else its holder (we stand by)."""
        try:
            with self.connector.connect() as conn:
                return self.try_acquire(conn)
        except psycopg.Error as e:
            raise StoreError(f"cannot take the lease: PostgreSQL: {one_line(e)}") from None

    # --- fencing ----------------------------------------------------------------------

    def check_term(self, conn: psycopg.Connection[Any]) -> None:
        """Inside a transaction: lock the lease row (a takeover waits for our commit)
        and raise LeaseLost unless it is still ours."""
        row = conn.execute(
            "SELECT holder, term FROM coordd_lease WHERE cluster = %s FOR SHARE",
            (self.cluster,),
        ).fetchone()
        if row is None or row[0] != self.holder or int(row[1]) != self.term:
            raise LeaseLost(self.describe_loss(conn))

    def describe_loss(self, conn: psycopg.Connection[Any]) -> str:
        held = self.current(conn)
        now = "nobody" if held is None else f"{held.holder} (term {held.term})"
        return (
            f"term {self.term} of cluster {self.cluster!r} is no longer ours; it is held by {now}"
        )

    def problem(self) -> str:
        """Why this process may no longer serve as leader ('' while it may)."""
        if self._lost:
            return self._lost
        if self.leading and time.monotonic() >= self._valid_until:
            return (
                f"lease of cluster {self.cluster!r} (term {self.term}) not renewed in time:"
                " stepping down before it expires"
            )
        return ""

    # --- keeping it, or waiting for it --------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="coordd-lease", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """Try now (a standby heard that the lease was released)."""
        self._poke.set()

    def _loop(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        next_at = time.monotonic() + (self.renew if self.leading else 0.0)
        while True:
            self._poke.wait(max(0.0, next_at - time.monotonic()))
            self._poke.clear()
            if self._stopped or self._lost:
                break
            sent = time.monotonic()
            try:
                conn = conn if conn is not None and not conn.closed else self.connector.connect()
                next_at = sent + (self._renew(conn, sent) if self.leading else self._try(conn))
            except psycopg.Error as e:
                log.warning("lease_call_failed", cluster=self.cluster, reason=one_line(e))
                if conn is not None:
                    conn.close()
                conn = None
                next_at = sent + self.retry
        if conn is not None:
            conn.close()

    def _renew(self, conn: psycopg.Connection[Any], sent: float) -> float:
        params = {"c": self.cluster, "h": self.holder, "t": self.term, "d": self.duration}
        if conn.execute(_RENEW, params).fetchone() is None:
            self._lost = f"lease renewal refused: {self.describe_loss(conn)}"
            log.error("lease_lost", cluster=self.cluster, term=self.term)
            self.wake()
            return 0.0
        self._valid_until = sent + self.duration - self.renew
        return self.renew

    def _try(self, conn: psycopg.Connection[Any]) -> float:
        # Read first: an attempt on a live lease would lock its row, and the leader's
        # journal transactions (which lock it FOR SHARE) would queue behind it.
        held = self.current(conn)
        if held is None or held.seconds_left <= 0:
            held = self.try_acquire(conn)
        else:
            self.seen = held
        self.wake()  # taken, or news of who holds it
        if held is None:
            return self.renew
        # Try again right after the holder's expiry, or every retry, whichever is first.
        return min(self.retry, max(0.02, held.seconds_left + 0.02))

    def stop(self, release: bool) -> None:
        """Stop renewing; with ``release``, let a standby take over at once."""
        self._stopped = True
        self._poke.set()
        if self._thread is not None:
            self._thread.join(self.connector.timeout + 1)
        if not (release and self.leading and not self.problem()):
            return
        try:
            with self.connector.connect() as conn:
                conn.execute(
                    "UPDATE coordd_lease SET expires_at = now()"
                    " WHERE cluster = %s AND holder = %s AND term = %s",
                    (self.cluster, self.holder, self.term),
                )
                conn.execute("SELECT pg_notify('coordd_lease', %s)", (self.cluster,))
            log.info("lease_released", cluster=self.cluster, term=self.term)
        except psycopg.Error as e:
            log.warning("lease_release_failed", cluster=self.cluster, reason=one_line(e))


def _nothing() -> None:
    pass


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split())
