"""The daemon's handlers in-process, with an injected clock: what a request does to the
state and what it answers, without sockets, processes or waiting for a threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from coordd import protocol as p
from coordd.clock import FakeClock
from coordd.config import Config
from coordd.core import recovery
from coordd.core.model import BadRequest
from coordd.core.state import State
from coordd.daemon import ai_edge, handlers, loading, routes
from coordd.daemon.snapshots import Snapshots
from coordd.storage.store import FileStore

T0 = 1_750_000_000.0
handlers.load()


class Daemonless:
    """A state, a config and the handlers' context, as the loop would give them."""

    def __init__(self, **cfg: Any) -> None:
        self.cfg = Config(**cfg)
        self.state = State(self.cfg.policy())
        self.snapshots_asked = 0
        self.control = routes.Context(self.state, self.cfg, self._snapshot, self._facts)
        self.agent = routes.Context(
            self.state, self.cfg, self._snapshot, self._facts, control=False
        )

    def _snapshot(self) -> dict[str, Any]:
        self.snapshots_asked += 1
        return {"count": 3, "running": False}

    def _facts(self) -> routes.Facts:
        return routes.Facts("9.9", 42, T0, "ok", "", {"count": 3}, {})

    def call(self, req: p.Request, now: float, control: bool = True) -> Any:
        reply = routes.dispatch(self.control if control else self.agent, req, now)
        return msgspec.to_builtins(reply) if reply is not routes.NO_REPLY else reply


def test_strategy_none_reports_until_a_heartbeat() -> None:
    d = Daemonless(stale_threshold=30, recovery="none")
    wid = d.call(p.Claim(agent_id="quiet", work_type="t", description="d"), T0)["work_item_id"]
    assert d.call(p.Freshness(), T0 + 29.9)["dashboard"]["stale"] == 0
    recovery.tick(d.state, T0 + 30)  # what the loop's tick does
    shown = d.call(p.Show(work_item_id=wid), T0 + 30)
    assert shown["status"] == "active" and shown["agent_id"] == "quiet"
    assert shown["stale_since"] == T0 + 30
    assert d.call(p.Freshness(), T0 + 31)["dashboard"]["stale"] == 1
    assert [e["work_item_id"] for e in d.call(p.CheckStale(), T0 + 31)["stale"]] == [wid]
    assert d.call(p.Heartbeat(agent_id="quiet", ack=True), T0 + 40) == {"refreshed": 1}
    dash = d.call(p.Freshness(), T0 + 40)["dashboard"]
    assert dash["stale"] == 0 and dash["fresh"] == 1


def test_a_one_way_heartbeat_has_no_reply_and_an_acked_one_counts() -> None:
    d = Daemonless()
    d.call(p.Claim(agent_id="a", work_type="t", description="d"), T0)
    assert d.call(p.Heartbeat(agent_id="a"), T0 + 1, control=False) is routes.NO_REPLY
    assert d.call(p.Heartbeat(agent_id="a", ack=True), T0 + 2, control=False) == {"refreshed": 1}


def test_a_batch_over_max_batch_is_refused_and_lost_leases_are_named() -> None:
    d = Daemonless(max_batch=2, stale_threshold=10)
    item = d.call(p.Claim(agent_id="a", work_type="t", description="d"), T0)
    beats = [p.ItemBeat(item["work_item_id"], item["lease"])]
    with pytest.raises(BadRequest, match="max_batch"):
        d.call(p.HeartbeatBatch(agent_id="a", items=beats * 3), T0)
    d.call(p.RecoverStale(strategy="reassign", work_item_id=item["work_item_id"]), T0 + 1)
    reply = d.call(p.HeartbeatBatch(agent_id="a", items=beats), T0 + 2, control=False)
    assert reply["refreshed"] == 0
    assert [(e["work_item_id"], e["code"]) for e in reply["errors"]] == [
        (item["work_item_id"], "lease_lost")
    ]


def test_holder_requests_need_an_agent_id_on_the_agent_endpoint_only() -> None:
    d = Daemonless()
    wid = d.call(p.Claim(agent_id="a", work_type="t", description="d"), T0)["work_item_id"]
    with pytest.raises(BadRequest, match="agent_id is required"):
        d.call(p.Progress(work_item_id=wid, progress=10), T0 + 1, control=False)
    assert d.call(p.Progress(work_item_id=wid, progress=10), T0 + 1)["progress"] == 10


def test_status_uses_the_daemon_facts_and_the_clock() -> None:
    d = Daemonless(stale_threshold=45)
    status = d.call(p.Status(), T0 + 12.5, control=False)
    assert status["uptime"] == 12.5 and status["version"] == "9.9" and status["pid"] == 42
    assert status["stale_threshold"] == 45 and status["snapshot"] == {"count": 3}


def test_snapshot_is_only_requested() -> None:
    d = Daemonless()
    assert d.call(p.Snapshot(), T0) == {"requested": True, "count": 3, "running": False}
    assert d.snapshots_asked == 1


def test_an_analysis_is_deferred_with_a_view_of_the_open_work() -> None:
    d = Daemonless()
    d.call(p.Claim(agent_id="a", work_type="t", description="d"), T0)
    later = routes.dispatch(d.control, p.AiPriorities(), T0 + 1)
    assert isinstance(later, ai_edge.Deferred) and later.now == T0 + 1
    assert later.job.kind == "priorities" and len(later.job.view.items) == 1


def test_an_item_silent_through_a_restart_gets_one_threshold_of_grace(tmp_path: Path) -> None:
    # What the daemon does at start (loading.load_state): load, start the grace at now.
    cfg = Config(coordination_dir=str(tmp_path), state_dir=str(tmp_path), stale_threshold=60)

    def boot(now: float) -> State:
        state, store = State(cfg.policy()), FileStore(tmp_path)
        clock = FakeClock(wall=now, mono=now)
        loading.load_state(cfg, state, store, Snapshots(cfg, state, store, clock), now)
        return state

    first = boot(T0)
    first.claim("a1", "t", "survives", T0)
    records, _ = first.drain()
    store = FileStore(tmp_path)
    store.load(State(cfg.policy()))
    store.append(records)
    store.close()

    restarted = T0 + 10 * 60  # down for ten thresholds
    st = boot(restarted)
    (item,) = st.items.values()
    assert recovery.tick(st, restarted + 1) == []  # not judged for the downtime
    assert recovery.tick(st, restarted + 59) == [] and item.stale_since is None
    (rec,) = recovery.tick(st, restarted + 60)
    assert rec.work_item_id == item.work_item_id and item.status == "pending"
