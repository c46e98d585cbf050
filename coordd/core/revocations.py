"""Leases lost to recoveries, kept for their holders to be told.

The edge pushes each revocation once it is durable; an agent that missed the push (it
was reconnecting, or never asked for pushes) hears of it on its next agent-level
heartbeat. An agent that never sends one (an SDK agent heartbeats its items) never
drains its list, so what is kept is bounded twice: per agent, and in all, the oldest
dropped first. A dropped one costs nothing but the telling: the agent's next heartbeat
for that item is refused with ``lease_lost`` all the same.
"""

from __future__ import annotations

from collections import deque

from coordd.core.model import Revocation

# Kept per agent: far more than one agent holds at once.
LOST_PER_AGENT = 1000
# Kept in all (~250 bytes each): a churn of short-lived agents that are recovered and
# never ask cannot grow coordd's memory past ~25 MB.
LOST_KEPT = 100_000


class LostLeases:
    def __init__(self, per_agent: int = LOST_PER_AGENT, kept: int = LOST_KEPT) -> None:
        self.per_agent = per_agent
        self.kept = kept
        # agent id -> its lost leases, oldest first; the agent that lost one most
        # recently is last, so the oldest entries in all are at the front.
        self.by_agent: dict[str, deque[Revocation]] = {}
        self.count = 0

    def add(self, rev: Revocation) -> None:
        lost = self.by_agent.pop(rev.agent_id, None) or deque()
        self.by_agent[rev.agent_id] = lost
        lost.append(rev)
        self.count += 1
        if len(lost) > self.per_agent:
            lost.popleft()
            self.count -= 1
        while self.count > self.kept:
            oldest = next(iter(self.by_agent))
            entries = self.by_agent[oldest]
            entries.popleft()
            self.count -= 1
            if not entries:
                del self.by_agent[oldest]

    def take(self, agent_id: str) -> list[Revocation]:
        """What ``agent_id`` lost since it last asked."""
        lost = self.by_agent.pop(agent_id, None)
        if lost is None:
            return []
        self.count -= len(lost)
        return list(lost)
