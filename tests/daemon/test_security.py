"""Hostile input and access control against a real coordd: limits, file permissions,
other users, control-only requests, oversized and deeply nested messages."""

from __future__ import annotations

import grp
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from coordd import protocol
from coordd.daemon import handlers
from tests.conftest import BIN, CoorddProcess
from tests.helpers import sample_request

NOBODY = 65534
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="switching users needs root and setpriv (util-linux)",
)


def _raw(d: CoorddProcess, payload: bytes | list[bytes], control: bool = False) -> Any:
    """Send raw frames on one socket and return the decoded reply."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.connect("ipc://" + d.control_socket if control else d.agent_endpoint)
    try:
        sock.send_multipart(payload if isinstance(payload, list) else [payload])
        return d.codec.reply_decoder.decode(sock.recv_multipart()[-1])
    finally:
        sock.close()


def _enc(msg: dict[str, Any]) -> bytes:
    return msgspec.msgpack.encode({"v": protocol.PROTOCOL_VERSION, **msg})


# --- limits --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msg", "names"),
    [
        ({"op": "register", "agent_id": "a" * 201}, ["<= 200", "$.agent_id"]),
        ({"op": "add", "work_type": "t" * 201, "description": "d"}, ["<= 200", "$.work_type"]),
        ({"op": "add", "work_type": "t", "description": "d" * 10_001}, ["<= 10000"]),
        ({"op": "add", "work_type": "t", "description": "d", "team": "x" * 300}, ["$.team"]),
        ({"op": "complete", "work_item_id": "w", "result": "r" * 10_001}, ["$.result"]),
        ({"op": "progress", "work_item_id": "w", "progress": 101}, ["<= 100", "$.progress"]),
        ({"op": "progress", "work_item_id": "w", "progress": 5, "status": "s" * 201}, ["status"]),
        ({"op": "register", "agent_id": "a", "capacity": -1}, [">= 0", "$.capacity"]),
        ({"op": "heartbeat_batch", "agent_id": "a", "items": [["w"]] * 100_001}, ["100000"]),
    ],
)
def test_every_field_limit_is_refused_naming_the_field(
    coordd: CoorddProcess, msg: dict[str, Any], names: list[str]
) -> None:
    reply = _raw(coordd, _enc(msg))
    assert isinstance(reply, protocol.Error) and reply.code == "bad_request"
    for name in names:
        assert name in reply.message
    assert coordd.call(protocol.Status())["counts"]["items"] == 0


def test_configured_limits_are_tighter_and_named(coordd_factory: Any) -> None:
    d = coordd_factory(
        {
            "max_items": 2,
            "max_agents": 1,
            "max_id_len": 8,
            "max_description_len": 20,
            "max_batch": 3,
        }
    )
    cases = [
        (protocol.Add(work_type="t", description="x" * 21), "max_description_len"),
        (protocol.Add(work_type="t", description="d", work_item_id="w" * 9), "max_id_len"),
        (protocol.Register(agent_id="a" * 9), "max_id_len"),
    ]
    for req, key in cases:
        reply = _raw(d, d.codec.encode(req))
        assert reply.code == "bad_request" and key in reply.message, reply
    beats = [protocol.ItemBeat("w")] * 4
    reply = _raw(d, d.codec.encode(protocol.HeartbeatBatch(agent_id="a", items=beats)))
    assert reply.code == "bad_request" and "max_batch" in reply.message
    assert _raw(d, d.codec.encode(protocol.Register(agent_id="a1"))).data["agent_id"] == "a1"
    reply = _raw(d, d.codec.encode(protocol.Register(agent_id="a2")))
    assert reply.code == "limit_reached" and "max_agents" in reply.message
    for _ in range(2):
        assert isinstance(
            _raw(d, d.codec.encode(protocol.Add(work_type="t", description="d"))), protocol.Ok
        )
    reply = _raw(d, d.codec.encode(protocol.Add(work_type="t", description="d")))
    assert reply.code == "limit_reached" and "max_items" in reply.message


def test_unknown_fields_are_ignored(coordd: CoorddProcess) -> None:
    reply = _raw(coordd, _enc({"op": "register", "agent_id": "a1", "future_field": [1, 2]}))
    assert isinstance(reply, protocol.Ok) and reply.data["agent_id"] == "a1"


def test_deep_nesting_is_refused_and_the_daemon_lives(coordd: CoorddProcess) -> None:
    enc = msgspec.msgpack.encode
    deep = b"\x83" + enc("op") + enc("list") + enc("v") + enc(1) + enc("x")
    deep += b"\x91" * 200_000 + b"\xc0"
    for control in (False, True):
        reply = _raw(coordd, deep, control=control)
        assert reply.code == "bad_request"
    assert coordd.call(protocol.Status())["health"] == "ok"


def test_oversized_message_drops_only_that_connection(coordd_factory: Any) -> None:
    d = coordd_factory({"max_message_bytes": 4096})
    big: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    big.setsockopt(zmq.LINGER, 0)
    big.setsockopt(zmq.RCVTIMEO, 500)
    big.connect(d.agent_endpoint)
    big.send(d.codec.encode(protocol.Add(work_type="t", description="x" * 5000)))
    with pytest.raises(zmq.Again):
        big.recv()  # ZeroMQ closes the connection: no reply, no error frame
    big.close()
    # Everyone else is served as before, on both sockets.
    reply = _raw(d, d.codec.encode(protocol.Add(work_type="t", description="x" * 100)))
    assert isinstance(reply, protocol.Ok)
    assert d.call(protocol.Status())["counts"]["items"] == 1


# --- control-only requests -----------------------------------------------------------


def _control_only() -> list[type]:
    table = handlers.load()
    return sorted((t for t, r in table.items() if not r.agents), key=lambda t: t.__name__)


@pytest.mark.parametrize("cls", _control_only())
def test_control_only_requests_are_refused_on_the_agent_endpoint(
    coordd: CoorddProcess, cls: type
) -> None:
    # Every route without agents=True, through the real loop and sockets.
    payload = coordd.codec.encode(sample_request(cls))
    reply = _raw(coordd, payload)
    assert reply.code == "not_allowed" and "control socket" in reply.message
    assert getattr(_raw(coordd, payload, control=True), "code", "ok") != "not_allowed"


# --- file permissions and other users ------------------------------------------------


def test_run_dir_and_control_socket_modes(coordd: CoorddProcess) -> None:
    run = Path(coordd.control_socket).parent
    assert stat.S_IMODE(run.stat().st_mode) == 0o750
    assert stat.S_IMODE(os.stat(coordd.control_socket).st_mode) == 0o660


def _as_user(d: CoorddProcess, *args: str, groups: str | None = None) -> Any:
    cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}"]
    cmd += [f"--groups={groups}"] if groups else ["--clear-groups"]
    return subprocess.run(
        [*cmd, "--", *args],
        env={**d.env, "HOME": "/", "PYTHONDONTWRITEBYTECODE": "1"},
        cwd=d.base,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _skip_unless_nobody_can_run_the_venv() -> None:
    # CI may clone under a directory another user cannot traverse; then these tests
    # cannot run coordctl as that user at all, which says nothing about coordd.
    probe = subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            "--",
            sys.executable,
            "-c",
            "import zmq",
        ],
        capture_output=True,
        timeout=30,
    )
    if probe.returncode != 0:
        pytest.skip(f"user nobody cannot run {sys.executable} (a parent directory is closed)")


def _open_to_others(d: CoorddProcess) -> None:
    # mkdtemp makes 0700 directories; the daemon's own run dir keeps its 0750.
    for p in (d.base.parent, d.base):
        os.chmod(p, 0o755)


@needs_root
def test_another_user_is_refused(coordd_factory: Any) -> None:
    d = coordd_factory()
    _skip_unless_nobody_can_run_the_venv()
    _open_to_others(d)
    out = _as_user(d, str(BIN / "coordctl"), "status")
    assert out.returncode == 4, out
    assert "permission denied" in out.stderr
    # Without coordctl's courtesy check, a raw ZeroMQ client gets no answer either.
    probe = (
        "import sys, zmq; s = zmq.Context().socket(zmq.DEALER); s.linger = 0;"
        " s.rcvtimeo = 1000; s.connect(sys.argv[1]); s.send(sys.argv[2].encode('latin1'));"
        " s.recv()"
    )
    payload = d.codec.encode(protocol.Status()).decode("latin1")
    out = _as_user(d, sys.executable, "-c", probe, "ipc://" + d.control_socket, payload)
    assert out.returncode != 0 and "Again" in out.stderr


@needs_root
def test_a_member_of_the_control_group_is_served(coordd_factory: Any) -> None:
    try:
        group = grp.getgrnam("users")
    except KeyError:
        pytest.skip("no 'users' group on this machine")
    d = coordd_factory({"control_group": "users"})
    _skip_unless_nobody_can_run_the_venv()
    _open_to_others(d)
    assert os.stat(d.control_socket).st_gid == group.gr_gid
    out = _as_user(d, str(BIN / "coordctl"), "status", groups=str(group.gr_gid))
    assert out.returncode == 0, out
    assert "coordd" in out.stdout and "items: 0" in out.stdout
    out = _as_user(d, str(BIN / "coordctl"), "status")  # same user, not in the group
    assert out.returncode == 4 and "permission denied" in out.stderr


def test_a_missing_control_group_stops_the_start(coordd_factory: Any) -> None:
    d = coordd_factory({"control_group": "no-such-group-coordd"}, start=False)
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(15) != 0
    assert "no-such-group-coordd" in d.log()


def test_the_daemon_answers_after_a_burst_of_garbage(coordd: CoorddProcess) -> None:
    start = time.monotonic()
    for i in range(200):
        _raw(coordd, [b"", bytes([i % 256]) * (i % 7)], control=bool(i % 2))
    assert coordd.call(protocol.Status())["counts"]["items"] == 0
    assert time.monotonic() - start < 20
