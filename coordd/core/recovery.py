"""What happens to stale items: the tick, one recovery, and the operator's recover-stale.

Drives ``State`` from above with its recovery primitives; which items are stale and
which strategy applies is asked of ``rules``. Pure like the state: ``now`` is a
parameter.
"""

from __future__ import annotations

import msgspec

from coordd.core import rules
from coordd.core.model import BadRequest, Conflict, WorkItem
from coordd.core.state import State
from coordd.kinds import Status, Strategy


class Recovery(msgspec.Struct, kw_only=True):
    """What a recovery did (or, in a dry run, would do) to one item."""

    work_item_id: str
    agent_id: str | None
    strategy: str
    silent_for: float
    threshold: float
    applied: bool = True
    dead_letter: bool = False  # failed for too many recoveries (max_recoveries)


def _check_strategy(strategy: str) -> None:
    if strategy not in rules.STRATEGIES:
        raise BadRequest(f"strategy must be one of {', '.join(rules.STRATEGIES)}; got {strategy!r}")


def stale_items(state: State, now: float) -> list[WorkItem]:
    """Every stale active item, most silent first. A scan of the active items: for
    commands, not the tick."""
    found = [i for i in state.active_items() if state.is_stale(i, now)]
    found.sort(key=lambda i: state.silent_for(i, now), reverse=True)
    return found


def _report(state: State, item: WorkItem, now: float, requested: str, apply: bool) -> Recovery:
    """What recovering ``item`` with ``requested`` does (applied: ``apply``, unless the
    strategy that holds is ``none``)."""
    policy = state.policy
    strategy = rules.effective_strategy(policy, item, requested)
    return Recovery(
        work_item_id=item.work_item_id,
        agent_id=item.agent_id,
        strategy=strategy,
        silent_for=state.silent_for(item, now),
        threshold=rules.threshold(policy, item),
        applied=apply and strategy != Strategy.NONE,
        dead_letter=rules.dead_lettered(policy, item, requested),
    )


def recover(state: State, item: WorkItem, now: float, strategy: str, reason: str) -> Recovery:
    """Apply one strategy to one active item (past max_recoveries: fail, dead letter)."""
    _check_strategy(strategy)
    report = _report(state, item, now, strategy, apply=True)
    match report.strategy:
        case Strategy.REASSIGN:
            state.recover_reassign(item, now, reason)
        case Strategy.RETRY:
            state.recover_retry(item, now, reason)
        case Strategy.FAIL if report.dead_letter:
            limit = rules.max_recoveries(state.policy, item)
            why = f"{rules.TOO_MANY_RECOVERIES}: recovered {item.recoveries} times"
            why += f" (max_recoveries {limit}); last: {reason}"
            state.recover_fail(item, now, why, result=rules.TOO_MANY_RECOVERIES)
        case Strategy.FAIL:
            state.recover_fail(item, now, reason)
    return report


# Recoveries one tick applies at most (~10 us each with their records and events on a
# quiet machine, 2-3x that on a busy one): a tick stays under 10 ms however many items
# expire at once. The rest wait on the heap,
# oldest deadline first, for the next tick, which the loop runs at once when
# ``state.expired_waiting(now)`` says some are left.
TICK_BUDGET = 300


def tick(state: State, now: float, budget: int | None = TICK_BUDGET) -> list[Recovery]:
    """Detect the items that expired since the last tick and apply their strategy, at
    most ``budget`` of them (None: all), those whose deadline passed first.

    Cost grows with the items that expired, not with the items held (the heap).
    """
    done: list[Recovery] = []
    for item in state.pop_expired(now, budget):
        state.mark_stale(item, now)
        reason = (
            f"no heartbeat for {state.silent_for(item, now):.1f}s"
            f" (threshold {rules.threshold(state.policy, item):g}s)"
        )
        done.append(recover(state, item, now, rules.strategy(state.policy, item), reason))
    return done


def recover_stale(
    state: State,
    now: float,
    strategy: str,
    work_item_id: str | None = None,
    dry_run: bool = False,
) -> list[Recovery]:
    """The manual ``recover-stale``: every stale item, or just one (stale or not)."""
    _check_strategy(strategy)
    if work_item_id is not None:
        item = state.get(work_item_id)
        if item.status != Status.ACTIVE:
            raise Conflict(f"{work_item_id} is {item.status}; only active items can be recovered")
        targets = [item]
    else:
        targets = stale_items(state, now)
    reports = []
    for item in targets:
        if dry_run:
            reports.append(_report(state, item, now, strategy, apply=False))
            continue
        silent = state.silent_for(item, now)
        reason = f"recover-stale {strategy} by operator (silent {silent:.0f}s)"
        reports.append(recover(state, item, now, strategy, reason))
    return reports
