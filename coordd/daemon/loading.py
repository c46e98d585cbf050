"""Start-up: the state from disk (snapshot + journal), and the old JSON files on a
first start (``legacy_import``). Runs before any socket is bound."""

from __future__ import annotations

import structlog

from coordd import legacy
from coordd.config import Config
from coordd.core.state import State
from coordd.daemon.snapshots import Snapshots
from coordd.storage.store import Store

log = structlog.get_logger("coordd")


def load_state(
    cfg: Config,
    state: State,
    store: Store,
    snapshots: Snapshots,
    now: float,
    writable: bool = True,
) -> None:
    """Snapshot + journal replay, then a legacy import if this is a first start (and
    ``writable``: a standby writes nothing); the restart grace starts at ``now``
    (monotonic; downtime, and any step of the wall clock while down, is never counted
    against an agent). Raises ``StoreError`` when the store cannot be read."""
    report = store.load(state)
    log.info(
        "state_loaded",
        snapshot=report.snapshot,
        records_replayed=report.records,
        torn_bytes_dropped=report.torn_bytes,
        previous_snapshot_used=bool(report.fallback),
        upgraded_from_format=report.upgraded_from or None,
        items=len(state.items),
        generation=report.generation,
    )
    first_start = not report.snapshot
    legacy_files = cfg.legacy_import and legacy.has_legacy_files(cfg.coordination_dir)
    if first_start and writable and legacy_files:
        import_legacy(cfg.coordination_dir, state, store, snapshots, state.wall(now))
    snapshots.schedule_from(now)
    state.start_grace(now)


def import_legacy(
    directory: str, state: State, store: Store, snapshots: Snapshots, now: float
) -> None:
    """Journal what the old files hold, then snapshot it at once (``now``: wall time,
    the import's stamp for rows that have none)."""
    records, summary = legacy.import_dir(directory, state, now)
    store.append(records)
    store.sync()
    log.info(
        "legacy_imported",
        directory=directory,
        **summary.imported,
        mapped=len(summary.mapped),
        skipped=len(summary.skipped),
    )
    for line in summary.mapped:
        log.info("legacy_mapped", detail=line)
    for line in summary.skipped:
        log.warning("legacy_skipped", detail=line)
    snapshots.write_now()
