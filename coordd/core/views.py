"""What people are shown: the stale report, the dashboard, and pages of items.

Read-only scans of the active items (for commands, never the tick); every judgement
is asked of ``rules``, with the state's restart grace. ``page`` walks the items in
the order they were created, one bounded page at a time.
"""

from __future__ import annotations

import heapq
import itertools
from itertools import islice
from typing import Any

import msgspec

from coordd.core import rules
from coordd.core.model import BadRequest, WorkItem
from coordd.core.recovery import stale_items
from coordd.core.state import State
from coordd.kinds import Strategy

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
    # Up to ``limit`` blocked items, each with the dependencies it waits for (status and
    # result: a failed one is the reason it stays blocked).
    blocked_items: list[dict[str, Any]] = []


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


class RecoveredEntry(msgspec.Struct, kw_only=True):
    """One recent recovery as ``check-stale`` and the dashboard show it: when, why
    (the reason names the silence and the threshold), from whom, to whom."""

    work_item_id: str
    work_type: str
    description: str
    recovered_at: float
    strategy: str | None
    reason: str | None
    recovered_from: str | None
    # Who took it over since the recovery: the next holder after a reassign (even if
    # it has finished the item since; None while nobody has), the same agent after a
    # retry, None after a fail until someone claims it again.
    now_held_by: str | None
    status: str
    recoveries: int


def recent_recoveries(state: State, now: float, window: float) -> list[RecoveredEntry]:
    """Items recovered within ``window`` seconds before ``now``, newest first."""
    out: list[RecoveredEntry] = []
    seen: set[str] = set()
    for wid in reversed(state.recent):
        item = state.items.get(wid)
        if item is None or wid in seen or item.recovered_at is None:
            continue
        if item.recovered_at < state.wall(now) - window:  # recovered_at is wall time
            break  # the deque is in recovery order: older ones follow
        seen.add(wid)
        out.append(_recovered(item))
    return out


def _recovered(item: WorkItem) -> RecoveredEntry:
    assert item.recovered_at is not None
    # Whoever took it since the recovery, even if they have finished it since (the
    # same agent after a retry); nobody while it waits, or after a fail.
    since = item.claimed_at is not None and item.claimed_at >= item.recovered_at
    held = item.agent_id if since or item.recovery_strategy == Strategy.RETRY else None
    return RecoveredEntry(
        work_item_id=item.work_item_id,
        work_type=item.work_type,
        description=item.description,
        recovered_at=item.recovered_at,
        strategy=item.recovery_strategy,
        reason=item.recovery_reason,
        recovered_from=item.recovered_from,
        now_held_by=held,
        status=item.status,
        recoveries=item.recoveries,
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
        blocked_items=[
            {"work_item_id": item.work_item_id, "waiting_on": state.waiting_on(item)}
            for item in itertools.islice(state.blocked_items(), limit)
        ],
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


class Filter(msgspec.Struct, kw_only=True):
    """What ``list`` selects on (None: any)."""

    status: str | None = None
    team: str | None = None
    agent_id: str | None = None
    work_type: str | None = None

    def __call__(self, i: WorkItem) -> bool:
        return (
            (self.status is None or i.status == self.status)
            and (self.team is None or i.team == self.team)
            and (self.agent_id is None or i.agent_id == self.agent_id)
            and (self.work_type is None or i.work_type == self.work_type)
        )


_sizer = msgspec.msgpack.Encoder()


def page(
    state: State,
    want: Filter,
    cursor: str | None,
    limit: int,
    max_bytes: int,
    max_scan: int,
) -> tuple[list[WorkItem], str | None]:
    """The next page of matching items after ``cursor`` (None: from the start), and the
    cursor of the page after it (None: the end). At most ``limit`` items, about
    ``max_bytes`` encoded, ``max_scan`` items looked at.

    A cursor is ``position:pruned:last id``: where the scan stopped in the items'
    creation order, how many items had been pruned then, and the last id looked at.
    Pruning only removes items, so an item's position can only fall, by at most the
    items pruned since: the scan resumes just after the last id, looked for in that
    window, or at the window's start (repeating some items, never skipping one)."""
    items = state.items
    start = 0 if not cursor else _resume(state, cursor)
    out: list[WorkItem] = []
    size = scanned = 0
    for item in islice(items.values(), start, None):
        scanned += 1
        if want(item):
            if len(out) >= limit:
                scanned -= 1  # not taken: the next page starts with it
                break
            out.append(item)
            size += len(_sizer.encode(item))
            if size >= max_bytes:
                break
        if scanned >= max_scan:
            break
    end = start + scanned
    if end >= len(items):
        return out, None
    last = next(islice(items, end - 1, None)) if end else ""
    return out, f"{end}:{state.pruned}:{last}"


def _resume(state: State, cursor: str) -> int:
    """Where the scan a cursor names goes on (see ``page``)."""
    try:
        pos_s, pruned_s, last = cursor.split(":", 2)
        pos, pruned_then = int(pos_s), int(pruned_s)
    except ValueError:
        raise BadRequest(f"cursor {cursor[:60]!r} is not one coordd gave") from None
    if pos < 0:
        raise BadRequest(f"cursor {cursor[:60]!r} is not one coordd gave")
    gone = state.pruned - pruned_then
    lo = 0 if gone < 0 else max(0, pos - 1 - gone)  # gone < 0: a restart reset the count
    for k, wid in enumerate(islice(state.items, lo, pos)):
        if wid == last:
            return lo + k + 1
    return lo
