"""The state machine: work items, agents, leases, indexes and the deadline heap.

Pure and synchronous, like h11: no sockets, no files, no clock reads, no logging.
Every transition takes ``now`` (seconds since the epoch, from the caller's clock),
validates, applies, and appends what happened to two outboxes the edges drain:
``records`` (for the write-ahead journal) and ``events`` (for the PUB socket and logs).

Invariants kept here:
- ``lease_seq`` only grows; an item's ``lease`` is bumped on every claim, release and
  recovery, so a holder that lost an item can never act on it again (fencing token);
- ``_pending`` holds exactly the ids of pending items, by priority then arrival;
- ``_held`` holds exactly the ids of active items, by agent;
- every active, non-stale item has one live entry in the deadline heap
  (``heap_deadline`` names it; entries whose deadline differs are dead and skipped).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import msgspec

if TYPE_CHECKING:
    from coordd.core.freshness import Policy

PRIORITIES = ("critical", "high", "medium", "low")
PRIORITY_RANK = {p: i for i, p in enumerate(PRIORITIES)}
STATUSES = ("pending", "active", "completed", "failed")


# --- domain errors: the server maps each to one stable error code ----------


class DomainError(Exception):
    code = "internal"


class BadRequest(DomainError):
    code = "bad_request"


class UnknownWork(DomainError):
    code = "unknown_work"


class UnknownAgent(DomainError):
    code = "unknown_agent"


class LeaseLost(DomainError):
    code = "lease_lost"


class NotOwner(DomainError):
    code = "not_owner"


class Conflict(DomainError):
    code = "conflict"


class NothingPending(DomainError):
    code = "nothing_pending"


class LimitReached(DomainError):
    code = "limit_reached"


# --- the model ---------------------------------------------------------------


# gc=False: these hold only scalars and plain JSON data (never a reference back to a
# struct), so they cannot be part of a cycle; untracked, a million of them no longer
# lengthen every full garbage collection (measured 27 ms -> 3 ms per 1M objects).
class WorkItem(msgspec.Struct, kw_only=True, gc=False):
    """One unit of work. Field names follow the old ``work_claims.json``."""

    work_item_id: str
    work_type: str
    description: str
    priority: str = "medium"
    team: str = ""
    status: str = "pending"
    agent_id: str | None = None
    claimed_at: float | None = None
    progress: int = 0
    stage: str | None = None
    completed_at: float | None = None
    result: str | None = None
    velocity_points: int | None = None
    last_heartbeat: float | None = None
    retry_count: int = 0
    recovery_reason: str | None = None
    recovered_at: float | None = None
    recovered_from: str | None = None
    lease: int = 0
    stale_after: float | None = None
    stale_since: float | None = None
    created_at: float = 0.0
    heap_deadline: float | None = None
    # Fields of an imported legacy item that coordd has no use for, kept verbatim
    # so an export gives them back (reactor_id, estimated_duration, telemetry, ...).
    legacy: dict[str, Any] | None = None


class Agent(msgspec.Struct, kw_only=True, gc=False):
    agent_id: str
    team: str = ""
    capacity: int = 100
    specialization: str = ""
    status: str = "active"
    last_heartbeat: float | None = None
    registered_at: float = 0.0
    tasks_completed: int = 0
    legacy: dict[str, Any] | None = None


class Completion(msgspec.Struct, kw_only=True, gc=False):
    """One line of the completion log (the old ``coordination_log.json``)."""

    work_item_id: str
    completed_at: float
    agent_id: str | None
    result: str
    velocity_points: int = 0
    team: str = ""
    legacy: dict[str, Any] | None = None


# --- journal records: physical, so replay needs no clock and no rules --------


class PutItem(msgspec.Struct, tag="item", array_like=True):
    item: WorkItem


class PutAgent(msgspec.Struct, tag="agent", array_like=True):
    agent: Agent


class AddCompletion(msgspec.Struct, tag="done", array_like=True):
    entry: Completion


Record = PutItem | PutAgent | AddCompletion


class Event(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Something an observer may care about: published on the events socket and logged."""

    event: str
    at: float
    work_item_id: str | None = None
    agent_id: str | None = None
    lease: int | None = None
    detail: str | None = None


class ItemBeatLike(Protocol):
    """One item of a heartbeat batch (``protocol.ItemBeat`` on the wire)."""

    work_item_id: str
    lease: int | None


class Limits(msgspec.Struct, kw_only=True):
    max_items: int = 5_000_000
    max_agents: int = 100_000
    max_id_len: int = 200
    max_description_len: int = 10_000


class State:
    """All of coordd's state. One instance, owned by the event loop."""

    def __init__(self, policy: Policy | None = None, limits: Limits | None = None) -> None:
        if policy is None:
            from coordd.core.freshness import Policy

            policy = Policy()
        self.policy = policy
        self.limits = limits or Limits()
        self.items: dict[str, WorkItem] = {}
        self.agents: dict[str, Agent] = {}
        self.completions: list[Completion] = []
        self.team_velocity: dict[str, int] = {}
        self.lease_seq = 0
        self._last_id_ns = 0
        # Before this moment nobody is judged stale: set at start so downtime is never
        # counted against agents that need time to reconnect.
        self.not_before = 0.0
        self._pending: dict[int, dict[str, None]] = {r: {} for r in range(len(PRIORITIES))}
        self._held: dict[str, dict[str, None]] = {}
        # Kept with the indexes so counts() costs O(1), not a walk over every item (at a
        # million items that walk stalled the loop ~145 ms on every metrics sample).
        self._n_active = 0
        self._stale: dict[str, None] = {}  # active items marked stale
        self._n_other: dict[str, int] = {}  # items in no index (completed, failed), by status
        self._heap: list[tuple[float, str]] = []
        # One ``heartbeat`` event per heartbeat message when set (config
        # ``publish_heartbeats``). Off by default: it costs more than the heartbeat itself
        # (measured 240k -> 90k heartbeats/s through the daemon).
        self.heartbeat_events = False
        # Entries ever popped from the deadline heap: what a tick costs, observable.
        self.heap_pops = 0
        self.records: list[Record] = []
        self.events: list[Event] = []
        self.counters: dict[str, int] = {
            "heartbeats": 0,
            "claims": 0,
            "completions": 0,
            "lease_refused": 0,
            "stale_detected": 0,
        }

    # --- helpers -------------------------------------------------------------

    def _emit(self, event: str, now: float, item: WorkItem | None = None, **kw: Any) -> None:
        if item is not None:
            kw.setdefault("work_item_id", item.work_item_id)
            kw.setdefault("agent_id", item.agent_id)
            kw.setdefault("lease", item.lease)
        self.events.append(Event(event=event, at=now, **kw))

    def _put(self, item: WorkItem) -> None:
        self.records.append(PutItem(item))

    def _next_lease(self) -> int:
        self.lease_seq += 1
        return self.lease_seq

    def _new_id(self, now: float, prefix: str = "work") -> str:
        # The old script's ids: work_<nanoseconds>. Deterministic in ``now``; on a
        # collision step one nanosecond, so ids stay unique and sortable by time.
        # Starting past the last id handed out keeps a burst of claims at one instant
        # O(1) each instead of walking every id taken before (O(n) each).
        ns = max(int(now * 1e9), self._last_id_ns + 1)
        while f"{prefix}_{ns}" in self.items:
            ns += 1
        self._last_id_ns = ns
        return f"{prefix}_{ns}"

    def _check_text(self, name: str, value: str, limit: int, key: str) -> None:
        if len(value) > limit:
            raise BadRequest(f"{name} is {len(value)} characters; the limit is {limit} ({key})")

    def _check_new_item(self, work_item_id: str | None, description: str) -> None:
        if len(self.items) >= self.limits.max_items:
            raise LimitReached(f"coordd holds {len(self.items)} items (max_items)")
        if work_item_id is not None:
            if not work_item_id:
                raise BadRequest("work_item_id must not be empty")
            self._check_text("work_item_id", work_item_id, self.limits.max_id_len, "max_id_len")
            if work_item_id in self.items:
                raise Conflict(f"work item {work_item_id} already exists")
        self._check_text(
            "description", description, self.limits.max_description_len, "max_description_len"
        )

    def get(self, work_item_id: str) -> WorkItem:
        item = self.items.get(work_item_id)
        if item is None:
            raise UnknownWork(f"no work item {work_item_id!r}")
        return item

    def workload(self, agent_id: str) -> int:
        return len(self._held.get(agent_id, ()))

    def active_items(self) -> Iterator[WorkItem]:
        """Every active item, through the holder index (no scan of finished items)."""
        for held in self._held.values():
            for wid in held:
                yield self.items[wid]

    def held_by(self, agent_id: str) -> Iterator[WorkItem]:
        for wid in self._held.get(agent_id, ()):
            yield self.items[wid]

    def _ensure_agent(self, agent_id: str, now: float, team: str = "") -> Agent:
        agent = self.agents.get(agent_id)
        if agent is not None:
            return agent
        if not agent_id:
            raise BadRequest("agent_id must not be empty")
        self._check_text("agent_id", agent_id, self.limits.max_id_len, "max_id_len")
        if len(self.agents) >= self.limits.max_agents:
            raise LimitReached(f"coordd holds {len(self.agents)} agents (max_agents)")
        agent = Agent(agent_id=agent_id, team=team, registered_at=now, last_heartbeat=now)
        self.agents[agent_id] = agent
        self.records.append(PutAgent(agent))
        return agent

    # --- indexes ---------------------------------------------------------------

    def _index(self, item: WorkItem) -> None:
        """Enter an item in the index its status calls for (used on load too)."""
        if item.status == "pending":
            rank = PRIORITY_RANK.get(item.priority, PRIORITY_RANK["medium"])
            self._pending[rank][item.work_item_id] = None
        elif item.status == "active" and item.agent_id is not None:
            self._held.setdefault(item.agent_id, {})[item.work_item_id] = None
            self._n_active += 1
            if item.stale_since is None:
                self._queue(item)
            else:
                self._stale[item.work_item_id] = None

    def _unindex(self, item: WorkItem) -> None:
        if item.status == "pending":
            rank = PRIORITY_RANK.get(item.priority, PRIORITY_RANK["medium"])
            self._pending[rank].pop(item.work_item_id, None)
        elif item.status == "active" and item.agent_id is not None:
            held = self._held.get(item.agent_id)
            if held is not None and item.work_item_id in held:
                del held[item.work_item_id]
                self._n_active -= 1
                if not held:
                    del self._held[item.agent_id]
            self._stale.pop(item.work_item_id, None)
        item.heap_deadline = None  # any heap entry for it is now dead

    def deadline(self, item: WorkItem) -> float:
        """When an active item becomes stale if it hears nothing more."""
        last = item.last_heartbeat if item.last_heartbeat is not None else item.created_at
        return max(last, self.not_before) + self.policy.threshold_for(item)

    def _queue(self, item: WorkItem) -> None:
        d = self.deadline(item)
        item.heap_deadline = d
        heapq.heappush(self._heap, (d, item.work_item_id))

    def pop_expired(self, now: float) -> list[WorkItem]:
        """Active items whose deadline has passed, removed from the heap.

        Cost grows with the entries whose recorded deadline has passed, not with the
        items held: a heartbeat only moves ``last_heartbeat``; the item's entry is
        re-queued at its true deadline when it surfaces.
        """
        expired: list[WorkItem] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            d, wid = heapq.heappop(heap)
            self.heap_pops += 1
            item = self.items.get(wid)
            if item is None or item.heap_deadline != d:
                continue  # a dead entry
            true_deadline = self.deadline(item)
            if true_deadline > now:
                item.heap_deadline = true_deadline
                heapq.heappush(heap, (true_deadline, wid))
                continue
            item.heap_deadline = None
            expired.append(item)
        return expired

    def requeue_deadlines(self) -> None:
        """Rebuild the deadline heap from the active items under the current policy.

        After a policy change (reload): ``pop_expired`` re-queues an entry that surfaces
        too early, but an entry queued under a longer threshold would surface too late.
        """
        heap: list[tuple[float, str]] = []
        for held in self._held.values():
            for wid in held:
                item = self.items[wid]
                if item.stale_since is None:
                    item.heap_deadline = self.deadline(item)
                    heap.append((item.heap_deadline, wid))
        heapq.heapify(heap)
        self._heap = heap

    def rebuild_indexes(self) -> None:
        """Recompute every index from ``items`` (after a load or a replay)."""
        # What _index does for each item, unrolled: at a million items the calls, the
        # heappush per item and max() per item were 1.5 s of a restart. Entries are
        # appended and the heap built once (heapify is O(n), n heappushes O(n log n)).
        pending: dict[int, dict[str, None]] = {r: {} for r in range(len(PRIORITIES))}
        held: dict[str, dict[str, None]] = {}
        heap: list[tuple[float, str]] = []
        rank_of, medium = PRIORITY_RANK.get, PRIORITY_RANK["medium"]
        threshold_for, not_before = self.policy.threshold_for, self.not_before
        push = heap.append
        top_lease = self.lease_seq
        stale: dict[str, None] = {}
        other: dict[str, int] = {}
        n_active = 0
        for item in self.items.values():
            if item.lease > top_lease:
                top_lease = item.lease
            item.heap_deadline = None
            status = item.status
            if status == "pending":
                pending[rank_of(item.priority, medium)][item.work_item_id] = None
            elif status == "active" and item.agent_id is not None:
                wid = item.work_item_id
                mine = held.get(item.agent_id)
                if mine is None:
                    mine = held[item.agent_id] = {}
                mine[wid] = None
                n_active += 1
                if item.stale_since is not None:
                    stale[wid] = None
                else:
                    last = item.last_heartbeat
                    if last is None:
                        last = item.created_at
                    d = max(last, not_before) + threshold_for(item)  # as self.deadline
                    item.heap_deadline = d
                    push((d, wid))
            else:
                other[status] = other.get(status, 0) + 1
        heapq.heapify(heap)
        self._stale, self._n_other, self._n_active = stale, other, n_active
        self._pending, self._held, self._heap = pending, held, heap
        self.lease_seq = top_lease

    # --- holder checks --------------------------------------------------------------

    def _check_holder(
        self, item: WorkItem, agent_id: str | None, lease: int | None, now: float
    ) -> None:
        """Refuse a request from anyone but the current holder.

        ``agent_id`` None means an operator on the control socket: ownership is not
        checked, the lease still is when given. A refusal to a fenced-off holder
        (old lease, or the agent the item was recovered from) emits ``lease_lost``.
        """
        if lease is not None and lease != item.lease:
            self._lease_lost(
                item,
                now,
                agent_id,
                lease,
                f"lease {lease} on {item.work_item_id} is stale (current lease {item.lease},"
                f" status {item.status})",
            )
        fenced = item.recovered_from is not None and item.recovered_from == agent_id
        if fenced and (agent_id != item.agent_id or item.status != "active"):
            # Recovered away from this agent (reassigned, or failed while it was silent).
            self._lease_lost(
                item,
                now,
                agent_id,
                lease,
                f"{item.work_item_id} was recovered from {agent_id} ({item.recovery_reason})",
            )
        if agent_id is not None and agent_id != item.agent_id:
            raise NotOwner(f"{item.work_item_id} is held by {item.agent_id or 'nobody'}")
        if item.status != "active":
            raise Conflict(f"{item.work_item_id} is {item.status}, not active")

    def _lease_lost(
        self, item: WorkItem, now: float, agent_id: str | None, lease: int | None, message: str
    ) -> NoReturn:
        self.counters["lease_refused"] += 1
        self._emit("lease_lost", now, item, agent_id=agent_id, lease=lease, detail=message)
        raise LeaseLost(message)

    # --- transitions --------------------------------------------------------------

    def register(
        self,
        agent_id: str,
        now: float,
        team: str = "",
        capacity: int = 100,
        specialization: str = "",
    ) -> Agent:
        """Create or update an agent."""
        if capacity < 0:
            raise BadRequest("capacity must be >= 0")
        agent = self._ensure_agent(agent_id, now, team)
        agent.team = team or agent.team
        agent.capacity = capacity
        agent.specialization = specialization or agent.specialization
        agent.status = "active"
        agent.last_heartbeat = now
        self.records.append(PutAgent(agent))
        self._emit("registered", now, agent_id=agent_id)
        return agent

    def add(
        self,
        work_type: str,
        description: str,
        now: float,
        priority: str = "medium",
        team: str = "",
        work_item_id: str | None = None,
        stale_after: float | None = None,
    ) -> WorkItem:
        """Put a pending item in the backlog."""
        self._check_priority(priority)
        self._check_stale_after(stale_after)
        self._check_new_item(work_item_id, description)
        item = WorkItem(
            work_item_id=work_item_id or self._new_id(now),
            work_type=work_type,
            description=description,
            priority=priority,
            team=team,
            created_at=now,
            stale_after=stale_after,
        )
        self.items[item.work_item_id] = item
        self._index(item)
        self._put(item)
        self._emit("added", now, item)
        return item

    def claim(
        self,
        agent_id: str,
        work_type: str,
        description: str,
        now: float,
        priority: str = "medium",
        team: str = "",
        work_item_id: str | None = None,
        stale_after: float | None = None,
    ) -> WorkItem:
        """Create an item and claim it at once (the old ``claim``)."""
        self._check_priority(priority)
        self._check_stale_after(stale_after)
        self._check_new_item(work_item_id, description)
        self._ensure_agent(agent_id, now, team)
        item = WorkItem(
            work_item_id=work_item_id or self._new_id(now),
            work_type=work_type,
            description=description,
            priority=priority,
            team=team,
            created_at=now,
            stale_after=stale_after,
        )
        self.items[item.work_item_id] = item
        self._take(item, agent_id, now)
        return item

    def claim_next(
        self,
        agent_id: str,
        now: float,
        work_type: str | None = None,
        team: str | None = None,
        work_item_id: str | None = None,
    ) -> WorkItem:
        """Take the most urgent pending item (critical first, then oldest)."""
        if work_item_id is not None:
            item = self.get(work_item_id)
            if item.status != "pending":
                raise Conflict(f"{work_item_id} is {item.status}, not pending")
        else:
            found = self._find_pending(work_type, team)
            if found is None:
                raise NothingPending(_describe_filter(work_type, team))
            item = found
        self._ensure_agent(agent_id, now)
        self._unindex(item)
        self._take(item, agent_id, now)
        return item

    def _find_pending(self, work_type: str | None, team: str | None) -> WorkItem | None:
        for rank in range(len(PRIORITIES)):
            for wid in self._pending[rank]:
                item = self.items[wid]
                if work_type is not None and item.work_type != work_type:
                    continue
                if team is not None and item.team != team:
                    continue
                return item
        return None

    def _take(self, item: WorkItem, agent_id: str, now: float) -> None:
        item.status = "active"
        item.agent_id = agent_id
        item.claimed_at = now
        item.last_heartbeat = now
        item.stale_since = None
        item.lease = self._next_lease()
        self._index(item)
        self._put(item)
        self.counters["claims"] += 1
        self._emit("claimed", now, item)

    def heartbeat(
        self,
        agent_id: str,
        now: float,
        work_item_id: str | None = None,
        lease: int | None = None,
        progress: int | None = None,
    ) -> int:
        """Refresh an agent (and all it holds) or one item. Returns items refreshed.

        Touches memory only (no journal record) unless ``progress`` changes: a heartbeat
        lost in a crash costs at most one interval of freshness, never data.
        """
        n = self._heartbeat(agent_id, now, work_item_id, lease, progress)
        if self.heartbeat_events:
            self._emit(
                "heartbeat",
                now,
                agent_id=agent_id,
                work_item_id=work_item_id,
                lease=lease,
                detail=f"refreshed {n}",
            )
        return n

    def _heartbeat(
        self,
        agent_id: str,
        now: float,
        work_item_id: str | None,
        lease: int | None,
        progress: int | None,
    ) -> int:
        agent = self.agents.get(agent_id)
        if work_item_id is None:
            if agent is None:
                raise UnknownAgent(f"no agent {agent_id!r}; register or claim first")
            agent.last_heartbeat = now
            n = 0
            for wid in self._held.get(agent_id, ()):
                self._refresh(self.items[wid], now)
                n += 1
            self.counters["heartbeats"] += max(n, 1)
            return n
        item = self.items.get(work_item_id)
        if (
            item is not None
            and item.agent_id == agent_id
            and (lease is None or lease == item.lease)
            and item.status == "active"
            and item.stale_since is None
            and (progress is None or progress == item.progress)
        ):
            # The common case in one test (the holder refreshing a fresh item): what the
            # general path below would do, without its calls. Heartbeats are the hot path.
            item.last_heartbeat = now
            if agent is not None:
                agent.last_heartbeat = now
            self.counters["heartbeats"] += 1
            return 1
        item = self.get(work_item_id)
        self._check_holder(item, agent_id, lease, now)
        if agent is not None:
            agent.last_heartbeat = now
        self._refresh(item, now)
        if progress is not None and progress != item.progress:
            self._set_progress(item, progress, None)
        self.counters["heartbeats"] += 1
        return 1

    def heartbeat_batch(
        self, agent_id: str, now: float, beats: Iterable[ItemBeatLike]
    ) -> tuple[int, list[tuple[str, DomainError]]]:
        """Item heartbeats of one agent: (items refreshed, refusals by item). Every item
        is refreshed exactly as ``heartbeat`` would one by one; at most one event for the
        whole batch, never one per item."""
        items = self.items
        refused: list[tuple[str, DomainError]] = []
        fast = slow = 0
        for beat in beats:
            wid, lease = beat.work_item_id, beat.lease
            item = items.get(wid)
            if (
                item is not None
                and item.agent_id == agent_id
                and (lease is None or lease == item.lease)
                and item.status == "active"
                and item.stale_since is None
            ):
                item.last_heartbeat = now  # the holder refreshing a fresh item
                fast += 1
                continue
            try:
                slow += self._heartbeat(agent_id, now, wid, lease, None)
            except DomainError as e:
                refused.append((wid, e))
        if fast:
            agent = self.agents.get(agent_id)
            if agent is not None:
                agent.last_heartbeat = now
            self.counters["heartbeats"] += fast
        if self.heartbeat_events:
            self._emit("heartbeat", now, agent_id=agent_id, detail=f"refreshed {fast + slow}")
        return fast + slow, refused

    def _refresh(self, item: WorkItem, now: float) -> None:
        item.last_heartbeat = now
        if item.stale_since is not None:
            # A stale item left alone (strategy ``none``) is fresh again.
            item.stale_since = None
            self._stale.pop(item.work_item_id, None)
            self._queue(item)
            self._emit("fresh_again", now, item)

    def progress(
        self,
        work_item_id: str,
        progress: int,
        now: float,
        agent_id: str | None = None,
        lease: int | None = None,
        stage: str | None = None,
    ) -> WorkItem:
        """Record progress (0-100); counts as a heartbeat."""
        item = self.get(work_item_id)
        self._check_holder(item, agent_id, lease, now)
        self._set_progress(item, progress, stage)
        self._refresh(item, now)
        return item

    def _set_progress(self, item: WorkItem, progress: int, stage: str | None) -> None:
        if not 0 <= progress <= 100:
            raise BadRequest(f"progress must be 0-100, got {progress}")
        item.progress = progress
        if stage is not None:
            item.stage = stage
        self._put(item)

    def complete(
        self,
        work_item_id: str,
        now: float,
        agent_id: str | None = None,
        lease: int | None = None,
        result: str = "success",
        velocity: int = 0,
    ) -> WorkItem:
        """Finish an item: log it and credit the team's velocity."""
        if velocity < 0:
            raise BadRequest(f"velocity must be >= 0, got {velocity}")
        item = self.get(work_item_id)
        self._check_holder(item, agent_id, lease, now)
        self._finish(item, now, "completed", result, velocity)
        self.counters["completions"] += 1
        agent = self.agents.get(item.agent_id or "")
        if agent is not None:
            agent.tasks_completed += 1
            self.records.append(PutAgent(agent))
        return item

    def _finish(self, item: WorkItem, now: float, status: str, result: str, velocity: int) -> None:
        self._unindex(item)
        item.status = status
        self._n_other[status] = self._n_other.get(status, 0) + 1
        item.completed_at = now
        item.result = result
        item.velocity_points = velocity
        item.progress = 100 if status == "completed" else item.progress
        self._put(item)
        entry = Completion(
            work_item_id=item.work_item_id,
            completed_at=now,
            agent_id=item.agent_id,
            result=result,
            velocity_points=velocity,
            team=item.team,
        )
        self._log_completion(entry)
        self._emit(status, now, item, detail=result)

    def _log_completion(self, entry: Completion) -> None:
        self.completions.append(entry)
        if entry.velocity_points:
            self.team_velocity[entry.team] = (
                self.team_velocity.get(entry.team, 0) + entry.velocity_points
            )
        self.records.append(AddCompletion(entry))

    def release(
        self,
        work_item_id: str,
        now: float,
        agent_id: str | None = None,
        lease: int | None = None,
    ) -> WorkItem:
        """Give an item back to the backlog; its holder is fenced off."""
        item = self.get(work_item_id)
        self._check_holder(item, agent_id, lease, now)
        self._to_pending(item)
        self._put(item)
        self._emit("released", now, item, agent_id=agent_id)
        return item

    def _to_pending(self, item: WorkItem) -> None:
        self._unindex(item)
        item.status = "pending"
        item.agent_id = None
        item.stale_since = None
        item.lease = self._next_lease()
        self._index(item)

    # --- recovery primitives (the rules that choose them live in freshness.py) ----

    def mark_stale(self, item: WorkItem, now: float) -> None:
        item.stale_since = now
        self._stale[item.work_item_id] = None
        item.heap_deadline = None
        self.counters["stale_detected"] += 1
        silent = now - (item.last_heartbeat or item.created_at)
        self._emit("stale_detected", now, item, detail=f"silent {silent:.1f}s")

    def recover_reassign(self, item: WorkItem, now: float, reason: str) -> None:
        """Back to pending for another agent; the old holder is fenced off."""
        holder = item.agent_id
        self._to_pending(item)
        self._mark_recovered(item, now, reason, holder, "reassign")

    def recover_retry(self, item: WorkItem, now: float, reason: str) -> None:
        """Same agent starts over: progress 0, one more retry, fresh heartbeat."""
        self._unindex(item)
        item.progress = 0
        item.retry_count += 1
        item.last_heartbeat = now
        item.stale_since = None
        self._index(item)
        self._mark_recovered(item, now, reason, None, "retry")

    def recover_fail(self, item: WorkItem, now: float, reason: str) -> None:
        """Give up: status failed, released, logged with result ``failed_stale``."""
        holder = item.agent_id
        item.recovery_reason = reason
        item.recovered_at = now
        item.recovered_from = holder
        # Released: a new lease fences off the silent holder should it come back.
        item.lease = self._next_lease()
        self._finish(item, now, "failed", "failed_stale", 0)
        self._emit("recovered", now, item, agent_id=holder, detail="fail")

    def _mark_recovered(
        self, item: WorkItem, now: float, reason: str, holder: str | None, strategy: str
    ) -> None:
        item.recovery_reason = reason
        item.recovered_at = now
        if holder is not None:
            item.recovered_from = holder
        self._put(item)
        self._emit("recovered", now, item, agent_id=holder or item.agent_id, detail=strategy)

    # --- reads -----------------------------------------------------------------

    def select(
        self,
        status: str | None = None,
        team: str | None = None,
        agent_id: str | None = None,
        work_type: str | None = None,
    ) -> Iterable[WorkItem]:
        if agent_id is not None and status == "active":
            return list(self.held_by(agent_id))
        return (
            i
            for i in self.items.values()
            if (status is None or i.status == status)
            and (team is None or i.team == team)
            and (agent_id is None or i.agent_id == agent_id)
            and (work_type is None or i.work_type == work_type)
        )

    def counts(self) -> dict[str, int]:
        """Items by status, stale active items, items, agents: O(1), from the indexes."""
        by_status = {s: 0 for s in STATUSES}
        for status, n in self._n_other.items():
            by_status[status] = by_status.get(status, 0) + n
        by_status["pending"] += sum(len(d) for d in self._pending.values())
        by_status["active"] += self._n_active
        return {
            **by_status,
            "stale": len(self._stale),
            "items": len(self.items),
            "agents": len(self.agents),
        }

    # --- replay -------------------------------------------------------------------

    def apply_record(self, rec: Record) -> None:
        """Apply one journal record (replay). Indexes are rebuilt after the whole replay."""
        if isinstance(rec, PutItem):
            self.items[rec.item.work_item_id] = rec.item
            self.lease_seq = max(self.lease_seq, rec.item.lease)
        elif isinstance(rec, PutAgent):
            self.agents[rec.agent.agent_id] = rec.agent
        else:
            self.completions.append(rec.entry)
            if rec.entry.velocity_points:
                team = rec.entry.team
                points = rec.entry.velocity_points
                self.team_velocity[team] = self.team_velocity.get(team, 0) + points

    def drain(self) -> tuple[list[Record], list[Event]]:
        """Take what happened since the last drain (the edges write and publish it)."""
        records, events = self.records, self.events
        self.records, self.events = [], []
        return records, events

    # --- validation ----------------------------------------------------------------

    @staticmethod
    def _check_priority(priority: str) -> None:
        if priority not in PRIORITY_RANK:
            raise BadRequest(f"priority must be one of {', '.join(PRIORITIES)}; got {priority!r}")

    @staticmethod
    def _check_stale_after(stale_after: float | None) -> None:
        if stale_after is not None and not stale_after > 0:
            raise BadRequest(f"stale_after must be > 0 seconds, got {stale_after}")


def _describe_filter(work_type: str | None, team: str | None) -> str:
    parts = [f"type {work_type}" if work_type else "", f"team {team}" if team else ""]
    what = " and ".join(p for p in parts if p)
    return f"nothing pending{' for ' + what if what else ''}"
