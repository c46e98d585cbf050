"""When snapshots are written, and what the daemon reports about them.

The files are the storage's job; here the schedule (every ``snapshot_interval``, on
``coordctl snapshot``, at stop), the figures ``status`` shows, the duration metric,
and the daemon's health: a failed snapshot degrades it until one succeeds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import structlog

from coordd import legacy
from coordd.clock import Clock
from coordd.config import Config
from coordd.core.state import State
from coordd.daemon import metrics
from coordd.storage.store import SnapshotResult, Store

log = structlog.get_logger("coordd")


class Snapshots:
    def __init__(self, cfg: Config, state: State, store: Store, clock: Clock) -> None:
        self.cfg = cfg
        self.state = state
        self.store = store
        self.clock = clock
        self.next_at = 0.0
        self.requested = False
        self.last: dict[str, Any] = {"count": 0, "running": False}
        self.health = "ok"
        self.degraded_reason = ""

    # ``now`` below is monotonic (the schedule); the document and the figures people
    # read are stamped with the wall clock.

    def schedule_from(self, now: float) -> None:
        self.next_at = now + self.cfg.snapshot_interval

    def request(self) -> dict[str, Any]:
        """``coordctl snapshot``: one is started on the next wake-up (after the batch is
        journaled). Returns the last snapshot's figures."""
        self.requested = True
        return dict(self.last)

    def on_wake(self, now: float) -> None:
        """Collect a finished child; start one when due and none is running."""
        result = self.store.poll_snapshot()
        if result is not None:
            self.done(result)
        due = now >= self.next_at or self.requested
        if due and not self.store.snapshot_running:
            self.next_at = now + self.cfg.snapshot_interval
            self.requested = False
            self.store.snapshot_background(self.state, self.clock.wall(), self.export_hook())
            self.last["running"] = self.store.snapshot_running

    def write_now(self) -> None:
        """A snapshot in the foreground (at stop, after a legacy import)."""
        self.done(self.store.snapshot(self.state, self.clock.wall(), self.export_hook()))

    def export_hook(self) -> Callable[[], None] | None:
        if not self.cfg.legacy_export:
            return None
        directory, state = self.cfg.coordination_dir, self.state
        return lambda: legacy.export_dir(directory, state)

    def done(self, result: SnapshotResult) -> None:
        self.last = {
            "count": self.last.get("count", 0) + 1,
            "running": False,
            "at": self.clock.wall(),
            **msgspec.structs.asdict(result),
        }
        if not result.ok:
            self.health = "degraded"
            self.degraded_reason = f"snapshot failed: {result.reason}"
            log.error("snapshot_failed", reason=result.reason)
            return
        metrics.SNAPSHOT_SECONDS.observe(result.seconds)
        if self.degraded_reason.startswith("snapshot failed"):
            self.health, self.degraded_reason = "ok", ""
        log.info(
            "snapshot_written",
            seconds=round(result.seconds, 4),
            blocked=round(result.blocked, 4),
            bytes=result.bytes,
            items=result.items,
        )
