"""The web process's own copy of coordd's state, and the queries pages make of it.

Loaded once from a full view, then kept by events (each carries the item as it is
now) and by a bounded sweep of the active items for what events do not carry
(heartbeats, progress). Pure: no sockets, no clock reads (``now`` is a parameter),
no locks (the caller holds one).

Filters and pages are answered here, not by the daemon: membership indexes by status,
team, type and agent (insertion-ordered dicts, so a page is the newest first without a
sort), and a result cache per query that is recomputed only when membership changed,
and no more often than its own cost allows, so a million items and fifty pages do not
turn into fifty scans per update.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from coordd.core import rules
from coordd.core.model import WorkItem
from coordd.core.rules import Policy
from coordd.kinds import Status
from coordd.web import shapes

RECENT_EVENTS = 50
SERIES_POINTS = 120  # per-second points: two minutes
MINUTE_POINTS = 30  # per-minute points: half an hour
PAGE_MAX = 200
# The order of the items table, most in need of a look first.
GROUPS = ("stale", "active", "pending", "failed", "completed")
HELD = frozenset({"stale", "active"})
# What the status filter offers, and the groups each one means.
STATUSES = ("active", "stale", "pending", "failed", "completed")
GROUPS_OF = {"active": ("stale", "active"), **{g: (g,) for g in GROUPS if g != "active"}}
OPTIONS_MAX = 200  # distinct teams/types/agents offered as filter choices
# A query's result is reused until membership changes, and at least this long, or
# 20 times what computing it cost (a scan of a million items is not redone 4x/s).
MIN_REUSE = 0.25
REUSE_FACTOR = 20.0
# Held items are ordered by silence, which changes without any membership change: a
# cheap result is redone at least this often.
REORDER_EVERY = 1.0


@dataclass(frozen=True)
class Query:
    """What one page asks to see."""

    status: str = ""
    team: str = ""
    work_type: str = ""
    agent: str = ""
    text: str = ""
    offset: int = 0
    limit: int = 50

    def key(self) -> tuple[str, ...]:
        return (self.status, self.team, self.work_type, self.agent, self.text.lower())


@dataclass
class _Result:
    ids: list[str]
    membership: int
    computed_at: float
    cost: float


@dataclass
class Series:
    """Per-second rates from the daemon's counters, per-minute counts from events."""

    per_second: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)
    per_minute: dict[str, deque[tuple[float, int]]] = field(default_factory=dict)
    _last: dict[str, tuple[float, int]] = field(default_factory=dict)

    def counter(self, name: str, value: int, now: float) -> None:
        """A counter's value at ``now``: the rate since the last value is one point."""
        last = self._last.get(name)
        self._last[name] = (now, value)
        if last is None or now <= last[0] or value < last[1]:
            return  # first sample, or the daemon restarted (counters reset)
        points = self.per_second.setdefault(name, deque(maxlen=SERIES_POINTS))
        points.append((now, (value - last[1]) / (now - last[0])))

    def tick(self, name: str, at: float) -> None:
        """One occurrence of ``name`` at ``at``, counted in its minute."""
        minute = float(int(at // 60) * 60)
        points = self.per_minute.setdefault(name, deque(maxlen=MINUTE_POINTS))
        if points and points[-1][0] == minute:
            points[-1] = (minute, points[-1][1] + 1)
        elif not points or points[-1][0] < minute:
            points.append((minute, 1))

    def view(self) -> dict[str, Any]:
        return {
            "per_second": {k: [[t, round(v, 2)] for t, v in d] for k, d in self.per_second.items()},
            "per_minute": {k: [list(p) for p in d] for k, d in self.per_minute.items()},
        }


class Mirror:
    """Items and agents as last heard from coordd, with indexes for the page's filters."""

    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy or Policy()
        self.items: dict[str, WorkItem] = {}
        self.agents: dict[str, dict[str, Any]] = {}
        self._ix: dict[str, dict[str, dict[str, None]]] = {
            "group": {},  # the status, with active split into "stale" and "active"
            "team": {},
            "work_type": {},
            "agent": {},
            "holder": {},  # the agent of an active item; "" for every other item
        }
        self.events: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self.series = Series()
        self.daemon: dict[str, Any] = {}
        self.ai: dict[str, Any] = {"status": None, "latest": None, "running": False}
        self.last_seq: int | None = None
        self.version = 0  # any change a page might show
        self.membership = 0  # a change of which items a filter matches
        self.loaded = False
        self.resyncs = 0
        self._results: dict[tuple[str, ...], _Result] = {}
        self._options: tuple[int, dict[str, list[str]]] = (-1, {})

    # --- loading and keeping -------------------------------------------------------

    def load(self, items: Iterable[WorkItem], agents: Iterable[dict[str, Any]]) -> None:
        """Replace everything with a full view."""
        self.items = {}
        for ix in self._ix.values():
            ix.clear()
        for item in items:
            self.put(item)
        self.set_agents(agents)
        self.loaded = True
        self.membership += 1
        self.version += 1
        self._results.clear()

    def set_agents(self, agents: Iterable[dict[str, Any]]) -> None:
        self.agents = {a["agent_id"]: a for a in agents}
        self.version += 1

    def put(self, item: WorkItem) -> None:
        """Take ``item`` as the truth about its id, keeping the indexes."""
        wid = item.work_item_id
        old = self.items.get(wid)
        if old is not None and _keys(old) == _keys(item):
            self.items[wid] = item
            self.version += 1
            return
        if old is not None:
            for name, value in zip(self._ix, _keys(old), strict=True):
                bucket = self._ix[name].get(value)
                if bucket is not None:
                    bucket.pop(wid, None)
                    if not bucket:
                        del self._ix[name][value]
        for name, value in zip(self._ix, _keys(item), strict=True):
            # Re-inserted at the end: a page's newest first is "last changed first".
            self._ix[name].setdefault(value, {})[wid] = None
        self.items[wid] = item
        self.membership += 1
        self.version += 1

    def refresh(self, item: WorkItem) -> None:
        """An active item as a sweep read it: taken only if the copy has not moved on
        meanwhile (an event about it may have been applied after the read), so a sweep
        never undoes a completion or a recovery."""
        mine = self.items.get(item.work_item_id)
        if mine is None:
            self.put(item)
        elif (
            mine.status == item.status
            and mine.lease == item.lease
            and (item.last_heartbeat or 0.0) > (mine.last_heartbeat or 0.0)
        ):
            # Progress and stage change with a heartbeat (the daemon refreshes on
            # progress), so a newer heartbeat is a newer read of this holding.
            self.items[item.work_item_id] = item
            self.version += 1

    def apply(
        self,
        event: str,
        at: float,
        seq: int | None,
        item: WorkItem | None,
        work_item_id: str | None = None,
        agent_id: str | None = None,
        detail: str | None = None,
    ) -> bool:
        """One published event. False when events were missed (a gap in ``seq``, or
        ``seq`` going back: the daemon restarted): the caller reloads a full view."""
        in_order = seq is None or self.last_seq is None or seq == self.last_seq + 1
        if seq is not None:
            self.last_seq = seq
        if item is not None:
            self.put(item)
        if event in ("registered",) and agent_id and agent_id not in self.agents:
            self.agents[agent_id] = {"agent_id": agent_id, "last_heartbeat": at}
        if event == "heartbeat":
            self._heard(agent_id, work_item_id, at)
        else:
            self.events.append(shapes.event_row(event, at, work_item_id, agent_id, detail))
        if event in ("stale_detected", "recovered"):
            self.series.tick(event, at)
        self.version += 1
        return in_order

    def _heard(self, agent_id: str | None, work_item_id: str | None, at: float) -> None:
        # Only with publish_heartbeats on: the sweep does this job otherwise.
        agent = self.agents.get(agent_id or "")
        if agent is not None:
            agent["last_heartbeat"] = at
        targets = [work_item_id] if work_item_id else list(self.held(agent_id or ""))
        for wid in targets:
            item = self.items.get(wid)
            if item is not None and item.agent_id == agent_id:
                item.last_heartbeat = at

    def restarted(self, reply: dict[str, Any]) -> bool:
        """Whether a ``status`` reply comes from another daemon process than the last
        one applied (a restart: the caller reloads a full view)."""
        return bool(self.daemon) and reply.get("pid") != self.daemon.get("pid")

    def status(self, reply: dict[str, Any], now: float) -> bool:
        """The daemon's ``status``: counters for the rates, the daemon's facts, its
        threshold. Returns ``restarted(reply)`` as it was before applying it."""
        restarted = self.restarted(reply)
        self.daemon = {
            k: reply.get(k)
            for k in ("version", "pid", "health", "degraded_reason", "stale_threshold", "recovery")
        }
        counters = reply.get("counters", {})
        for name in ("heartbeats", "claims", "completions"):
            if name in counters:
                self.series.counter(name, int(counters[name]), now)
        threshold = reply.get("stale_threshold")
        if isinstance(threshold, int | float) and threshold != self.policy.stale_threshold:
            self.policy = Policy(
                stale_threshold=float(threshold),
                recovery=self.policy.recovery,
                max_retries=self.policy.max_retries,
                retry_escalation=self.policy.retry_escalation,
                work_types=self.policy.work_types,
            )
        self.version += 1
        return restarted

    # --- reads -------------------------------------------------------------------

    def held(self, agent_id: str) -> Iterable[str]:
        """Ids of the active items ``agent_id`` holds."""
        return self._ix["holder"].get(agent_id, {}) if agent_id else ()

    def holders(self) -> list[str]:
        """Agents holding at least one active item (what the sweep visits)."""
        return [a for a in self._ix["holder"] if a]

    def matching(self, q: Query, now: float, clock: Any = None) -> list[str]:
        """Ids matching the query's filters, newest first (cached, see module doc)."""
        key = q.key()
        cached = self._results.get(key)
        age = now - cached.computed_at if cached is not None else 0.0
        if cached is not None and (
            (cached.membership == self.membership and age < REORDER_EVERY)
            or age < max(MIN_REUSE, REUSE_FACTOR * cached.cost)
        ):
            return cached.ids
        started = clock() if clock else 0.0
        ids = list(self._scan(q))
        cost = (clock() - started) if clock else 0.0
        self._results[key] = _Result(ids, self.membership, now, cost)
        if len(self._results) > 256:  # forget the oldest queries
            self._results.pop(next(iter(self._results)))
        return ids

    def _scan(self, q: Query) -> Iterator[str]:
        """Matching ids in the order a person wants them: stale first, then active,
        pending, failed, completed; within each, last changed first. Each group walks
        the smallest of its filter buckets, so a narrow filter never walks a million."""
        others = [
            self._ix[name].get(value, {})
            for name, value in (("team", q.team), ("work_type", q.work_type), ("agent", q.agent))
            if value
        ]
        text = q.text.lower()
        items = self.items
        for group in GROUPS_OF.get(q.status, GROUPS) if q.status else GROUPS:
            buckets = [self._ix["group"].get(group, {}), *others]
            smallest = min(buckets, key=len)
            rest = [b for b in buckets if b is not smallest]
            found = (
                wid
                for wid in reversed(smallest)
                if all(wid in b for b in rest) and (not text or _mentions(items[wid], text))
            )
            if group in HELD:
                # Held items most silent first: the late ones come up before they go red.
                yield from sorted(found, key=lambda wid: rules.last_heard(items[wid]))
            else:
                yield from found

    def page(self, q: Query, now: float, clock: Any = None) -> dict[str, Any]:
        """The rows of one page of the query, and how many match in all."""
        ids = self.matching(q, now, clock)
        limit = max(1, min(q.limit, PAGE_MAX))
        offset = max(0, min(q.offset, max(0, len(ids) - 1)))
        rows = []
        for wid in ids[offset : offset + limit]:
            item = self.items.get(wid)
            if item is not None:
                rows.append(shapes.item_row(item, rules.threshold(self.policy, item)))
        return {"total": len(ids), "offset": offset, "limit": limit, "rows": rows}

    def options(self) -> dict[str, list[str]]:
        """The values each filter can take (at most OPTIONS_MAX each)."""
        if self._options[0] == self.membership:
            return self._options[1]
        out = {"status": list(STATUSES)}
        for name in ("team", "work_type", "agent"):
            values = sorted(v for v in self._ix[name] if v)
            out[name] = values[:OPTIONS_MAX]
        self._options = (self.membership, out)
        return out

    def agent_rows(self, limit: int = 100) -> dict[str, Any]:
        """Agents, most silent first (the ones to look at), with what each holds."""
        ranked = sorted(self.agents.values(), key=lambda a: a.get("last_heartbeat") or 0.0)
        rows = []
        for a in ranked[:limit]:
            held = self._ix["holder"].get(a["agent_id"], {}) if a["agent_id"] else {}
            rows.append(shapes.agent_row(a, len(held), list(islice(held, 3))))
        return {"total": len(self.agents), "rows": rows}

    def item_counts(self) -> dict[str, int]:
        """Items by status from the copy (exact as of the last event, unlike the
        daemon's ``status``, which is asked once a second)."""
        size = {g: len(self._ix["group"].get(g, {})) for g in GROUPS}
        return {
            "pending": size["pending"],
            "active": size["active"] + size["stale"],
            "stale": size["stale"],
            "completed": size["completed"],
            "failed": size["failed"],
            "items": len(self.items),
            "agents": len(self.agents),
        }

    def summary(self) -> dict[str, Any]:
        """What every page shows whatever its filters: counts, series, events, AI."""
        return {
            "counts": self.item_counts(),
            "series": self.series.view(),
            "events": list(reversed(self.events))[:30],
            "daemon": self.daemon,
            "ai": self.ai,
            "loaded": self.loaded,
            "resyncs": self.resyncs,
            "items_held": len(self.items),
        }


def _keys(item: WorkItem) -> tuple[str, str, str, str, str]:
    """The item's value in each index, in the order of ``Mirror._ix``."""
    agent = item.agent_id or ""
    active = item.status == Status.ACTIVE
    group = ("stale" if item.stale_since is not None else "active") if active else str(item.status)
    return (group, item.team, item.work_type, agent, agent if active else "")


def _mentions(item: WorkItem, text: str) -> bool:
    return any(
        text in field_value.lower()
        for field_value in (
            item.work_item_id,
            item.description,
            item.work_type,
            item.team,
            item.agent_id or "",
            item.stage or "",
        )
    )
