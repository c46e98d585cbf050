"""The state machine: work items, agents, leases, indexes and the deadline heap.

Pure and synchronous, like h11: no sockets, no files, no clock reads, no logging.
Every transition takes ``now``, seconds on the caller's monotonic clock (every silence
and deadline is measured on it: a step of the wall clock recovers nobody), and stamps
what people read and files keep with wall time, ``now + wall_offset``, the offset the
caller last gave ``set_clock`` (0 by default: then ``now`` is wall time too). It
validates, applies, and appends what happened to two outboxes the edges drain:
``records`` (for the write-ahead journal) and ``events`` (for the PUB socket and logs).
When an item is stale is asked of ``rules``; the tick and recovery that act on it
drive this object from ``recovery``.

Invariants kept here:
- ``lease_seq`` only grows; an item's ``lease`` is bumped on every claim, release and
  recovery, so a holder that lost an item can never act on it again (fencing token);
- the indexes (``indexes.Indexes``) say what the items say: pending ids by priority
  then arrival, active ids by holder, stale ids, counts by status;
- every active, non-stale item has one live entry in the deadline heap, whose
  deadline is never later than ``rules.deadline`` for the item: nobody is judged late
  (an early entry is re-queued when it surfaces).
The policy, the restart grace and a restore change through methods that keep these.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from typing import Any, NoReturn

from coordd.core import rules
from coordd.core.indexes import Indexes
from coordd.core.model import (
    MAX_TOTAL,
    AddCompletion,
    Agent,
    Applied,
    BadRequest,
    Completion,
    Conflict,
    DomainError,
    Event,
    ItemBeatLike,
    LeaseLost,
    LimitReached,
    Limits,
    NothingPending,
    NotOwner,
    Pruned,
    PutAgent,
    PutItem,
    Record,
    Revocation,
    UnknownAgent,
    UnknownWork,
    WorkItem,
)
from coordd.core.revocations import LostLeases
from coordd.core.rules import Policy
from coordd.kinds import PRIORITY_RANK, Priority, Status, Strategy

# Recently recovered items remembered for ``check-stale`` and the dashboard.
RECENT_RECOVERIES = 10_000

# On Python 3.11 reading ``Status.ACTIVE`` costs ~75 ns (EnumType defines __getattr__, so
# every class attribute read goes through a Python-level hook): a quarter of a heartbeat's
# fast path. The heartbeat paths compare against this module constant instead (~18 ns).
_ACTIVE = Status.ACTIVE


class State:
    """All of coordd's state. One instance, owned by the event loop."""

    def __init__(self, policy: Policy | None = None, limits: Limits | None = None) -> None:
        self.policy = policy or Policy()
        self.limits = limits or Limits()
        self.items: dict[str, WorkItem] = {}
        self.agents: dict[str, Agent] = {}
        self.completions: list[Completion] = []
        self.team_velocity: dict[str, int] = {}
        self.lease_seq = 0
        self._last_id_ns = 0
        # Items pruned by retention since this process started (list cursors use it).
        self.pruned = 0
        # The restart grace (see ``rules``): nobody is judged on silence before it.
        self.not_before = 0.0
        # Wall time minus monotonic time, as of the caller's last reading (``set_clock``).
        self.wall_offset = 0.0
        self._ix = Indexes()
        # One ``heartbeat`` event per heartbeat message when set (config
        # ``publish_heartbeats``). Off by default: it costs more than the heartbeat itself
        # (measured 240k -> 90k heartbeats/s through the daemon).
        self.heartbeat_events = False
        # Replies of applied requests that carried an id, oldest first (see ``applied``).
        # An OrderedDict: dropping the oldest is O(1) (a dict's front fills with holes).
        self.applied: OrderedDict[str, Applied] = OrderedDict()
        self.records: list[Record] = []
        self.events: list[Event] = []
        # Leases lost to recoveries: pushed by the edge once durable (``take_revocations``)
        # and answered to the agent's next agent-level heartbeat (``take_lost``).
        self.revocations: list[Revocation] = []
        self.lost = LostLeases()
        # Ids of recently recovered items, oldest first (a view's index: rebuilt at load).
        self.recent: deque[str] = deque(maxlen=RECENT_RECOVERIES)
        self.counters: dict[str, int] = {
            "heartbeats": 0,
            "claims": 0,
            "completions": 0,
            "lease_refused": 0,
            "stale_detected": 0,
        }

    # --- policy, restart grace, restore: the changes that move every deadline ------

    def set_policy(self, policy: Policy) -> bool:
        """Apply a new freshness policy (reload); False when it is the same one."""
        if policy == self.policy:
            return False
        self.policy = policy
        # Items left stale under ``none`` are judged again by the new policy: one that
        # now has a strategy is recovered at the next tick (if still silent past its
        # threshold), instead of staying stale for ever.
        self._revive_stale(lambda item: rules.strategy(policy, item) != Strategy.NONE)
        # Deadlines were queued under the old thresholds: a shorter one must act now,
        # not when its old entry surfaces. (~1 s per million active items.)
        self._ix.requeue(self.items, self.policy, self.not_before)
        return True

    def set_clock(self, wall: float, mono: float) -> None:
        """The caller's two clocks, read together: what ``now`` (monotonic) is in wall
        time from here on. Silence already measured is unchanged whatever the step."""
        self.wall_offset = wall - mono

    def wall(self, now: float) -> float:
        """Wall time of the monotonic instant ``now``: what timestamps are written as."""
        return now + self.wall_offset

    def start_grace(self, now: float) -> None:
        """Start the restart grace at ``now``: silence before it is not counted, for
        every active item, stale ones included (they were judged under the old run's
        policy; the grace over, the current one applies)."""
        moved_back = now < self.not_before
        self.not_before = now
        self._revive_stale(lambda _item: True)
        # A later grace only moves deadlines later, so every heap entry is still early
        # or on time (re-queued when it surfaces); an earlier one would leave late ones.
        if moved_back:
            self._ix.requeue(self.items, self.policy, self.not_before)

    def _revive_stale(self, which: Any) -> None:
        """Unmark the stale items ``which`` selects and queue them at their deadline."""
        for wid in [w for w in self._ix.stale if which(self.items[w])]:
            item = self.items[wid]
            item.stale_since = None
            self._ix.unmark_stale(wid)
            self._ix.queue(wid, self.deadline(item))

    def restore(
        self,
        items: Iterable[WorkItem] = (),
        agents: Iterable[Agent] = (),
        completions: Iterable[Completion] = (),
        team_velocity: dict[str, int] | None = None,
        lease_seq: int = 0,
        records: Iterable[Record] = (),
        applied: Iterable[Applied] = (),
    ) -> int:
        """Replace the content with a snapshot's, replay ``records`` after it, rebuild
        the indexes. Returns the records applied."""
        self.applied = OrderedDict((a.request_id, a) for a in applied)
        self.items = {i.work_item_id: i for i in items}
        self.agents = {a.agent_id: a for a in agents}
        self.completions = list(completions)
        # Clamped: a file written before velocities were bounded may hold totals that
        # no reply can encode (finding: one team at 2**65 broke ``status`` for good).
        self.team_velocity = {t: _capped(v, 0) for t, v in (team_velocity or {}).items()}
        self.lease_seq = lease_seq
        n = 0
        for rec in records:
            self.apply_record(rec)
            n += 1
        self.rebuild_indexes()
        recovered = sorted(
            (i for i in self.items.values() if i.recovered_at is not None),
            key=lambda i: i.recovered_at or 0.0,
        )
        self.recent = deque((i.work_item_id for i in recovered), maxlen=RECENT_RECOVERIES)
        return n

    # --- freshness, as the rules judge it with this state's policy and grace --------

    def heard(self, item: WorkItem) -> float:
        """When ``item`` was last heard of, on the monotonic clock (see ``rules``)."""
        h = self._ix.heard.get(item.work_item_id)
        return h if h is not None else rules.last_heard(item) - self.wall_offset

    def silent_for(self, item: WorkItem, now: float) -> float:
        """Seconds ``item`` has been silent at ``now`` (monotonic; grace not applied)."""
        return rules.silent_for(self.heard(item), now)

    def deadline(self, item: WorkItem) -> float:
        """When an active item becomes stale if it hears nothing more."""
        return rules.deadline(self.policy, item, self.heard(item), self.not_before)

    def is_stale(self, item: WorkItem, now: float) -> bool:
        """Whether ``item`` is stale at ``now`` (see ``rules.is_stale``)."""
        return rules.is_stale(self.policy, item, self.heard(item), now, self.not_before)

    def is_potentially_stale(self, item: WorkItem, now: float, warn_ratio: float) -> bool:
        """Not stale, but silent past ``warn_ratio`` of its threshold at ``now``."""
        heard = self.heard(item)
        return rules.is_potentially_stale(
            self.policy, item, heard, now, self.not_before, warn_ratio
        )

    @property
    def heap_size(self) -> int:
        """Entries in the deadline heap, dead ones included: what it costs in memory."""
        return len(self._ix.heap)

    @property
    def heap_pops(self) -> int:
        """Entries ever popped from the deadline heap: what ticks cost, observable."""
        return self._ix.pops

    # --- helpers -------------------------------------------------------------

    def _emit(self, event: str, now: float, item: WorkItem | None = None, **kw: Any) -> None:
        if item is not None:
            kw.setdefault("work_item_id", item.work_item_id)
            kw.setdefault("agent_id", item.agent_id)
            kw.setdefault("lease", item.lease)
        self.events.append(Event(event=event, at=now + self.wall_offset, **kw))

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
        ns = max(int((now + self.wall_offset) * 1e9), self._last_id_ns + 1)
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

    def resolve(self, given: str) -> str:
        """The full id of the one item ``given`` abbreviates, as coordctl shows ids at 80
        columns (``work_…731840``: prefix, ``…`` or ``...``, then the tail; or just the
        tail, 4 characters or more). An exact id is itself. A scan of every id: for
        operators on the control socket, on a miss only."""
        if given in self.items:
            return given
        head, tail = "", given
        for sep in ("…", "..."):
            if sep in given:
                head, _, tail = given.partition(sep)
                break
        if len(tail) < 4:
            raise UnknownWork(f"no work item {given!r}")
        found = []
        for wid in self.items:
            if wid.endswith(tail) and wid.startswith(head):
                found.append(wid)
                if len(found) > 3:
                    break
        if not found:
            raise UnknownWork(f"no work item {given!r}")
        if len(found) > 1:
            raise BadRequest(f"{given!r} is ambiguous: {', '.join(found)}...; give more of it")
        return found[0]

    def workload(self, agent_id: str) -> int:
        return len(self._ix.held.get(agent_id, ()))

    def active_items(self) -> Iterator[WorkItem]:
        """Every active item, through the holder index (no scan of finished items)."""
        for held in self._ix.held.values():
            for wid in held:
                yield self.items[wid]

    def held_by(self, agent_id: str) -> Iterator[WorkItem]:
        for wid in self._ix.held_ids(agent_id):
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
        t = now + self.wall_offset
        agent = Agent(agent_id=agent_id, team=team, registered_at=t, last_heartbeat=t)
        self.agents[agent_id] = agent
        self.records.append(PutAgent(agent))
        return agent

    # --- indexes (derived data: see ``indexes``) ---------------------------------

    def _index(self, item: WorkItem, heard: float | None = None) -> None:
        """Index ``item``; an active one was last heard of at ``heard`` (monotonic),
        by default when its wall times say."""
        if heard is None:
            heard = rules.last_heard(item) - self.wall_offset
        unmet = rules.unmet(item, self.items) if item.after and item.status == "pending" else ()
        self._ix.enter(item, self.policy, self.not_before, heard, unmet)

    def _unindex(self, item: WorkItem) -> None:
        self._ix.leave(item)

    def pop_expired(self, now: float, limit: int | None = None) -> list[WorkItem]:
        """Active items whose deadline has passed (at most ``limit``, earliest deadline
        first), removed from the heap.

        Cost grows with the entries whose recorded deadline has passed, not with the
        items held: a heartbeat only moves ``last_heartbeat``; the item's entry is
        re-queued at its true deadline when it surfaces.
        """
        return self._ix.pop_expired(now, self.items, self.policy, self.not_before, limit)

    def expired_waiting(self, now: float) -> bool:
        """A bounded ``pop_expired`` left entries whose deadline has passed."""
        return self._ix.expired_waiting(now)

    def rebuild_indexes(self) -> None:
        """Recompute every index from ``items`` (after a load, a replay or an import)."""
        top = self._ix.rebuild(self.items, self.policy, self.not_before, self.wall_offset)
        self.lease_seq = max(self.lease_seq, top)

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
        if fenced and (agent_id != item.agent_id or item.status != Status.ACTIVE):
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
        if item.status != Status.ACTIVE:
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
        capacity: int | None = None,
        specialization: str = "",
        heartbeat_interval: float | None = None,
    ) -> Agent:
        """Create or update an agent (``None``: keep what it has)."""
        if capacity is not None and capacity < 0:
            raise BadRequest("capacity must be >= 0")
        agent = self._ensure_agent(agent_id, now, team)
        agent.team = team or agent.team
        if capacity is not None:
            agent.capacity = capacity
        if heartbeat_interval is not None:
            agent.heartbeat_interval = heartbeat_interval
        agent.specialization = specialization or agent.specialization
        agent.status = "active"
        agent.last_heartbeat = now + self.wall_offset
        self.records.append(PutAgent(agent))
        self._emit("registered", now, agent_id=agent_id)
        return agent

    def add(
        self,
        work_type: str,
        description: str,
        now: float,
        priority: str = Priority.MEDIUM,
        team: str = "",
        work_item_id: str | None = None,
        stale_after: float | None = None,
        after: list[str] | None = None,
    ) -> WorkItem:
        """Put a pending item in the backlog; with ``after`` it waits for those items
        to complete with result ``success`` (blocked until then)."""
        item = self._new_item(
            work_item_id, work_type, description, priority, team, stale_after, after, now
        )
        self.items[item.work_item_id] = item
        self._index(item, now)
        self._put(item)
        self._emit("added", now, item)
        return item

    def _new_item(
        self,
        work_item_id: str | None,
        work_type: str,
        description: str,
        priority: str,
        team: str,
        stale_after: float | None,
        after: list[str] | None,
        now: float,
    ) -> WorkItem:
        """A new item built from checked fields (not stored yet): what add and claim
        refuse alike, before either changes anything."""
        self._check_priority(priority)
        self._check_stale_after(stale_after)
        self._check_new_item(work_item_id, description)
        return WorkItem(
            work_item_id=work_item_id or self._new_id(now),
            work_type=work_type,
            description=description,
            priority=Priority(priority),
            team=team,
            created_at=now + self.wall_offset,
            stale_after=stale_after,
            after=self._check_after(work_item_id, after),
        )

    def claim(
        self,
        agent_id: str,
        work_type: str,
        description: str,
        now: float,
        priority: str = Priority.MEDIUM,
        team: str = "",
        work_item_id: str | None = None,
        stale_after: float | None = None,
        after: list[str] | None = None,
    ) -> WorkItem:
        """Create an item and claim it at once (the old ``claim``). With ``after``, only
        when each of those items has completed with result ``success``."""
        item = self._new_item(
            work_item_id, work_type, description, priority, team, stale_after, after, now
        )
        known = self.agents.get(agent_id)
        refusal = rules.claim_threshold_refusal(
            stale_after, known.heartbeat_interval if known else None, self.policy, agent_id
        )
        if refusal is not None:
            raise BadRequest(refusal)
        unmet = [d for d in item.after or () if not rules.dependency_met(self.items.get(d))]
        if unmet:
            raise Conflict(f"blocked: {self._describe_unmet(unmet)}; claim it when they succeed")
        self._ensure_agent(agent_id, now, team)
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
            if item.status != Status.PENDING:
                raise Conflict(f"{work_item_id} is {item.status}, not pending")
            unmet = self.unmet(item)
            if unmet:
                raise Conflict(f"{work_item_id} is blocked: {self._describe_unmet(unmet)}")
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
        for rank in range(len(PRIORITY_RANK)):
            for wid in self._ix.pending[rank]:
                item = self.items[wid]
                if work_type is not None and item.work_type != work_type:
                    continue
                if team is not None and item.team != team:
                    continue
                return item
        return None

    def _take(self, item: WorkItem, agent_id: str, now: float) -> None:
        item.status = Status.ACTIVE
        item.agent_id = agent_id
        item.claimed_at = item.last_heartbeat = now + self.wall_offset
        item.stale_since = None
        item.lease = self._next_lease()
        self._index(item, now)
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
        checkpoint: str | None = None,
    ) -> int:
        """Refresh an agent (and all it holds) or one item. Returns items refreshed.

        Touches memory only (no journal record) unless ``progress`` or ``checkpoint``
        changes: a heartbeat lost in a crash costs at most one interval of freshness,
        never data.
        """
        item = self.items.get(work_item_id) if work_item_id is not None else None
        if (
            item is not None
            and item.agent_id == agent_id
            and (lease is None or lease == item.lease)
            and item.status == _ACTIVE
            and item.stale_since is None
            and (progress is None or progress == item.progress)
            and (checkpoint is None or checkpoint == item.checkpoint)
            and not self.heartbeat_events
        ):
            # The common case in one test (the holder refreshing a fresh item, no event
            # asked for): what the general path does, without its calls. Heartbeats are
            # the hot path; one Python call less is ~4% of a one-way heartbeat.
            self._ix.heard[item.work_item_id] = now
            item.last_heartbeat = wall = now + self.wall_offset
            agent = self.agents.get(agent_id)
            if agent is not None:
                agent.last_heartbeat = wall
            self.counters["heartbeats"] += 1
            return 1
        n = self._heartbeat(agent_id, now, work_item_id, lease, progress, checkpoint)
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
        checkpoint: str | None = None,
    ) -> int:
        agent = self.agents.get(agent_id)
        if work_item_id is None:
            if checkpoint is not None:
                raise BadRequest("a checkpoint belongs to an item: name work_item_id")
            if agent is None:
                raise UnknownAgent(f"no agent {agent_id!r}; register or claim first")
            agent.last_heartbeat = now + self.wall_offset
            n = 0
            for wid in self._ix.held.get(agent_id, ()):
                self._refresh(self.items[wid], now)
                n += 1
            self.counters["heartbeats"] += max(n, 1)
            return n
        item = self.get(work_item_id)
        self._check_holder(item, agent_id, lease, now)
        if agent is not None:
            agent.last_heartbeat = now + self.wall_offset
        self._refresh(item, now)
        changed = checkpoint is not None and checkpoint != item.checkpoint
        if changed:
            item.checkpoint = checkpoint
        if progress is not None and progress != item.progress:
            self._set_progress(item, progress, None)  # journals the checkpoint with it
        elif changed:
            self._put(item)
        self.counters["heartbeats"] += 1
        return 1

    def heartbeat_batch(
        self, agent_id: str, now: float, beats: Iterable[ItemBeatLike]
    ) -> tuple[int, list[tuple[str, DomainError]]]:
        """Item heartbeats of one agent: (items refreshed, refusals by item). Every item
        is refreshed exactly as ``heartbeat`` would one by one; at most one event for the
        whole batch, never one per item."""
        items, heard = self.items, self._ix.heard
        wall = now + self.wall_offset
        refused: list[tuple[str, DomainError]] = []
        fast = slow = 0
        for beat in beats:
            wid, lease = beat.work_item_id, beat.lease
            item = items.get(wid)
            if (
                item is not None
                and item.agent_id == agent_id
                and (lease is None or lease == item.lease)
                and item.status == _ACTIVE
                and item.stale_since is None
            ):
                heard[wid] = now  # the holder refreshing a fresh item
                item.last_heartbeat = wall
                fast += 1
                continue
            try:
                slow += self._heartbeat(agent_id, now, wid, lease, None)
            except DomainError as e:
                refused.append((wid, e))
        if fast:
            agent = self.agents.get(agent_id)
            if agent is not None:
                agent.last_heartbeat = wall
            self.counters["heartbeats"] += fast
        if self.heartbeat_events:
            self._emit("heartbeat", now, agent_id=agent_id, detail=f"refreshed {fast + slow}")
        return fast + slow, refused

    def _refresh(self, item: WorkItem, now: float) -> None:
        item.last_heartbeat = now + self.wall_offset
        if item.work_item_id in self._ix.heard:  # active (the caller checked the holder)
            self._ix.heard[item.work_item_id] = now
        if item.stale_since is not None:
            # A stale item left alone (strategy ``none``) is fresh again.
            item.stale_since = None
            self._ix.unmark_stale(item.work_item_id)
            self._ix.queue(item.work_item_id, self.deadline(item))
            self._emit("fresh_again", now, item)

    def progress(
        self,
        work_item_id: str,
        progress: int,
        now: float,
        agent_id: str | None = None,
        lease: int | None = None,
        stage: str | None = None,
        checkpoint: str | None = None,
    ) -> WorkItem:
        """Record progress (0-100) and the checkpoint if given; counts as a heartbeat."""
        item = self.get(work_item_id)
        self._check_holder(item, agent_id, lease, now)
        if checkpoint is not None:
            item.checkpoint = checkpoint
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
        self._finish(item, now, Status.COMPLETED, result, velocity)
        self.counters["completions"] += 1
        agent = self.agents.get(item.agent_id or "")
        if agent is not None:
            agent.tasks_completed += 1
            self.records.append(PutAgent(agent))
        return item

    def _finish(
        self, item: WorkItem, now: float, status: Status, result: str, velocity: int
    ) -> None:
        self._unindex(item)
        item.status = status
        self._ix.count_finished(item.work_item_id, status)
        item.completed_at = now + self.wall_offset
        item.result = result
        item.velocity_points = velocity
        item.progress = 100 if status == Status.COMPLETED else item.progress
        item.stage = None  # the stage of work in hand; none is in hand any more
        self._put(item)
        entry = Completion(
            work_item_id=item.work_item_id,
            completed_at=now + self.wall_offset,
            agent_id=item.agent_id,
            result=result,
            velocity_points=velocity,
            team=item.team,
        )
        self._log_completion(entry)
        self._emit(status, now, item, detail=result)
        if rules.dependency_met(item):
            self._release_dependents(item.work_item_id, now)

    def _release_dependents(self, dep: str, now: float) -> None:
        """``dep`` succeeded: each item waiting for it and for nothing else is ready."""
        for wid in self._ix.waiting_on(dep):
            waiter = self.items[wid]
            self._unindex(waiter)
            self._index(waiter)  # ready now, or still waiting for another one
            if waiter.work_item_id not in self._ix.waiting:
                self._emit("ready", now, waiter, detail=f"{dep} succeeded")

    def _log_completion(self, entry: Completion) -> None:
        self.completions.append(entry)
        self._credit(entry)
        self.records.append(AddCompletion(entry))

    def _credit(self, entry: Completion) -> None:
        """Add a completion's points to its team's velocity, saturating (see ``_capped``)."""
        if entry.velocity_points:
            team = entry.team
            self.team_velocity[team] = _capped(
                self.team_velocity.get(team, 0), entry.velocity_points
            )

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

    def retry(self, work_item_id: str, now: float) -> WorkItem:
        """Put a failed item (dead-lettered or not) back to pending: progress, retries
        and recoveries start again from 0; the checkpoint is kept for the next holder."""
        item = self.get(work_item_id)
        if item.status != Status.FAILED:
            raise Conflict(f"{work_item_id} is {item.status}; only failed items can be retried")
        self._ix.forget_finished(work_item_id, item.status)
        item.status = Status.PENDING
        item.agent_id = None
        item.progress = 0
        item.completed_at = None
        item.result = None
        item.velocity_points = None
        item.retry_count = 0
        item.recoveries = 0
        item.stale_since = None
        item.lease = self._next_lease()
        self._index(item)
        self._put(item)
        self._emit("retried", now, item)
        return item

    def _to_pending(self, item: WorkItem) -> None:
        self._unindex(item)
        item.status = Status.PENDING
        item.agent_id = None
        item.stale_since = None
        item.lease = self._next_lease()
        self._index(item)

    # --- recovery primitives (``recovery`` chooses them, ``rules`` judges) ----------

    def mark_stale(self, item: WorkItem, now: float) -> None:
        """Record that ``item`` was found stale at ``now`` (once: it leaves the heap)."""
        item.stale_since = now + self.wall_offset
        self._ix.mark_stale(item.work_item_id)
        self.counters["stale_detected"] += 1
        silent = self.silent_for(item, now)
        self._emit("stale_detected", now, item, detail=f"silent {silent:.1f}s")

    def recover_reassign(self, item: WorkItem, now: float, reason: str) -> None:
        """Back to pending for another agent; the old holder is fenced off."""
        holder, lease = item.agent_id, item.lease
        self._to_pending(item)
        self._mark_recovered(item, now, reason, holder, Strategy.REASSIGN)
        self._revoke(item, holder, lease, reason, Strategy.REASSIGN)

    def recover_retry(self, item: WorkItem, now: float, reason: str) -> None:
        """Same agent starts over: progress 0, one more retry, fresh heartbeat."""
        self._unindex(item)
        item.progress = 0
        item.retry_count += 1
        item.last_heartbeat = now + self.wall_offset
        item.stale_since = None
        self._index(item, now)
        self._mark_recovered(item, now, reason, None, Strategy.RETRY)

    def recover_fail(
        self, item: WorkItem, now: float, reason: str, result: str = "failed_stale"
    ) -> None:
        """Give up: status failed, released, logged with ``result`` (``failed_stale``,
        or ``too_many_recoveries`` for a dead letter)."""
        holder, lease = item.agent_id, item.lease
        self._stamp_recovery(item, now, reason, holder, Strategy.FAIL)
        # Released: a new lease fences off the silent holder should it come back.
        item.lease = self._next_lease()
        self._finish(item, now, Status.FAILED, result, 0)
        self._emit("recovered", now, item, agent_id=holder, detail="fail")
        self._revoke(item, holder, lease, reason, Strategy.FAIL)

    def _mark_recovered(
        self, item: WorkItem, now: float, reason: str, holder: str | None, strategy: str
    ) -> None:
        self._stamp_recovery(item, now, reason, holder, strategy)
        self._put(item)
        self._emit("recovered", now, item, agent_id=holder or item.agent_id, detail=strategy)

    def _stamp_recovery(
        self, item: WorkItem, now: float, reason: str, holder: str | None, strategy: str
    ) -> None:
        """What every recovery records on the item (and in the recent list)."""
        item.recovery_reason = reason
        item.recovered_at = now + self.wall_offset
        item.recoveries += 1
        item.recovery_strategy = strategy
        self.recent.append(item.work_item_id)
        if holder is not None:
            item.recovered_from = holder

    # --- retention ----------------------------------------------------------------

    def prune(self, before: float, at_most: int) -> int:
        """Forget finished items that finished before ``before`` (wall time) and the
        completion-log entries logged before it, at most ``at_most`` of each (the rest
        goes next time): memory follows the work held and recent, not all history.
        Team velocity totals are kept. Journaled (``Pruned``); returns items pruned."""
        items, finished, dependents = self.items, self._ix.finished, self._ix.dependents
        gone: list[str] = []
        for wid in finished:
            if len(gone) >= at_most:
                break
            done_at = items[wid].completed_at
            if done_at is not None and done_at >= before:
                break
            # An item that others still wait on is kept: a missing dependency counts as
            # met, so forgetting a failed one would unblock its dependents.
            if dependents.get(wid):
                continue
            gone.append(wid)
        log = self.completions
        k = 0
        while k < len(log) and k < at_most and log[k].completed_at < before:
            k += 1
        if not gone and not k:
            return 0
        # The log's cut as a time, not a count, so the record is idempotent; at most
        # ``at_most`` entries go (the entry after them is not earlier than the cut).
        log_before = min(before, log[k].completed_at) if k < len(log) else before
        rec = Pruned(gone, log_before if k else 0.0)
        self.apply_record(rec)
        self.records.append(rec)
        return len(gone)

    def _apply_pruned(self, rec: Pruned) -> None:
        for wid in rec.work_item_ids:
            item = self.items.pop(wid, None)
            if item is None:
                continue  # pruned already
            if wid in self._ix.finished:  # (a replay rebuilds the indexes after)
                self._ix.forget_finished(wid, item.status)
            self.pruned += 1
        log = self.completions
        k = 0
        while k < len(log) and log[k].completed_at < rec.log_before:
            k += 1
        del log[:k]

    # --- revocations --------------------------------------------------------------

    def _revoke(
        self, item: WorkItem, holder: str | None, lease: int, reason: str, strategy: str
    ) -> None:
        """The holder lost ``lease``: queue the push, keep it for its next heartbeat."""
        if holder is None:
            return
        rev = Revocation(
            work_item_id=item.work_item_id,
            lease=lease,
            agent_id=holder,
            reason=reason,
            strategy=strategy,
        )
        self.revocations.append(rev)
        self.lost.add(rev)

    def take_revocations(self) -> list[Revocation]:
        """The leases lost since the last call, each with the item's holder now."""
        out, self.revocations = self.revocations, []
        for rev in out:
            item = self.items.get(rev.work_item_id)
            if item is not None and item.status == Status.ACTIVE and item.agent_id != rev.agent_id:
                rev.new_holder = item.agent_id
        return out

    def take_lost(self, agent_id: str) -> list[Revocation]:
        """What ``agent_id`` lost since it last asked (its agent-level heartbeat)."""
        return self.lost.take(agent_id)

    # --- reads -----------------------------------------------------------------

    def select(
        self,
        status: str | None = None,
        team: str | None = None,
        agent_id: str | None = None,
        work_type: str | None = None,
        ready: bool = False,
    ) -> Iterable[WorkItem]:
        """Items matching every filter given; ``ready``: pending and not blocked, most
        urgent first (claim-next's order)."""
        if ready:
            if status not in (None, Status.PENDING) or agent_id is not None:
                return ()
            ids = (wid for rank in sorted(self._ix.pending) for wid in self._ix.pending[rank])
            return (
                i
                for i in (self.items[wid] for wid in ids)
                if (team is None or i.team == team)
                and (work_type is None or i.work_type == work_type)
            )
        if agent_id is not None and status == Status.ACTIVE:
            return list(self.held_by(agent_id))
        return (
            i
            for i in self.items.values()
            if (status is None or i.status == status)
            and (team is None or i.team == team)
            and (agent_id is None or i.agent_id == agent_id)
            and (work_type is None or i.work_type == work_type)
        )

    def unmet(self, item: WorkItem) -> list[str]:
        """The dependencies ``item`` still waits for (none unless pending)."""
        if item.status != Status.PENDING or not item.after:
            return []
        return rules.unmet(item, self.items)

    def blocked_items(self) -> Iterator[WorkItem]:
        """The pending items a dependency blocks, from their index (no scan)."""
        for wid in self._ix.waiting:
            yield self.items[wid]

    def waiting_on(self, item: WorkItem) -> list[dict[str, Any]]:
        """Each unmet dependency of a blocked item with its status and result, so a
        reader sees why it waits (a failed dependency blocks until it succeeds)."""
        out = []
        for dep_id in self.unmet(item):
            dep = self.items.get(dep_id)
            status = None if dep is None else str(dep.status)
            result = None if dep is None else dep.result
            out.append({"work_item_id": dep_id, "status": status, "result": result, "met": False})
        return out

    def _describe_unmet(self, unmet: list[str]) -> str:
        parts = []
        for dep_id in unmet:
            dep = self.items.get(dep_id)
            if dep is not None and dep.status in (Status.COMPLETED, Status.FAILED):
                parts.append(f"{dep_id} {dep.status} ({dep.result})")
            else:
                parts.append(f"{dep_id} {dep.status if dep else 'unknown'}")
        return "waits for " + ", ".join(parts)

    def counts(self) -> dict[str, int]:
        """Items by status, stale active items, items, agents: O(1), from the indexes."""
        return {**self._ix.counts(), "items": len(self.items), "agents": len(self.agents)}

    # --- replay -------------------------------------------------------------------

    def apply_record(self, rec: Record) -> None:
        """Apply one journal record (replay). Indexes are rebuilt after the whole replay."""
        if isinstance(rec, PutItem):
            self.items[rec.item.work_item_id] = rec.item
            self.lease_seq = max(self.lease_seq, rec.item.lease)
        elif isinstance(rec, PutAgent):
            self.agents[rec.agent.agent_id] = rec.agent
        elif isinstance(rec, Applied):
            self.applied[rec.request_id] = rec
        elif isinstance(rec, Pruned):
            self._apply_pruned(rec)
        else:
            self.completions.append(rec.entry)
            self._credit(rec.entry)

    # --- request ids: a resend is answered, not applied again ------------------------

    def reply_for(self, request_id: str) -> bytes | None:
        """The reply data of an applied request with this id, if it is remembered."""
        done = self.applied.get(request_id)
        return None if done is None else done.reply

    def remember(self, request_id: str, now: float, reply: bytes) -> None:
        """Remember (and journal, with the transition) the reply to a request with an id."""
        done = Applied(request_id, now + self.wall_offset, reply)  # kept in files: wall
        self.applied[request_id] = done
        self.records.append(done)

    def forget_applied(self, before: float, keep_at_most: int) -> int:
        """Drop remembered replies older than ``before`` (and beyond ``keep_at_most``);
        oldest first, so this costs what it drops. Not journaled: every holder of the
        state forgets by the same rule."""
        applied, n = self.applied, 0
        while applied:
            oldest = next(iter(applied.values()))
            if oldest.at >= before and len(applied) <= keep_at_most:
                break
            applied.popitem(last=False)
            n += 1
        return n

    def follow(self, records: Iterable[Record]) -> int:
        """Apply records another coordd journaled (a standby following its leader),
        keeping every index as ``restore`` would build it; returns the records applied."""
        n = 0
        for rec in records:
            if isinstance(rec, PutItem):
                old, item = self.items.get(rec.item.work_item_id), rec.item
                if item.recovered_at is not None and (
                    old is None or old.recovered_at != item.recovered_at
                ):
                    self.recent.append(item.work_item_id)  # what check-stale lists
                self.apply_record(rec)
                unmet = (
                    rules.unmet(item, self.items) if item.after and item.status == "pending" else ()
                )
                heard = rules.last_heard(item) - self.wall_offset
                self._ix.replace(old, item, self.policy, self.not_before, heard, unmet)
            else:
                self.apply_record(rec)
            n += 1
        return n

    def drain(self) -> tuple[list[Record], list[Event]]:
        """Take what happened since the last drain (the edges write and publish it)."""
        records, events = self.records, self.events
        self.records, self.events = [], []
        return records, events

    # --- validation ----------------------------------------------------------------

    @staticmethod
    def _check_priority(priority: str) -> None:
        if priority not in PRIORITY_RANK:
            raise BadRequest(f"priority must be one of {', '.join(Priority)}; got {priority!r}")

    def _check_after(self, work_item_id: str | None, after: list[str] | None) -> list[str] | None:
        """Dependencies must name known items, once each. A new item cannot close a
        cycle (nothing can wait for an item before it exists) except by naming itself."""
        if not after:
            return None
        deps = list(dict.fromkeys(after))
        if work_item_id is not None and work_item_id in deps:
            raise BadRequest(f"{work_item_id} cannot wait for itself (a dependency cycle)")
        unknown = [d for d in deps if d not in self.items]
        if unknown:
            raise UnknownWork(f"--after names no known work item: {', '.join(unknown)}")
        return deps

    @staticmethod
    def _check_stale_after(stale_after: float | None) -> None:
        # Finite too: ``inf`` was shown as Infinity and read back from the snapshot as null.
        if stale_after is not None and not 0 < stale_after < math.inf:
            raise BadRequest(f"stale_after must be > 0 seconds and finite, got {stale_after}")


def _capped(total: int, points: int) -> int:
    """``total + points`` held within 0..MAX_TOTAL: what msgpack, JSON readers and every
    reply can carry, whatever an older journal or snapshot holds."""
    return min(MAX_TOTAL, max(0, total + points))


def _describe_filter(work_type: str | None, team: str | None) -> str:
    parts = [f"type {work_type}" if work_type else "", f"team {team}" if team else ""]
    what = " and ".join(p for p in parts if p)
    return f"nothing pending{' for ' + what if what else ''}"
