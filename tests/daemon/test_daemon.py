"""A real coordd process driven by coordctl and by raw ZeroMQ clients."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import pytest
import zmq

from coordd import protocol
from tests.conftest import BIN, CoorddProcess
from tests.helpers import status_when_up


def test_claim_list_progress_complete_with_coordctl(coordd: CoorddProcess) -> None:
    env = {"AGENT_ID": "agent_a"}
    r = coordd.ctl("claim", "build", 'desc with "quotes"', "high", "core", "--json", env=env)
    assert r.returncode == 0, r.stderr
    item = json.loads(r.stdout)
    wid, lease = item["work_item_id"], item["lease"]
    assert item["description"] == 'desc with "quotes"'

    listed = json.loads(coordd.ctl("list", "--status", "active", "--json").stdout)
    assert [i["work_item_id"] for i in listed["items"]] == [wid]
    assert "desc with" in coordd.ctl("list", "--team", "core").stdout

    r = coordd.ctl("progress", wid, "60", "review", "--lease", str(lease), env=env)
    assert r.returncode == 0 and "60%" in r.stdout

    r = coordd.ctl("complete", wid, "done", "8", "--lease", str(lease), env=env)
    assert r.returncode == 0, r.stderr
    shown = json.loads(coordd.ctl("show", wid, "--json").stdout)
    assert shown["status"] == "completed" and shown["velocity_points"] == 8
    status = json.loads(coordd.ctl("status", "--json").stdout)
    assert status["counts"]["completed"] == 1 and status["team_velocity"] == {"core": 8}


def test_wrong_lease_and_unknown_id_are_refused(coordd: CoorddProcess) -> None:
    env = {"AGENT_ID": "agent_a"}
    item = json.loads(coordd.ctl("claim", "t", "d", "--json", env=env).stdout)
    r = coordd.ctl("complete", item["work_item_id"], "--lease", str(item["lease"] + 1), env=env)
    assert r.returncode == 1
    assert "lease_lost" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = coordd.ctl("progress", "work_does_not_exist", "10")
    assert r.returncode == 1 and "unknown_work" in r.stderr
    r = coordd.ctl("complete", item["work_item_id"], env={"AGENT_ID": "intruder"})
    assert r.returncode == 1 and "not_owner" in r.stderr
    assert json.loads(coordd.ctl("show", item["work_item_id"], "--json").stdout)["status"] == (
        "active"
    )


@pytest.mark.slow  # fifty coordctl processes: 17-23 s on a loaded 2-core machine
def test_fifty_concurrent_claim_next_on_ten_items(coordd: CoorddProcess) -> None:
    for n in range(10):
        coordd.call(protocol.Add(work_type="t", description=f"item {n}"))

    def claim(n: int) -> subprocess.CompletedProcess[str]:
        # Fifty Python processes start at once: on a loaded 2-core machine each may
        # wait long for a core before it sends anything (coordd answers in ms).
        return coordd.ctl("claim-next", "--agent", f"agent_{n}", "--json", timeout=120)

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(claim, range(50)))
    winners = [json.loads(r.stdout) for r in results if r.returncode == 0]
    losers = [r for r in results if r.returncode != 0]
    assert len(winners) == 10
    assert len({w["work_item_id"] for w in winners}) == 10
    assert len(losers) == 40
    assert all(r.returncode == 3 and "nothing pending" in r.stderr for r in losers)


def test_raw_zeromq_agent_claims_heartbeats_and_completes(coordd: CoorddProcess) -> None:
    sock = coordd.agent()
    reply = coordd.request(sock, protocol.Claim(agent_id="z1", work_type="t", description="d"))
    assert isinstance(reply, protocol.Ok)
    wid, lease = reply.data["work_item_id"], reply.data["lease"]
    # one-way heartbeat: no reply
    coordd.send(sock, protocol.Heartbeat(agent_id="z1", work_item_id=wid, lease=lease))
    # heartbeat with ack, and a batch whose stale lease is reported
    ack = coordd.request(
        sock, protocol.Heartbeat(agent_id="z1", work_item_id=wid, lease=lease, ack=True)
    )
    assert ack.data == {"refreshed": 1}
    batch = coordd.request(
        sock,
        protocol.HeartbeatBatch(
            agent_id="z1", items=[protocol.ItemBeat(wid, lease), protocol.ItemBeat(wid, lease + 5)]
        ),
    )
    assert batch.data["refreshed"] == 1
    assert batch.data["errors"][0]["code"] == "lease_lost"
    done = coordd.request(sock, protocol.Complete(agent_id="z1", work_item_id=wid, lease=lease))
    assert done.data["status"] == "completed"
    status = coordd.call(protocol.Status())
    assert status["counters"]["heartbeats"] >= 3


def test_malformed_bytes_get_bad_request_on_both_sockets(coordd: CoorddProcess) -> None:
    agent = coordd.agent()
    control: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    control.setsockopt(zmq.LINGER, 0)
    control.setsockopt(zmq.RCVTIMEO, 5000)
    control.connect("ipc://" + coordd.control_socket)
    bad_payloads = [
        b"\xff\x00garbage",
        b"",
        msgspec.msgpack.encode({"op": "no_such_op"}),
        msgspec.msgpack.encode({"op": "claim", "agent_id": 5}),
        msgspec.msgpack.encode([1, 2, 3]),
    ]
    for sock in (agent, control):
        for payload in bad_payloads:
            sock.send(payload)
            reply = coordd.recv(sock)
            assert isinstance(reply, protocol.Error), payload
            assert reply.code == "bad_request"
    # still serving
    assert coordd.call(protocol.Status())["health"] == "ok"


def test_version_mismatch_is_a_clear_error(coordd: CoorddProcess) -> None:
    sock = coordd.agent()
    sock.send(msgspec.msgpack.encode({"op": "status", "v": 99}))
    reply = coordd.recv(sock)
    assert reply.code == "version_mismatch" and "99" in reply.message
    # an unknown future op with another version is still reported as a version problem
    sock.send(msgspec.msgpack.encode({"op": "teleport", "v": 2}))
    assert coordd.recv(sock).code == "version_mismatch"


def test_agent_endpoint_requires_agent_id_for_holder_ops(coordd: CoorddProcess) -> None:
    sock = coordd.agent()
    item = coordd.call(protocol.Claim(agent_id="a", work_type="t", description="d"))
    reply = coordd.request(sock, protocol.Complete(work_item_id=item["work_item_id"]))
    assert reply.code == "bad_request" and "agent_id" in reply.message


def test_sigterm_stops_cleanly(coordd: CoorddProcess) -> None:
    assert coordd.stop(signal.SIGTERM) == 0
    assert not os.path.exists(coordd.control_socket)
    assert "stopping" in coordd.log()


def test_second_daemon_on_same_dir_is_refused(coordd: CoorddProcess) -> None:
    r = subprocess.run(
        [str(BIN / "coordd"), "run"], env=coordd.env, capture_output=True, text=True, timeout=20
    )
    assert r.returncode == 1
    assert "another coordd" in r.stderr
    assert coordd.call(protocol.Status())["health"] == "ok"


def test_coordctl_says_when_daemon_is_unreachable(coordd_factory: Any) -> None:
    d: CoorddProcess = coordd_factory(start=False)
    t0 = time.monotonic()
    r = d.ctl("status")
    assert r.returncode == 4
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and d.control_socket in lines[0] and "COORDINATION_DIR" in lines[0]
    assert time.monotonic() - t0 < 10


def test_coordctl_times_out_on_a_silent_socket(coordd_factory: Any) -> None:
    d: CoorddProcess = coordd_factory(start=False)
    os.makedirs(os.path.dirname(d.control_socket), exist_ok=True)
    silent: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
    silent.bind("ipc://" + d.control_socket)  # accepts, never answers
    try:
        t0 = time.monotonic()
        r = d.ctl("--timeout", "0.5", "status")
        assert r.returncode == 4 and "did not answer within 0.5s" in r.stderr
        assert time.monotonic() - t0 < 10
    finally:
        silent.close(0)


def test_only_coordination_dir_is_needed_to_find_each_other(short_tmp: Any) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COORD")}
    env["COORDINATION_DIR"] = str(short_tmp / "shared")
    env["COORDD_METRICS_LISTEN"] = "127.0.0.1:0"  # not the default 9641, maybe taken
    proc = subprocess.Popen(
        [str(BIN / "coordd"), "run"],
        env=env,
        cwd="/",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        r = status_when_up(str(BIN / "coordctl"), env, str(short_tmp))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["coordination_dir"] == env["COORDINATION_DIR"]
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_client_pipelining_thousands_of_requests_gets_every_reply(
    coordd: CoorddProcess,
) -> None:
    """More requests in flight than ZeroMQ's default send queue (1,000) keeps: no reply
    may be dropped, or the client would wait forever for an acknowledged claim."""
    sock = coordd.agent()
    sock.setsockopt(zmq.RCVHWM, 0)
    n = 3000
    for i in range(n):
        coordd.send(sock, protocol.Claim(agent_id="p", work_type="t", description=f"d{i}"))
    replies = [coordd.recv(sock) for _ in range(n)]
    assert all(isinstance(r, protocol.Ok) for r in replies)
    assert len({r.data["work_item_id"] for r in replies}) == n
    assert coordd.call(protocol.Status())["counts"]["active"] == n


def test_twenty_concurrent_claims_store_twenty_items(coordd: CoorddProcess) -> None:
    """The old script stored 1 of 20 concurrent claims and still exited 0 for all."""

    def claim(n: int) -> subprocess.CompletedProcess[str]:
        return coordd.ctl("claim", "t", f'item "{n}"', "--agent", f"agent_{n}", "--json")

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(claim, range(20)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    stored = {i["description"] for i in coordd.call(protocol.List(status="active"))}
    assert stored == {f'item "{n}"' for n in range(20)}
