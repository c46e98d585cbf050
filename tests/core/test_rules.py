"""The freshness rules alone: pure functions of an item, a policy, the restart-grace
start and ``now`` (the clock is the argument). Driven through the state: test_recovery."""

from __future__ import annotations

import pytest

from coordd.core import rules
from coordd.core.model import WorkItem
from coordd.core.rules import Policy, TypeRule
from coordd.kinds import Status

T0 = 1_750_000_000.0


def active(last: float | None = T0, **fields: object) -> WorkItem:
    return WorkItem(
        work_item_id="w",
        work_type=str(fields.pop("work_type", "build")),
        description="d",
        status=Status.ACTIVE,
        agent_id="a",
        created_at=T0 - 100,
        last_heartbeat=last,
        **fields,  # type: ignore[arg-type]
    )


def heard(item: WorkItem) -> float:
    """When the item was last heard of, on a monotonic clock that here equals the wall."""
    return rules.last_heard(item)


POLICY = Policy(
    stale_threshold=300,
    recovery="reassign",
    work_types={
        "deploy": TypeRule(stale_threshold=60, recovery="fail"),
        "lint": TypeRule(recovery="retry"),  # a strategy only: the global threshold holds
    },
)


@pytest.mark.parametrize(
    ("work_type", "stale_after", "expected"),
    [
        ("deploy", 5.0, 5.0),  # the item's own stale_after beats its work type
        ("deploy", None, 60.0),  # the work type beats the global threshold
        ("lint", None, 300.0),  # a work type without a threshold falls through
        ("build", None, 300.0),  # no rule at all: global
    ],
)
def test_threshold_precedence(work_type: str, stale_after: float | None, expected: float) -> None:
    item = active(work_type=work_type, stale_after=stale_after)
    assert rules.threshold(POLICY, item) == expected
    assert rules.deadline(POLICY, item, heard(item), not_before=0.0) == T0 + expected


def test_strategy_precedence_and_escalation() -> None:
    assert rules.strategy(POLICY, active(work_type="deploy")) == "fail"
    assert rules.strategy(POLICY, active(work_type="build")) == "reassign"
    policy = Policy(max_retries=2, retry_escalation="none")
    assert rules.effective_strategy(policy, active(retry_count=1), "retry") == "retry"
    assert rules.effective_strategy(policy, active(retry_count=2), "retry") == "none"
    assert rules.effective_strategy(policy, active(retry_count=9), "fail") == "fail"


def test_silence_counts_from_the_last_heartbeat_else_creation() -> None:
    assert rules.last_heard(active(last=T0)) == T0
    assert rules.last_heard(active(last=None)) == T0 - 100  # created at T0 - 100
    assert rules.silent_for(T0, T0 + 42) == 42
    assert rules.silent_for(T0 + 5, T0) == 0  # never negative


def test_stale_exactly_at_the_deadline() -> None:
    item = active(last=T0)
    assert not rules.is_stale(POLICY, item, heard(item), T0 + 299.999, not_before=0.0)
    assert rules.is_stale(POLICY, item, heard(item), T0 + 300, not_before=0.0)


def test_restart_grace_postpones_every_judgement() -> None:
    # Down for an hour: silent since T0, but the daemon started again at T0 + 3600.
    item, start = active(last=T0), T0 + 3600
    assert rules.in_grace(start - 1, start) and not rules.in_grace(start, start)
    assert rules.deadline(POLICY, item, heard(item), start) == start + 300
    assert not rules.is_stale(POLICY, item, heard(item), start + 299, start)
    assert rules.is_stale(POLICY, item, heard(item), start + 300, start)
    # "Potentially stale" counts from the same start: not at once after a restart.
    assert not rules.is_potentially_stale(
        POLICY, item, heard(item), start + 1, start, warn_ratio=0.5
    )
    assert rules.is_potentially_stale(POLICY, item, heard(item), start + 151, start, warn_ratio=0.5)
    # The grace shields nothing that was heard of after it began.
    late = active(last=start + 10)
    assert rules.deadline(POLICY, late, heard(late), start) == start + 310


def test_only_active_items_are_stale_and_a_marked_one_stays_stale() -> None:
    done = active(last=T0)
    done.status = Status.COMPLETED
    assert not rules.is_stale(POLICY, done, heard(done), T0 + 10_000, not_before=0.0)
    marked = active(last=T0 + 50, stale_since=T0 + 40)
    assert rules.is_stale(
        POLICY, marked, heard(marked), T0 + 51, not_before=0.0
    )  # until it is refreshed
    assert not rules.is_potentially_stale(
        POLICY, marked, heard(marked), T0 + 51, 0.0, warn_ratio=0.5
    )


def test_validate_policy_names_each_bad_key() -> None:
    bad = Policy(
        stale_threshold=0,
        recovery="panic",
        retry_escalation="retry",
        max_retries=-1,
        work_types={"x": TypeRule(stale_threshold=-5, recovery="later")},
    )
    problems = rules.validate_policy(bad)
    assert [p.split(" ")[0] for p in problems] == [
        "stale_threshold",
        "recovery",
        "retry_escalation",
        "max_retries",
        "work_types.x.recovery",
        "work_types.x.stale_threshold",
    ]
    assert "one of reassign, retry, fail, none; got 'panic'" in problems[1]
    assert "one of reassign, fail, none; got 'retry'" in problems[2]
    assert rules.validate_policy(POLICY) == []
