"""Two ``coordd run`` on one PostgreSQL cluster: one leads, the other stands by,
follows, serves reads, refuses writes with the leader's address, and takes over when
the leader dies or is paused past its lease, without losing an acknowledged record;
the paused one, resumed, writes nothing and steps down."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import msgspec
import zmq

from coordd import protocol
from tests.conftest import CoorddProcess
from tests.daemon.test_durability import acknowledged, items_by_id, start_clients, wait_for
from tests.postgres.test_pg_daemon import on_postgres


def role(d: CoorddProcess) -> str:
    try:
        return str(d.call(protocol.Status(), timeout=1)["role"])
    except Exception:
        return "unreachable"


def pair(coordd_factory: Any, dsn: str, **kw: Any) -> tuple[CoorddProcess, CoorddProcess]:
    leader: CoorddProcess = coordd_factory(on_postgres(dsn, **kw), name="lead")
    standby: CoorddProcess = coordd_factory(on_postgres(dsn, **kw), name="stby")
    assert role(leader) == "leader" and role(standby) == "standby"
    return leader, standby


def test_a_standby_follows_serves_reads_and_refuses_writes(
    coordd_factory: Any, migrated_dsn: str
) -> None:
    leader, standby = pair(coordd_factory, migrated_dsn)
    status = standby.call(protocol.Status())
    assert status["leader"] == leader.agent_endpoint
    leader.call(protocol.Add(work_type="t", description="x", work_item_id="w1"))
    # LISTEN/NOTIFY wakes the standby: it has the item well before any poll interval.
    wait_for(lambda: "w1" in items_by_id(standby), timeout=5, what="the standby to follow")
    assert standby.call(protocol.Show(work_item_id="w1"))["status"] == "pending"
    sock = standby.agent()
    refused = standby.request(sock, protocol.Claim(agent_id="a", work_type="t", description="y"))
    assert isinstance(refused, protocol.Error) and refused.code == "not_leader"
    assert refused.leader == leader.agent_endpoint and leader.agent_endpoint in refused.message
    # A one-way heartbeat to a standby is answered too, so the agent learns to move.
    standby.send(sock, protocol.Heartbeat(agent_id="a"))
    beat = standby.recv(sock)
    assert isinstance(beat, protocol.Error) and beat.code == "not_leader"
    assert list(items_by_id(standby)) == ["w1"]  # the refused claim made nothing
    assert "standby" in standby.ctl("status").stdout


def test_sigkill_of_the_leader_under_load_loses_nothing_acknowledged(
    coordd_factory: Any, migrated_dsn: str
) -> None:
    leader, standby = pair(coordd_factory, migrated_dsn, snapshot_interval=0.5)
    clients = start_clients(leader, 0, 4)
    wait_for(
        lambda: all(p.exists() and p.stat().st_size for _, p in clients),
        what="every client to get an answer",
    )
    time.sleep(0.5)
    assert leader.proc is not None
    leader.proc.kill()
    killed = time.monotonic()
    wait_for(lambda: role(standby) == "leader", timeout=2.0 + 2.0, what="the takeover")
    took = time.monotonic() - killed
    leader.stop(signal.SIGKILL)
    for proc, _ in clients:
        proc.wait(timeout=30)
    claimed, completed = acknowledged([p for _, p in clients])
    items = items_by_id(standby)
    assert claimed and not claimed - items.keys()
    assert all(items[w]["status"] == "completed" for w in completed)
    # Agents' leases survive: every item still held has the lease its claim was told.
    for _, path in clients:
        for line in path.read_text().splitlines():
            kind, wid, *rest = line.split()
            if kind == "claimed" and wid not in completed and items[wid]["status"] == "active":
                assert items[wid]["lease"] == int(rest[0])
                assert items[wid]["agent_id"] == wid.rsplit("-", 1)[0]
    # Each completion counted once: velocity 1 per completion, nothing applied twice.
    done = [i for i in items.values() if i["status"] == "completed"]
    assert standby.call(protocol.Status())["team_velocity"].get("", 0) == len(done)
    # The new leader writes.
    standby.call(protocol.Add(work_type="t", description="after", work_item_id="after"))
    print(f"takeover {took:.2f}s after SIGKILL; {len(claimed)} claims acknowledged")


def test_a_paused_leader_resumed_writes_nothing_and_steps_down(
    coordd_factory: Any, migrated_dsn: str
) -> None:
    leader, standby = pair(coordd_factory, migrated_dsn)
    leader.call(protocol.Add(work_type="t", description="before", work_item_id="before"))
    assert leader.proc is not None
    leader.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: role(standby) == "leader", timeout=2.0 + 2.0, what="the takeover")
        # Queued for the old leader while it sleeps; it must never be acknowledged.
        sock = leader.agent()
        leader.send(sock, protocol.Add(work_type="t", description="late", work_item_id="late"))
    finally:
        leader.proc.send_signal(signal.SIGCONT)
    assert leader.proc.wait(timeout=10) != 0
    sock.setsockopt(zmq.RCVTIMEO, 300)
    try:
        reply = leader.recv(sock)
    except zmq.Again:
        reply = None
    assert not isinstance(reply, protocol.Ok)
    assert "stepping_down" in leader.log()
    items = items_by_id(standby)
    assert "before" in items and "late" not in items


def test_a_resend_after_failover_is_answered_not_applied_twice(
    coordd_factory: Any, migrated_dsn: str
) -> None:
    leader, standby = pair(coordd_factory, migrated_dsn)
    claim = protocol.Claim(
        agent_id="a1", work_type="t", description="once", work_item_id="w1", request_id="r-1"
    )
    first = leader.request(leader.agent(), claim)
    assert isinstance(first, protocol.Ok)
    done = protocol.Complete(
        work_item_id="w1", agent_id="a1", lease=first.data["lease"], velocity=5, request_id="r-2"
    )
    assert isinstance(leader.request(leader.agent(), done), protocol.Ok)
    leader.stop(signal.SIGKILL)
    wait_for(lambda: role(standby) == "leader", timeout=4.0, what="the takeover")
    # The agent never saw its replies (say): it resends both, to the new leader.
    sock = standby.agent()
    again = standby.request(sock, claim)
    assert isinstance(again, protocol.Ok) and again.data == first.data
    assert isinstance(standby.request(sock, done), protocol.Ok)
    status = standby.call(protocol.Status())
    assert status["team_velocity"] == {"": 5}  # completed once, not twice
    assert status["counts"]["completed"] == 1 and status["counts"]["items"] == 1
    # A new id is a new request: the claim now conflicts (the item exists).
    fresh = msgspec.structs.replace(claim, request_id="r-3")
    assert isinstance(standby.request(sock, fresh), protocol.Error)


def test_an_sdk_agent_follows_the_leader_and_keeps_its_lease(
    coordd_factory: Any, migrated_dsn: str
) -> None:
    from coordd.agent import Agent
    from coordd.rpc import Link

    leader, standby = pair(coordd_factory, migrated_dsn, stale_threshold=3.0)
    link = Link((leader.agent_endpoint, standby.agent_endpoint))
    agent = Agent(link, "a1", heartbeat_interval=0.3, timeout=0.5)
    try:
        held = agent.lease("t", "survives a failover")
        leader.stop(signal.SIGKILL)
        wait_for(lambda: role(standby) == "leader", timeout=4.0, what="the takeover")
        # Past the restart grace and a whole threshold more: only heartbeats that reach
        # the new leader keep the item fresh.
        taken = time.monotonic()
        wait_for(lambda: time.monotonic() - taken > 2 * 3.0 + 0.5, timeout=10)
        item = standby.call(protocol.Show(work_item_id=held.work_item_id))
        assert item["status"] == "active" and item["stale_since"] is None
        assert (item["agent_id"], item["lease"]) == ("a1", held.lease)
        assert not held.lost.is_set()
        assert agent._caller.endpoints.current() == standby.agent_endpoint
        held.complete(velocity=2)  # through the Caller, which found the leader too
        assert standby.call(protocol.Status())["team_velocity"] == {"": 2}
    finally:
        agent.close()


def test_coordctl_with_several_endpoints_finds_the_leader(
    coordd_factory: Any, migrated_dsn: str
) -> None:
    leader, standby = pair(coordd_factory, migrated_dsn)
    leader.stop(signal.SIGKILL)
    wait_for(lambda: role(standby) == "leader", timeout=4.0, what="the takeover")
    # The dead one first: coordctl times out on it, then the standby (now leader) serves.
    env = {
        "COORDD_ENDPOINTS": f"{leader.agent_endpoint},{standby.agent_endpoint}",
        "COORDD_CLIENT_TIMEOUT": "0.5",
        "AGENT_ID": "ctl",
    }
    done = standby.ctl("claim", "t", "from coordctl", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert standby.call(protocol.Status())["counts"]["active"] == 1


def test_systemd_sees_a_ready_standby_and_its_takeover(
    coordd_factory: Any, migrated_dsn: str, short_tmp: Path
) -> None:
    from tests.service.test_notify import NotifySocket

    leader: CoorddProcess = coordd_factory(on_postgres(migrated_dsn), name="lead")
    notify = NotifySocket(short_tmp / "notify.sock")
    try:
        standby: CoorddProcess = coordd_factory(
            on_postgres(migrated_dsn), env={"NOTIFY_SOCKET": str(notify.path)}, name="stby"
        )
        ready = notify.wait_for("READY", "1")
        assert ready["STATUS"] == f"standby (leader: {leader.agent_endpoint})"
        leader.stop(signal.SIGKILL)
        took_over = notify.wait_for("STATUS", timeout=6.0)
        assert not took_over["STATUS"].startswith("standby"), took_over
        assert role(standby) == "leader"
    finally:
        notify.close()
