"""When an item is stale: the freshness rules, as pure functions, in one place.

Functions of an item, the ``Policy``, the restart-grace start and ``now``; nothing
here reads a clock or changes anything. ``State`` (its deadline heap), recovery
(the tick) and the views (dashboard, reports) all ask here, so a reader who wants to
change "when is an item stale" opens this file and no other.

Threshold sources, most specific first: the item's own ``stale_after`` (given at
claim time), its work type's ``stale_threshold`` in the config file, the global
``stale_threshold``. Strategy sources: the work type's ``recovery``, then the
global ``recovery``. One rule caps how often an item is recovered
(``effective_strategy``): an item already recovered ``max_recoveries`` times (work
type, then global; every strategy counts) is dead-lettered, its next recovery a
``fail`` with reason ``too_many_recoveries``; below that, ``retry`` escalates to
``retry_escalation`` once an item has been retried ``max_retries`` times (a tighter
cap on retries alone).

Thresholds against heartbeats: a threshold under ``MIN_BEATS_PER_THRESHOLD`` heartbeat
intervals recovers work from agents that are alive (one late heartbeat is enough).

Two clocks (``coordd.clock``): every judgement is made on the monotonic clock of this
run. ``now`` and ``heard`` (when an active item was last heard of, kept per item by
``State``'s indexes, never persisted) are monotonic seconds, so a step of the wall
clock changes no silence. The item's own times (``last_heartbeat``, ...) are wall
times, for people and files.

Restart grace: before ``not_before`` (set when the daemon starts) nobody is judged,
so downtime is never counted against agents that need time to reconnect. Silence is
counted from ``max(heard, not_before)`` for every judgement; ``silent_for`` itself
stays the plain fact shown to people.
"""

from __future__ import annotations

import math

import msgspec

from coordd.core.model import WorkItem
from coordd.kinds import Status, Strategy

STRATEGIES = tuple(Strategy)
# What ``retry`` may escalate to (escalating to retry again would never end).
ESCALATIONS = (Strategy.REASSIGN, Strategy.FAIL, Strategy.NONE)
# A threshold must cover this many heartbeat intervals, or one late beat recovers work.
MIN_BEATS_PER_THRESHOLD = 2
TOO_MANY_RECOVERIES = "too_many_recoveries"


class TypeRule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Per work type overrides from the config file's ``[work_types.NAME]`` table."""

    stale_threshold: float | None = None
    recovery: str | None = None
    max_recoveries: int | None = None


class Policy(msgspec.Struct, kw_only=True):
    """The freshness settings of the config file (reloadable)."""

    stale_threshold: float = 300.0
    recovery: str = Strategy.REASSIGN
    max_retries: int = 3
    retry_escalation: str = Strategy.FAIL
    max_recoveries: int = 3
    # The configured heartbeat interval: what an agent that declared none is held to.
    heartbeat_interval: float = 60.0
    work_types: dict[str, TypeRule] = {}


def threshold(policy: Policy, item: WorkItem) -> float:
    """Seconds of silence after which ``item`` is stale (item, then work type, then global)."""
    if item.stale_after is not None:
        return item.stale_after
    rule = policy.work_types.get(item.work_type)
    if rule is not None and rule.stale_threshold is not None:
        return rule.stale_threshold
    return policy.stale_threshold


def strategy(policy: Policy, item: WorkItem) -> str:
    """The recovery configured for ``item`` (work type, then global)."""
    rule = policy.work_types.get(item.work_type)
    if rule is not None and rule.recovery is not None:
        return rule.recovery
    return policy.recovery


def max_recoveries(policy: Policy, item: WorkItem) -> int:
    """How many recoveries ``item`` may have before the next one dead-letters it."""
    rule = policy.work_types.get(item.work_type)
    if rule is not None and rule.max_recoveries is not None:
        return rule.max_recoveries
    return policy.max_recoveries


def dead_lettered(policy: Policy, item: WorkItem, requested: str) -> bool:
    """Whether this recovery would be one too many (``none`` recovers nothing)."""
    return requested != Strategy.NONE and item.recoveries >= max_recoveries(policy, item)


def effective_strategy(policy: Policy, item: WorkItem, requested: str) -> str:
    """The one recovery rule: past ``max_recoveries`` every strategy is ``fail``
    (dead letter); below it, ``retry`` past ``max_retries`` is the escalation."""
    if dead_lettered(policy, item, requested):
        return Strategy.FAIL
    if requested == Strategy.RETRY and item.retry_count >= policy.max_retries:
        return policy.retry_escalation
    return requested


def too_short(threshold_s: float, interval: float) -> bool:
    """Whether heartbeats every ``interval`` seconds cannot keep ``threshold_s`` fresh."""
    return threshold_s < MIN_BEATS_PER_THRESHOLD * interval


def threshold_warnings(policy: Policy) -> list[str]:
    """Thresholds (global, per type) the configured heartbeats cannot keep fresh."""
    interval = policy.heartbeat_interval
    found = [("stale_threshold", policy.stale_threshold)] + [
        (f"work_types.{name}.stale_threshold", rule.stale_threshold)
        for name, rule in sorted(policy.work_types.items())
        if rule.stale_threshold is not None
    ]
    return [
        f"{key} = {value:g}s is below {MIN_BEATS_PER_THRESHOLD} x heartbeat_interval"
        f" ({interval:g}s): items of agents that are alive would be recovered"
        for key, value in found
        if too_short(value, interval)
    ]


def claim_threshold_refusal(
    stale_after: float | None, declared: float | None, policy: Policy, agent_id: str
) -> str | None:
    """Why a claim with this ``stale_after`` is refused (None: accepted): the claiming
    agent's heartbeats (its declared interval, else the configured one) could not keep
    the item fresh."""
    if stale_after is None:
        return None
    interval = declared if declared is not None else policy.heartbeat_interval
    if not too_short(stale_after, interval):
        return None
    source = "declared by the agent" if declared is not None else "configured"
    return (
        f"stale_after {stale_after:g}s is below {MIN_BEATS_PER_THRESHOLD} x the heartbeat"
        f" interval of {agent_id} ({interval:g}s, {source}): the item would be recovered"
        f" while its agent is alive; use at least {MIN_BEATS_PER_THRESHOLD * interval:g}s"
        " or heartbeat more often"
    )


def last_heard(item: WorkItem) -> float:
    """When the item was last heard of, wall time: its last heartbeat, else its creation."""
    return item.last_heartbeat if item.last_heartbeat is not None else item.created_at


def silent_for(heard: float, now: float) -> float:
    """Seconds since ``heard`` (never negative; grace not applied)."""
    return max(0.0, now - heard)


def deadline(policy: Policy, item: WorkItem, heard: float, not_before: float) -> float:
    """When an active item last heard of at ``heard`` becomes stale if it hears nothing more."""
    return (heard if heard > not_before else not_before) + threshold(policy, item)


def in_grace(now: float, not_before: float) -> bool:
    """Whether the restart grace still shields every item at ``now``."""
    return now < not_before


def is_stale(policy: Policy, item: WorkItem, heard: float, now: float, not_before: float) -> bool:
    """Active and marked stale, or silent past its threshold (restart grace included)."""
    if item.status != Status.ACTIVE:
        return False
    return item.stale_since is not None or deadline(policy, item, heard, not_before) <= now


def is_potentially_stale(
    policy: Policy, item: WorkItem, heard: float, now: float, not_before: float, warn_ratio: float
) -> bool:
    """Not stale yet, but silent past ``warn_ratio`` of its threshold (grace included)."""
    if is_stale(policy, item, heard, now, not_before):
        return False
    since = max(heard, not_before)
    return now - since > warn_ratio * threshold(policy, item)


def dependency_met(dep: WorkItem | None) -> bool:
    """A dependency is met when it completed with result ``success``. One no longer
    kept (pruned after it finished) counts as met: only finished items are pruned."""
    return dep is None or (dep.status == Status.COMPLETED and dep.result == "success")


def unmet(item: WorkItem, items: dict[str, WorkItem]) -> list[str]:
    """The dependencies of ``item`` not met yet, in the order they were given."""
    return [d for d in item.after or () if not dependency_met(items.get(d))]


def validate_policy(policy: Policy) -> list[str]:
    """Problems with a policy, each naming the key and the allowed values."""
    allowed = ", ".join(Strategy)
    problems = []
    if not 0 < policy.stale_threshold < math.inf:
        problems.append(
            f"stale_threshold must be > 0 seconds and finite, got {policy.stale_threshold}"
        )
    if policy.recovery not in STRATEGIES:
        problems.append(f"recovery must be one of {allowed}; got {policy.recovery!r}")
    if policy.retry_escalation not in ESCALATIONS:
        problems.append(
            f"retry_escalation must be one of {', '.join(ESCALATIONS)};"
            f" got {policy.retry_escalation!r}"
        )
    if policy.max_retries < 0:
        problems.append(f"max_retries must be >= 0, got {policy.max_retries}")
    if policy.max_recoveries < 0:
        problems.append(f"max_recoveries must be >= 0, got {policy.max_recoveries}")
    for name, rule in policy.work_types.items():
        if rule.recovery is not None and rule.recovery not in STRATEGIES:
            problems.append(
                f"work_types.{name}.recovery must be one of {allowed}; got {rule.recovery!r}"
            )
        if rule.stale_threshold is not None and not 0 < rule.stale_threshold < math.inf:
            problems.append(f"work_types.{name}.stale_threshold must be > 0 seconds and finite")
        if rule.max_recoveries is not None and rule.max_recoveries < 0:
            problems.append(f"work_types.{name}.max_recoveries must be >= 0")
    return problems
