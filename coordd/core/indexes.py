"""The indexes of ``State``: derived data, rebuilt at load, never persisted or shown.

Pending ids by priority then arrival (ready ones only: an item waiting for others is
in ``waiting``, found again through ``dependents`` when one of them succeeds), active
ids by holder, the stale set, counts by status, and the deadline heap. Apart from the
state machine because it is a job of its own (keeping derived data equal to what the
items say) and the hot paths (heartbeat, tick, restart) depend on how it is laid out.

Heap entries are ``(deadline, work_item_id)``; ``live`` maps an id to the deadline of
its one live entry, so an entry whose deadline differs is dead and skipped when it
surfaces (cheaper than removing it from the middle of the heap). Dead entries are not
left to wait for their deadline: once they outnumber the live ones (twice over, plus a
constant) the heap is rebuilt from ``live``, so its size follows the items held, not
the claims made (400k claim/release cycles once left 400k entries, ~37 MB).

``heard`` is when each active item was last heard of on the monotonic clock (see
``rules``): what deadlines are computed from. It is index data like the heap: rebuilt
at load from the items' wall times, never persisted.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence

from coordd.core.model import WorkItem
from coordd.core.rules import Policy, deadline, last_heard, unmet
from coordd.kinds import PRIORITY_RANK, Priority, Status

_MEDIUM = PRIORITY_RANK[Priority.MEDIUM]
# Module constants, not Status.X in enter/leave (run per claim and per recovery): an
# enum class attribute read costs ~75 ns on Python 3.11 (EnumType.__getattr__).
_PENDING, _ACTIVE = Status.PENDING, Status.ACTIVE
# Heap entries a bounded pop_expired may pop per item it may return: a dead entry or a
# re-queue costs ~1-2 us, a recovery ~10 us, so the heap work stays below the recoveries'.
POPS_PER_EXPIRED = 4
# Dead heap entries tolerated beyond twice the live ones before the heap is rebuilt:
# small heaps are not rebuilt over and over for a handful of entries.
HEAP_SLACK = 1024


class Indexes:
    """Where each item is found by status, and when each active item falls due."""

    def __init__(self) -> None:
        self.pending: dict[int, dict[str, None]] = {r: {} for r in range(len(PRIORITY_RANK))}
        # Pending items blocked by a dependency, and for each dependency the items it
        # blocks: claim-next never looks at a blocked item, and a success releases
        # exactly its dependents (no scan).
        self.waiting: dict[str, None] = {}
        self.dependents: dict[str, dict[str, None]] = {}
        self.held: dict[str, dict[str, None]] = {}
        # Kept with the indexes so counts() costs O(1), not a walk over every item (at a
        # million items that walk stalled the loop ~145 ms on every metrics sample).
        self.n_active = 0
        self.stale: dict[str, None] = {}  # active items marked stale
        self.n_other: dict[str, int] = {}  # items in no index (completed, failed), by status
        # Finished (completed, failed) ids, oldest finish first: what retention prunes.
        self.finished: dict[str, None] = {}
        self.heap: list[tuple[float, str]] = []
        self.live: dict[str, float] = {}
        self.heard: dict[str, float] = {}  # active id -> last heard of (monotonic)
        # Entries ever popped from the deadline heap: what a tick costs, observable.
        self.pops = 0

    def enter(
        self,
        item: WorkItem,
        policy: Policy,
        not_before: float,
        heard: float,
        unmet: Sequence[str] = (),
    ) -> None:
        """Enter an item in the index its status calls for (``unmet``: the dependencies
        a pending item still waits for); an active one was last heard of at ``heard``
        (monotonic)."""
        if item.status == _PENDING and unmet:
            self.wait(item.work_item_id, unmet)
        elif item.status == _PENDING:
            self.pending[PRIORITY_RANK.get(item.priority, _MEDIUM)][item.work_item_id] = None
        elif item.status == _ACTIVE and item.agent_id is not None:
            self.held.setdefault(item.agent_id, {})[item.work_item_id] = None
            self.n_active += 1
            self.heard[item.work_item_id] = heard
            if item.stale_since is None:
                self.queue(item.work_item_id, deadline(policy, item, heard, not_before))
            else:
                self.stale[item.work_item_id] = None

    def leave(self, item: WorkItem) -> None:
        """Take an item out of every index (before its status or holder changes)."""
        wid = item.work_item_id
        if item.status == _PENDING:
            self.pending[PRIORITY_RANK.get(item.priority, _MEDIUM)].pop(wid, None)
            if wid in self.waiting:
                del self.waiting[wid]
                for dep in item.after or ():
                    self._forget_dependent(dep, wid)
        elif item.status == _ACTIVE and item.agent_id is not None:
            held = self.held.get(item.agent_id)
            if held is not None and wid in held:
                del held[wid]
                self.n_active -= 1
                if not held:
                    del self.held[item.agent_id]
            self.stale.pop(wid, None)
            self.heard.pop(wid, None)
        self.live.pop(wid, None)  # any heap entry for it is now dead

    def wait(self, wid: str, unmet: Sequence[str]) -> None:
        """A pending item blocked by ``unmet``: out of claim-next's way until they succeed."""
        self.waiting[wid] = None
        for dep in unmet:
            self.dependents.setdefault(dep, {})[wid] = None

    def _forget_dependent(self, dep: str, wid: str) -> None:
        mine = self.dependents.get(dep)
        if mine is not None:
            mine.pop(wid, None)
            if not mine:
                del self.dependents[dep]

    def waiting_on(self, dep: str) -> list[str]:
        """The blocked items that wait (among others) for ``dep``."""
        return list(self.dependents.get(dep, ()))

    def replace(
        self,
        old: WorkItem | None,
        new: WorkItem,
        policy: Policy,
        not_before: float,
        heard: float,
        unmet: Sequence[str] = (),
    ) -> None:
        """Move an item from where ``old`` stood to where ``new`` stands (a standby
        applying its leader's record: the transition itself happened elsewhere); an
        active ``new`` was last heard of at ``heard`` (monotonic)."""
        if old is not None:
            self.leave(old)
            if old.status not in (Status.PENDING, Status.ACTIVE):
                self.forget_finished(old.work_item_id, old.status)
        self.enter(new, policy, not_before, heard, unmet)
        if new.status not in (Status.PENDING, Status.ACTIVE):
            self.count_finished(new.work_item_id, new.status)

    def count_finished(self, wid: str, status: str) -> None:
        """One more item in no index (completed or failed)."""
        self.n_other[status] = self.n_other.get(status, 0) + 1
        self.finished[wid] = None

    def forget_finished(self, wid: str, status: str) -> None:
        """A finished item no longer is: pruned by retention, or a failed one retried
        (it must leave ``finished`` too, or retention would later prune a live item)."""
        self.n_other[status] -= 1
        self.finished.pop(wid, None)

    def queue(self, wid: str, deadline: float) -> None:
        """Give an active item its one live heap entry."""
        self.live[wid] = deadline
        heapq.heappush(self.heap, (deadline, wid))
        if len(self.heap) > 2 * len(self.live) + HEAP_SLACK:
            self.compact()

    def compact(self) -> None:
        """Drop every dead entry: the heap rebuilt from the live ones (O(live), and only
        after more than ``live + HEAP_SLACK`` pushes since the last time: O(1) each)."""
        heap = [(d, wid) for wid, d in self.live.items()]
        heapq.heapify(heap)
        self.heap = heap

    def mark_stale(self, wid: str) -> None:
        """A stale item leaves the heap (detected once) and joins the stale set."""
        self.stale[wid] = None
        self.live.pop(wid, None)

    def unmark_stale(self, wid: str) -> None:
        self.stale.pop(wid, None)

    def pop_expired(
        self,
        now: float,
        items: dict[str, WorkItem],
        policy: Policy,
        not_before: float,
        limit: int | None = None,
    ) -> list[WorkItem]:
        """Items whose live entry and true deadline have both passed, off the heap, at
        most ``limit`` of them, earliest deadline first; the heap work (dead entries,
        re-queues) is bounded too, at ``POPS_PER_EXPIRED`` entries per allowed item.
        What is left stays on the heap for the next call (``expired_waiting``)."""
        expired: list[WorkItem] = []
        heap, live = self.heap, self.live
        pops = 0
        max_pops = 0 if limit is None else limit * POPS_PER_EXPIRED
        while heap and heap[0][0] <= now:
            if limit is not None and (len(expired) >= limit or pops >= max_pops):
                break
            d, wid = heapq.heappop(heap)
            pops += 1
            self.pops += 1
            if live.get(wid) != d:
                continue  # a dead entry
            item = items[wid]
            true_deadline = deadline(policy, item, self.heard[wid], not_before)
            if true_deadline > now:
                live[wid] = true_deadline
                heapq.heappush(heap, (true_deadline, wid))
                continue
            del live[wid]
            expired.append(item)
        return expired

    def expired_waiting(self, now: float) -> bool:
        """Entries whose recorded deadline has passed are still on the heap (a tick that
        hit its budget left them): the loop should tick again soon."""
        return bool(self.heap) and self.heap[0][0] <= now

    def requeue(self, items: dict[str, WorkItem], policy: Policy, not_before: float) -> None:
        """A new heap: every active, non-stale item at its deadline as of now."""
        heap: list[tuple[float, str]] = []
        live: dict[str, float] = {}
        heard = self.heard
        for held in self.held.values():
            for wid in held:
                item = items[wid]
                if item.stale_since is None:
                    d = live[wid] = deadline(policy, item, heard[wid], not_before)
                    heap.append((d, wid))
        heapq.heapify(heap)
        self.heap, self.live = heap, live

    def rebuild(
        self, items: dict[str, WorkItem], policy: Policy, not_before: float, wall_offset: float
    ) -> int:
        """Recompute every index from ``items``; returns the highest lease seen. An active
        item was last heard of at its wall time less ``wall_offset`` (wall - monotonic)."""
        # What enter() does for each item, unrolled: at a million items the calls, the
        # heappush per item and max() per item were 1.5 s of a restart. Entries are
        # appended and the heap built once (heapify is O(n), n heappushes O(n log n)).
        pending: dict[int, dict[str, None]] = {r: {} for r in range(len(PRIORITY_RANK))}
        self.waiting, self.dependents = {}, {}
        held: dict[str, dict[str, None]] = {}
        heap: list[tuple[float, str]] = []
        live: dict[str, float] = {}
        heard: dict[str, float] = {}
        stale: dict[str, None] = {}
        other: dict[str, int] = {}
        finished: list[tuple[float, str]] = []
        rank_of, push = PRIORITY_RANK.get, heap.append
        pending_, active = Status.PENDING, Status.ACTIVE  # locals: read a million times
        top_lease = n_active = 0
        for wid, item in items.items():
            if item.lease > top_lease:
                top_lease = item.lease
            status = item.status
            if status == pending_:
                blockers = unmet(item, items) if item.after else None
                if blockers:
                    self.wait(wid, blockers)
                else:
                    pending[rank_of(item.priority, _MEDIUM)][wid] = None
            elif status == active and item.agent_id is not None:
                mine = held.get(item.agent_id)
                if mine is None:
                    mine = held[item.agent_id] = {}
                mine[wid] = None
                n_active += 1
                h = heard[wid] = last_heard(item) - wall_offset
                if item.stale_since is not None:
                    stale[wid] = None
                else:
                    d = live[wid] = deadline(policy, item, h, not_before)
                    push((d, wid))
            else:
                other[status] = other.get(status, 0) + 1
                finished.append((item.completed_at or 0.0, wid))
        heapq.heapify(heap)
        finished.sort()
        self.finished = dict.fromkeys(wid for _, wid in finished)
        self.pending, self.held, self.stale, self.n_other = pending, held, stale, other
        self.heap, self.live, self.heard, self.n_active = heap, live, heard, n_active
        return top_lease

    def held_ids(self, agent_id: str) -> Iterator[str]:
        yield from self.held.get(agent_id, ())

    def counts(self) -> dict[str, int]:
        """Items by status (every status listed) and stale active items."""
        by_status = {s.value: 0 for s in Status}
        for status, n in self.n_other.items():
            by_status[status] = by_status.get(status, 0) + n
        by_status[Status.PENDING] += sum(len(d) for d in self.pending.values())
        by_status[Status.PENDING] += len(self.waiting)
        by_status[Status.ACTIVE] += self.n_active
        return {**by_status, "stale": len(self.stale), "blocked": len(self.waiting)}
