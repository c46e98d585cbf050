"""What people are shown about freshness: the stale report and the dashboard.

Read-only scans of the active items (for commands, never the tick); every judgement
is asked of ``rules``, with the state's restart grace.
"""

from __future__ import annotations

import heapq

import msgspec

from coordd.core import rules
from coordd.core.model import WorkItem
from coordd.core.recovery import stale_items
from coordd.core.state import State

# Silent past this share of its threshold, an item is "potentially stale".
WARN_RATIO = 0.5


class StaleEntry(msgspec.Struct, kw_only=True):
    """One stale item as ``check-stale`` and the dashboard show it."""

    work_item_id: str
    agent_id: str | None
    work_type: str
    description: str
    silent_for: float
    threshold: float
    strategy: str
    stale_since: float | None
    last_heartbeat: float | None


class Row(msgspec.Struct, kw_only=True):
    """One active item on the dashboard: how silent it is against its threshold."""

    work_item_id: str
    agent_id: str | None
    work_type: str
    freshness: str  # fresh | potentially_stale | stale
    silent_for: float
    threshold: float
    progress: int
    stage: str | None


class Dashboard(msgspec.Struct, kw_only=True):
    """The numbers of ``freshness-dashboard``. Every active item is exactly one of
    fresh, potentially stale (silent past ``warn_ratio`` of its threshold) or stale.
    ``rows``: at most ``limit`` active items, worst first (silence / threshold)."""

    active: int
    fresh: int
    potentially_stale: int
    stale: int
    blocked: int
    warn_ratio: float
    stale_items: list[StaleEntry]
    rows: list[Row]


def stale_report(state: State, now: float) -> list[StaleEntry]:
    """The stale items, most silent first, with what recovery would apply to each."""
    return [_entry(state, item, now) for item in stale_items(state, now)]


def _entry(state: State, item: WorkItem, now: float) -> StaleEntry:
    policy = state.policy
    return StaleEntry(
        work_item_id=item.work_item_id,
        agent_id=item.agent_id,
        work_type=item.work_type,
        description=item.description,
        silent_for=state.silent_for(item, now),
        threshold=rules.threshold(policy, item),
        strategy=rules.effective_strategy(policy, item, rules.strategy(policy, item)),
        stale_since=item.stale_since,
        last_heartbeat=item.last_heartbeat,
    )


def dashboard(
    state: State, now: float, warn_ratio: float = WARN_RATIO, limit: int = 0
) -> Dashboard:
    """Count active items by freshness and keep the ``limit`` worst (a scan of the
    active items, for people)."""
    fresh = warn = 0
    stale: list[StaleEntry] = []
    rows: list[tuple[float, int, Row]] = []
    for n, item in enumerate(state.active_items()):
        if state.is_stale(item, now):
            stale.append(_entry(state, item, now))
            kind = "stale"
        elif state.is_potentially_stale(item, now, warn_ratio):
            warn += 1
            kind = "potentially_stale"
        else:
            fresh += 1
            kind = "fresh"
        if limit:
            row = _row(state, item, now, kind)
            key = (row.silent_for / row.threshold, n, row)
            if len(rows) < limit:
                heapq.heappush(rows, key)
            elif key[0] > rows[0][0]:
                heapq.heapreplace(rows, key)
    stale.sort(key=lambda e: e.silent_for, reverse=True)
    return Dashboard(
        active=fresh + warn + len(stale),
        fresh=fresh,
        potentially_stale=warn,
        stale=len(stale),
        blocked=state.counts().get("blocked", 0),
        warn_ratio=warn_ratio,
        stale_items=stale,
        rows=[r for _, _, r in sorted(rows, key=lambda k: (-k[0], k[1]))],
    )


def _row(state: State, item: WorkItem, now: float, kind: str) -> Row:
    return Row(
        work_item_id=item.work_item_id,
        agent_id=item.agent_id,
        work_type=item.work_type,
        freshness=kind,
        silent_for=state.silent_for(item, now),
        threshold=rules.threshold(state.policy, item),
        progress=item.progress,
        stage=item.stage,
    )
