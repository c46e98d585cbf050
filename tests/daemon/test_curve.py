"""CURVE on a tcp:// agent endpoint: only allowed keys get in, each as its own agent,
revocation applies on SIGHUP; a tcp endpoint beyond loopback refuses to run bare."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth

from coordd import protocol
from tests.conftest import CoorddProcess


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Curved:
    """A coordd with require_curve on tcp://127.0.0.1 and key pairs for a1 (allowed)
    and intruder (not allowed)."""

    def __init__(self, factory: Any) -> None:
        self.endpoint = f"tcp://127.0.0.1:{_free_port()}"
        self.d: CoorddProcess = factory(
            {"agent_endpoint": self.endpoint, "require_curve": True, "curve_dir": "keys"},
            start=False,
        )
        self.keys = self.d.base / "keys"
        self.agents = self.d.base / "agent-keys"
        self.ok(self.d.ctl("keys", "generate"))
        for name in ("a1", "intruder"):
            self.ok(self.d.ctl("keys", "generate", "--agent", name, "--out", str(self.agents)))
        self.ok(self.d.ctl("keys", "allow", "a1", str(self.agents / "a1.key")))
        self.d.start()

    @staticmethod
    def ok(out: Any) -> None:
        assert out.returncode == 0, out

    def connect(self, name: str | None) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 3000)
        if name is not None:
            public, secret = zmq.auth.load_certificate(self.agents / f"{name}.key_secret")
            server, _ = zmq.auth.load_certificate(self.keys / "server.key")
            sock.curve_publickey = public
            sock.curve_secretkey = secret or b""
            sock.curve_serverkey = server
        sock.connect(self.endpoint)
        return sock

    def refused(self, sock: zmq.Socket[bytes]) -> bool:
        sock.setsockopt(zmq.RCVTIMEO, 700)
        self.d.send(sock, protocol.Status())
        try:
            sock.recv()
        except zmq.Again:
            return True
        return False

    def wait_log(self, text: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.d.log():
            assert time.monotonic() < deadline, f"{text!r} not logged:\n{self.d.log()}"
            time.sleep(0.02)


@pytest.fixture
def curved(coordd_factory: Any) -> Curved:
    return Curved(coordd_factory)


def test_an_allowed_key_is_served_as_its_own_agent(curved: Curved) -> None:
    sock = curved.connect("a1")
    reply = curved.d.request(sock, protocol.Register(agent_id="a1"))
    assert isinstance(reply, protocol.Ok), reply
    reply = curved.d.request(sock, protocol.Claim(agent_id="a1", work_type="t", description="d"))
    assert isinstance(reply, protocol.Ok) and reply.data["agent_id"] == "a1"
    # The same key may not register or act as another agent.
    for req in (
        protocol.Register(agent_id="a2"),
        protocol.Claim(agent_id="a2", work_type="t", description="d"),
    ):
        reply = curved.d.request(sock, req)
        assert reply.code == "not_allowed" and "'a1'" in reply.message
    assert curved.d.call(protocol.Status())["counts"]["items"] == 1
    sock.close()


def test_unknown_key_and_no_key_are_refused_and_logged(curved: Curved) -> None:
    intruder = curved.connect("intruder")
    assert curved.refused(intruder)
    intruder.close()
    curved.wait_log("curve_refused")
    line = next(ln for ln in curved.d.log().splitlines() if "curve_refused" in ln)
    assert "127.0.0.1" in line and "not in allowed" in line
    bare = curved.connect(None)
    assert curved.refused(bare)
    bare.close()
    assert curved.d.call(protocol.Status())["counts"]["agents"] == 0


def test_a_revoked_key_is_refused_after_sighup(curved: Curved) -> None:
    before = curved.connect("a1")
    assert isinstance(curved.d.request(before, protocol.Register(agent_id="a1")), protocol.Ok)
    curved.ok(curved.d.ctl("keys", "revoke", "a1"))
    assert curved.d.proc is not None
    curved.d.proc.send_signal(signal.SIGHUP)
    curved.wait_log("keys_reloaded")
    # A new connection fails the handshake...
    after = curved.connect("a1")
    assert curved.refused(after)
    after.close()
    # ...and the connection accepted before the revocation is refused from now on.
    reply = curved.d.request(before, protocol.Heartbeat(agent_id="a1", ack=True))
    assert reply.code == "not_allowed" and "revoked" in reply.message
    before.close()
    # Allowing it again and reloading lets it back in.
    curved.ok(curved.d.ctl("keys", "allow", "a1", str(curved.agents / "a1.key")))
    curved.d.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while curved.d.log().count("keys_reloaded") < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    again = curved.connect("a1")
    assert isinstance(curved.d.request(again, protocol.Register(agent_id="a1")), protocol.Ok)
    again.close()
    assert curved.d.stop() == 0


@pytest.mark.parametrize("host", ["0.0.0.0", "*"])
def test_tcp_beyond_loopback_refuses_to_start_without_keys(coordd_factory: Any, host: str) -> None:
    d = coordd_factory({"agent_endpoint": f"tcp://{host}:{_free_port()}"}, start=False)
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(15) != 0
    assert "curve_dir" in d.log()


def test_missing_key_files_stop_the_start(coordd_factory: Any, tmp_path: Path) -> None:
    d = coordd_factory(
        {
            "agent_endpoint": f"tcp://127.0.0.1:{_free_port()}",
            "require_curve": True,
            "curve_dir": str(tmp_path / "none"),
        },
        start=False,
    )
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(15) != 0
    assert "coordctl keys generate" in d.log()


def test_loopback_tcp_without_keys_is_plain(coordd_factory: Any) -> None:
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    d = coordd_factory({"agent_endpoint": endpoint})
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 3000)
    sock.connect(endpoint)
    assert isinstance(d.request(sock, protocol.Register(agent_id="a1")), protocol.Ok)
    sock.close()


def test_events_over_tcp_need_an_allowed_key_too(coordd_factory: Any) -> None:
    events = f"tcp://127.0.0.1:{_free_port()}"
    d = coordd_factory(
        {"events_endpoint": events, "require_curve": True, "curve_dir": "keys"}, start=False
    )
    Curved.ok(d.ctl("keys", "generate"))
    Curved.ok(d.ctl("keys", "generate", "--agent", "dash", "--out", "ak"))
    Curved.ok(d.ctl("keys", "allow", "dash", "ak/dash.key"))
    d.start()
    subs = {}
    for name in ("dash", None):
        sub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVTIMEO, 700)
        if name:
            public, secret = zmq.auth.load_certificate(d.base / "ak" / "dash.key_secret")
            sub.curve_publickey, sub.curve_secretkey = public, secret or b""
            sub.curve_serverkey = zmq.auth.load_certificate(d.base / "keys" / "server.key")[0]
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(events)
        subs[name] = sub
    # The ipc agent endpoint is unchanged: no key needed there.
    agent = d.agent()
    deadline = time.monotonic() + 5
    got: list[bytes] = []
    while not got and time.monotonic() < deadline:  # PUB drops until the SUB has joined
        d.request(agent, protocol.Add(work_type="t", description="d"))
        try:
            got = subs["dash"].recv_multipart()
        except zmq.Again:
            pass
    assert got and got[0] == b"added"
    with pytest.raises(zmq.Again):
        subs[None].recv_multipart()
    for s in (*subs.values(), agent):
        s.close()


def test_events_over_tcp_beyond_loopback_refuse_to_start_bare(coordd_factory: Any) -> None:
    d = coordd_factory({"events_endpoint": f"tcp://0.0.0.0:{_free_port()}"}, start=False)
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(15) != 0
    assert "events_endpoint" in d.log() and "curve_dir" in d.log()
