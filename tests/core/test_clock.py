"""Silence is measured on a clock that does not step (issue 14, finding 9).

The daemon reads two clocks (``coordd.clock``): durations on the monotonic one,
timestamps on the wall one. A ``FakeClock`` steps the wall clock as NTP or a resumed
VM would, while the monotonic clock advances normally: nothing is recovered for the
step, and an item that is really silent is still recovered on time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from coordd import protocol as p
from coordd.clock import FakeClock
from coordd.config import Config
from coordd.core import recovery
from coordd.core.model import UnknownWork
from coordd.daemon import handlers, loading, routes
from coordd.daemon.server import Daemon

handlers.load()
T0 = 1_750_000_000.0


@pytest.fixture
def daemon(tmp_path: Path) -> Daemon:
    """A daemon in-process on the fake clock: loaded as ``start`` loads it, no sockets.
    Requests go through its handler contexts with ``daemon.now()``, as the loop does."""
    cfg = Config(coordination_dir=str(tmp_path), state_dir=str(tmp_path), stale_threshold=60)
    d = Daemon(cfg, clock=FakeClock(wall=T0, mono=5000.0))
    loading.load_state(cfg, d.state, d.store, d.snapshots, d.now())
    return d


def call(d: Daemon, req: p.Request) -> Any:
    return msgspec.to_builtins(routes.dispatch(d.control_ctx, req, d.now()))


def claim(d: Daemon, agent: str) -> str:
    return call(d, p.Claim(agent_id=agent, work_type="t", description="d"))["work_item_id"]


@pytest.mark.parametrize("step", [600.0, -600.0])
def test_a_wall_clock_step_recovers_nobody(daemon: Daemon, step: float) -> None:
    clock = daemon.clock
    assert isinstance(clock, FakeClock)
    ids = [claim(daemon, a) for a in ("a1", "a2", "a3")]
    clock.advance(30)
    call(daemon, p.Heartbeat(agent_id="a1", ack=True))  # one just heartbeated
    clock.step_wall(step)  # an NTP step; the monotonic clock does not move
    clock.advance(1)
    assert recovery.tick(daemon.state, daemon.now()) == []
    assert call(daemon, p.Freshness())["dashboard"]["stale"] == 0
    # Really silent: a2 and a3 reach their 60 s at the monotonic +60, a1 at +90.
    clock.advance(28.9)
    assert recovery.tick(daemon.state, daemon.now()) == []
    clock.advance(0.1)
    recovered = {r.work_item_id for r in recovery.tick(daemon.state, daemon.now())}
    assert recovered == {ids[1], ids[2]}
    report = call(daemon, p.Show(work_item_id=ids[1]))
    # Times people read are wall times, the step included; the silence is the real one.
    assert report["recovered_at"] == clock.wall() == T0 + 60 + step
    assert "no heartbeat for 60.0s" in report["recovery_reason"]
    clock.advance(30)
    assert {r.work_item_id for r in recovery.tick(daemon.state, daemon.now())} == {ids[0]}


def test_timestamps_follow_the_wall_clock_and_silence_does_not(daemon: Daemon) -> None:
    clock = daemon.clock
    assert isinstance(clock, FakeClock)
    wid = claim(daemon, "a1")
    clock.advance(10)
    clock.step_wall(3600)
    call(daemon, p.Heartbeat(agent_id="a1", ack=True))
    shown = call(daemon, p.Show(work_item_id=wid))
    assert shown["claimed_at"] == T0 and shown["last_heartbeat"] == T0 + 3610
    clock.advance(5)
    (item,) = daemon.state.active_items()
    assert daemon.state.silent_for(item, daemon.now()) == 5.0
    assert call(daemon, p.CheckStale())["now"] == T0 + 3615  # the report's time: wall
    assert call(daemon, p.Status())["uptime"] == 15.0  # monotonic


def test_across_a_restart_the_grace_covers_a_wall_step(tmp_path: Path) -> None:
    cfg = Config(coordination_dir=str(tmp_path), state_dir=str(tmp_path), stale_threshold=60)
    first = Daemon(cfg, clock=FakeClock(wall=T0, mono=100.0))
    loading.load_state(cfg, first.state, first.store, first.snapshots, first.now())
    wid = claim(first, "a1")
    first.store.append(first.state.drain()[0])
    first.close()
    # Restarted later; the monotonic clock starts anew and the wall clock stepped ahead.
    clock = FakeClock(wall=T0 + 7200, mono=3.0)
    second = Daemon(cfg, clock=clock)
    loading.load_state(cfg, second.state, second.store, second.snapshots, second.now())
    clock.advance(59)
    assert recovery.tick(second.state, second.now()) == []
    clock.advance(1)
    (rec,) = recovery.tick(second.state, second.now())
    assert rec.work_item_id == wid
    second.close()


def test_the_snapshot_schedule_is_monotonic(daemon: Daemon) -> None:
    clock = daemon.clock
    assert isinstance(clock, FakeClock)
    due = daemon.snapshots.next_at
    clock.step_wall(10 * daemon.cfg.snapshot_interval)  # no snapshot storm for a step
    assert daemon.clock.mono() < due
    clock.advance(daemon.cfg.snapshot_interval)
    assert daemon.clock.mono() >= due


def test_the_tick_prunes_finished_work_after_retention(daemon: Daemon) -> None:
    clock = daemon.clock
    assert isinstance(clock, FakeClock)
    wid = claim(daemon, "a1")
    call(daemon, p.Complete(work_item_id=wid, velocity=3))
    clock.advance(daemon.cfg.retention - 1)
    daemon.on_tick(daemon.now())
    assert call(daemon, p.Show(work_item_id=wid))["status"] == "completed"
    clock.advance(2)
    daemon.on_tick(daemon.now())
    with pytest.raises(UnknownWork):
        call(daemon, p.Show(work_item_id=wid))
    assert call(daemon, p.Status())["team_velocity"] == {"": 3}
