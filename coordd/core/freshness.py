"""When an item is stale, and what happens to it then.

Pure like ``state``: the rules are functions of an item, the policy and ``now``.
Threshold sources, most specific first: the item's own ``stale_after`` (given at
claim time), its work type's ``stale_threshold`` in the config file, the global
``STALE_THRESHOLD``. Strategy sources: the work type's ``recovery``, then the
global ``recovery``. ``retry`` escalates to ``retry_escalation`` once an item has
been retried ``max_retries`` times.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from coordd.core.state import BadRequest, Conflict

if TYPE_CHECKING:
    from coordd.core.state import State, WorkItem

STRATEGIES = ("reassign", "retry", "fail", "none")


class TypeRule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Per work type overrides from the config file's ``[work_types.NAME]`` table."""

    stale_threshold: float | None = None
    recovery: str | None = None


class Policy(msgspec.Struct, kw_only=True):
    stale_threshold: float = 300.0
    recovery: str = "reassign"
    max_retries: int = 3
    retry_escalation: str = "fail"
    work_types: dict[str, TypeRule] = {}

    def threshold_for(self, item: WorkItem) -> float:
        if item.stale_after is not None:
            return item.stale_after
        rule = self.work_types.get(item.work_type)
        if rule is not None and rule.stale_threshold is not None:
            return rule.stale_threshold
        return self.stale_threshold

    def strategy_for(self, item: WorkItem) -> str:
        rule = self.work_types.get(item.work_type)
        if rule is not None and rule.recovery is not None:
            return rule.recovery
        return self.recovery


class Recovery(msgspec.Struct, kw_only=True):
    """What a recovery did (or, in a dry run, would do) to one item."""

    work_item_id: str
    agent_id: str | None
    strategy: str
    silent_for: float
    threshold: float
    applied: bool = True


def silent_for(item: WorkItem, now: float) -> float:
    last = item.last_heartbeat if item.last_heartbeat is not None else item.created_at
    return max(0.0, now - last)


def is_stale(state: State, item: WorkItem, now: float) -> bool:
    """Active and silent past its threshold (restart grace included)."""
    return item.status == "active" and (item.stale_since is not None or state.deadline(item) <= now)


def stale_items(state: State, now: float) -> list[WorkItem]:
    """Every stale active item, most silent first. A scan of the active items: for
    commands, not the tick."""
    found = [i for i in state.active_items() if is_stale(state, i, now)]
    found.sort(key=lambda i: silent_for(i, now), reverse=True)
    return found


def effective_strategy(policy: Policy, item: WorkItem, requested: str) -> str:
    """``retry`` past ``max_retries`` becomes the escalation strategy."""
    if requested == "retry" and item.retry_count >= policy.max_retries:
        return policy.retry_escalation
    return requested


def recover(state: State, item: WorkItem, now: float, strategy: str, reason: str) -> Recovery:
    """Apply one strategy to one active item."""
    if strategy not in STRATEGIES:
        raise BadRequest(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    chosen = effective_strategy(state.policy, item, strategy)
    report = Recovery(
        work_item_id=item.work_item_id,
        agent_id=item.agent_id,
        strategy=chosen,
        silent_for=silent_for(item, now),
        threshold=state.policy.threshold_for(item),
    )
    if chosen == "reassign":
        state.recover_reassign(item, now, reason)
    elif chosen == "retry":
        state.recover_retry(item, now, reason)
    elif chosen == "fail":
        state.recover_fail(item, now, reason)
    else:
        report.applied = False
    return report


def tick(state: State, now: float) -> list[Recovery]:
    """Detect the items that expired since the last tick and apply their strategy.

    Cost grows with the items that expired, not with the items held (the heap).
    """
    done: list[Recovery] = []
    for item in state.pop_expired(now):
        state.mark_stale(item, now)
        strategy = state.policy.strategy_for(item)
        reason = (
            f"no heartbeat for {silent_for(item, now):.1f}s"
            f" (threshold {state.policy.threshold_for(item):g}s)"
        )
        done.append(recover(state, item, now, strategy, reason))
    return done


def recover_stale(
    state: State,
    now: float,
    strategy: str,
    work_item_id: str | None = None,
    dry_run: bool = False,
) -> list[Recovery]:
    """The manual ``recover-stale``: every stale item, or just one (stale or not)."""
    if strategy not in STRATEGIES:
        raise BadRequest(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if work_item_id is not None:
        item = state.get(work_item_id)
        if item.status != "active":
            raise Conflict(f"{work_item_id} is {item.status}; only active items can be recovered")
        targets = [item]
    else:
        targets = stale_items(state, now)
    reports = []
    for item in targets:
        if dry_run:
            reports.append(
                Recovery(
                    work_item_id=item.work_item_id,
                    agent_id=item.agent_id,
                    strategy=effective_strategy(state.policy, item, strategy),
                    silent_for=silent_for(item, now),
                    threshold=state.policy.threshold_for(item),
                    applied=False,
                )
            )
            continue
        reason = f"recover-stale {strategy} by operator (silent {silent_for(item, now):.0f}s)"
        reports.append(recover(state, item, now, strategy, reason))
    return reports


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


class Dashboard(msgspec.Struct, kw_only=True):
    """The numbers of ``freshness-dashboard``. Every active item is exactly one of
    fresh, potentially stale (silent past ``warn_ratio`` of its threshold) or stale."""

    active: int
    fresh: int
    potentially_stale: int
    stale: int
    warn_ratio: float
    stale_items: list[StaleEntry]


# Silent past this share of its threshold, an item is "potentially stale".
WARN_RATIO = 0.5


def stale_report(state: State, now: float) -> list[StaleEntry]:
    """The stale items, most silent first, with what recovery would apply to each."""
    return [_entry(state, item, now) for item in stale_items(state, now)]


def _entry(state: State, item: WorkItem, now: float) -> StaleEntry:
    return StaleEntry(
        work_item_id=item.work_item_id,
        agent_id=item.agent_id,
        work_type=item.work_type,
        description=item.description,
        silent_for=silent_for(item, now),
        threshold=state.policy.threshold_for(item),
        strategy=effective_strategy(state.policy, item, state.policy.strategy_for(item)),
        stale_since=item.stale_since,
        last_heartbeat=item.last_heartbeat,
    )


def dashboard(state: State, now: float, warn_ratio: float = WARN_RATIO) -> Dashboard:
    """Count active items by freshness (a scan of the active items, for people)."""
    fresh = warn = 0
    stale: list[StaleEntry] = []
    for item in state.active_items():
        if is_stale(state, item, now):
            stale.append(_entry(state, item, now))
        elif silent_for(item, now) > warn_ratio * state.policy.threshold_for(item):
            warn += 1
        else:
            fresh += 1
    stale.sort(key=lambda e: e.silent_for, reverse=True)
    return Dashboard(
        active=fresh + warn + len(stale),
        fresh=fresh,
        potentially_stale=warn,
        stale=len(stale),
        warn_ratio=warn_ratio,
        stale_items=stale,
    )


def validate_policy(policy: Policy) -> list[str]:
    """Problems with a policy, each naming the key and the allowed values."""
    problems = []
    if not policy.stale_threshold > 0:
        problems.append(f"stale_threshold must be > 0 seconds, got {policy.stale_threshold}")
    if policy.recovery not in STRATEGIES:
        problems.append(f"recovery must be one of {', '.join(STRATEGIES)}; got {policy.recovery!r}")
    if policy.retry_escalation not in ("reassign", "fail", "none"):
        problems.append(
            f"retry_escalation must be one of reassign, fail, none; got {policy.retry_escalation!r}"
        )
    if policy.max_retries < 0:
        problems.append(f"max_retries must be >= 0, got {policy.max_retries}")
    for name, rule in policy.work_types.items():
        if rule.recovery is not None and rule.recovery not in STRATEGIES:
            problems.append(
                f"work_types.{name}.recovery must be one of {', '.join(STRATEGIES)};"
                f" got {rule.recovery!r}"
            )
        if rule.stale_threshold is not None and not rule.stale_threshold > 0:
            problems.append(f"work_types.{name}.stale_threshold must be > 0 seconds")
    return problems
