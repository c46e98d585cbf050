"""Where coordd pushes revocations: the connections that heartbeated for an agent with
``push``, remembered only for agents it knows, so made-up agent ids cannot grow it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coordd import protocol as p
from coordd.clock import FakeClock
from coordd.config import Config
from coordd.daemon import handlers, loading
from coordd.daemon.server import CONNS_PER_AGENT, Daemon

handlers.load()


@pytest.fixture
def daemon(tmp_path: Path) -> Daemon:
    cfg = Config(coordination_dir=str(tmp_path), state_dir=str(tmp_path))
    d = Daemon(cfg, clock=FakeClock(wall=1_750_000_000.0, mono=5000.0))
    loading.load_state(cfg, d.state, d.store, d.snapshots, d.now())
    return d


def beat(d: Daemon, peer: bytes, req: p.Request) -> None:
    """What the loop does with a message from ``peer`` on the agent endpoint (no socket
    here: the replies are only queued)."""
    no_socket: Any = None
    d._handle(no_socket, [peer, d.codec.encode(req)], d.now(), from_control=False)


def test_heartbeats_for_made_up_agents_remember_no_connection(daemon: Daemon) -> None:
    for n in range(1000):
        beat(daemon, b"peer%d" % n, p.Heartbeat(agent_id=f"nobody_{n}", push=True, ack=True))
        beat(daemon, b"peer%d" % n, p.HeartbeatBatch(agent_id=f"ghost_{n}", items=[], push=True))
    assert daemon.beat_conns == {}


def test_a_known_agent_keeps_its_most_recent_connections(daemon: Daemon) -> None:
    beat(daemon, b"first", p.Register(agent_id="a1"))
    for n in range(CONNS_PER_AGENT + 3):
        beat(daemon, b"peer%d" % n, p.Heartbeat(agent_id="a1", push=True, ack=True))
    kept = list(daemon.beat_conns["a1"])
    assert kept == [b"peer%d" % n for n in range(3, CONNS_PER_AGENT + 3)]
