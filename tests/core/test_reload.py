"""A policy change on a live state (what SIGHUP does), with time as a parameter."""

from __future__ import annotations

import msgspec

from coordd import config
from coordd.core import recovery
from coordd.core.rules import Policy
from coordd.core.state import State
from coordd.daemon import reload


def _state_with_claim(threshold: float, recovery: str = "reassign") -> tuple[State, str]:
    s = State(Policy(stale_threshold=threshold, recovery=recovery))
    item = s.claim("a1", "t", "d", now=1000.0)
    return s, item.work_item_id


def test_a_shorter_threshold_acts_at_once() -> None:
    s, wid = _state_with_claim(300.0)
    # Left in the heap, the entry queued for t=1300 would hide the item until then.
    assert s.set_policy(Policy(stale_threshold=10.0))
    assert [i.work_item_id for i in s.pop_expired(1011.0)] == [wid]


def test_the_same_policy_changes_nothing() -> None:
    s, _ = _state_with_claim(300.0)
    assert not s.set_policy(Policy(stale_threshold=300.0))


def test_a_longer_threshold_postpones_staleness() -> None:
    s, wid = _state_with_claim(10.0)
    s.set_policy(Policy(stale_threshold=300.0))
    assert s.pop_expired(1011.0) == []
    assert [i.work_item_id for i in s.pop_expired(1300.0)] == [wid]


def test_requeue_keeps_stale_items_out_and_heartbeats_in() -> None:
    s, stale_id = _state_with_claim(10.0, recovery="none")
    fresh = s.claim("a2", "t", "d", now=1005.0)
    (expired,) = s.pop_expired(1011.0)
    s.mark_stale(expired, 1011.0)  # as strategy "none" does: stale, still held
    s.heartbeat("a2", 1011.0, fresh.work_item_id)
    s.set_policy(Policy(stale_threshold=5.0, recovery="none"))
    assert s.pop_expired(1015.0) == []
    assert [i.work_item_id for i in s.pop_expired(1016.0)] == [fresh.work_item_id]
    assert s.items[stale_id].stale_since == 1011.0


def test_tick_after_reload_recovers_under_the_new_policy() -> None:
    s, wid = _state_with_claim(300.0)
    s.set_policy(Policy(stale_threshold=10.0, recovery="fail"))
    (report,) = recovery.tick(s, 1020.0)
    assert (report.work_item_id, report.strategy) == (wid, "fail")
    assert s.items[wid].status == "failed"


def test_merge_applies_reloadable_keys_and_names_the_rest() -> None:
    old = config.load(env={}, flags={"coordination_dir": "/tmp/x"})
    new = msgspec.structs.replace(
        old, stale_threshold=5.0, recovery="retry", ai_provider="claude", run_dir="/elsewhere"
    )
    merged, needs_restart = reload.merge(old, new)
    assert (merged.stale_threshold, merged.recovery, merged.ai_provider) == (5.0, "retry", "claude")
    assert merged.run_dir == old.run_dir
    assert needs_restart == ["run_dir"]


def test_an_item_failed_for_staleness_is_not_counted_as_stale() -> None:
    # The STATUS= line and the coordd_stale_items gauge come from counts().
    s, wid = _state_with_claim(10.0)
    s.set_policy(Policy(stale_threshold=10.0, recovery="fail"))
    recovery.tick(s, 1020.0)
    assert s.items[wid].status == "failed"
    assert s.counts()["stale"] == 0 and s.counts()["failed"] == 1
