"""What every scenario needs: a real ``coordd run``, raw requests, clocks and percentiles.

The bench talks to coordd the way a user does: it writes a TOML file, starts the
``coordd`` console script in a short directory under /tmp (Unix socket paths must stay
under 108 bytes) and speaks msgpack on its sockets. Requests are plain dicts tagged by
``op`` so the bench can already send requests that other branches are adding
(``snapshot``, ``ai_analyze``): a daemon that does not know one answers ``bad_request``
and the scenario says it was skipped.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import zmq

from coordd.protocol import PROTOCOL_VERSION

BIN = Path(sys.executable).parent
ENCODE = msgspec.msgpack.Encoder().encode
DECODE = msgspec.msgpack.Decoder().decode


class Result(msgspec.Struct):
    """One line of ``bench/results.json``; ``params`` holds the target and notes too."""

    name: str
    value: float | None
    unit: str
    reference: str | None = None
    reference_value: float | None = None
    ratio: float | None = None
    n: int = 0
    params: dict[str, Any] = {}


def request(op: str, **fields: Any) -> bytes:
    """One encoded request (a dict, so ops this coordd does not know yet can be sent)."""
    return ENCODE({"op": op, "v": PROTOCOL_VERSION, **fields})


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of an already sorted list, nearest rank."""
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def short_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


class BenchDaemon:
    """A ``coordd run`` process on its own short directory, stopped by ``close``."""

    def __init__(self, config: dict[str, Any] | None = None, name: str = "cb") -> None:
        self.base = short_dir(name)
        self.state_dir = self.base / "state"
        self.config = {
            "coordination_dir": str(self.base / "coord"),
            "state_dir": str(self.state_dir),
            "run_dir": str(self.base / "run"),
            "metrics_listen": "",
            "log_level": "info",
            "log_format": "journal",
            **(config or {}),
        }
        self.config_path = self.base / "coordd.toml"
        self.config_path.write_text(
            "".join(f"{k} = {_toml_value(v)}\n" for k, v in self.config.items())
        )
        self.control_endpoint = f"ipc://{self.base / 'run' / 'control.sock'}"
        self.agent_endpoint = f"ipc://{self.base / 'run' / 'agents.sock'}"
        self.log_path = self.base / "coordd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._control: zmq.Socket[bytes] | None = None

    # --- process ------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> float:
        """Start ``coordd run``; return seconds until READY (sd_notify) or, on a coordd
        without sd_notify, until the control socket answers ``Status``."""
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify_path = str(self.base / "notify.sock")
        if os.path.exists(notify_path):
            os.unlink(notify_path)
        notify.bind(notify_path)
        notify.setblocking(False)
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("COORDINATION_DIR", "AGENT_ID", "STALE_THRESHOLD", "OLLAMA_HOST")
        }
        env.update(COORDD_CONFIG=str(self.config_path), NOTIFY_SOCKET=notify_path)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it from here
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [str(BIN / "coordd"), "run"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        try:
            return self._wait_ready(t0, notify, timeout)
        finally:
            notify.close()

    def _wait_ready(self, t0: float, notify: socket.socket, timeout: float) -> float:
        deadline = t0 + timeout
        socket_path = self.control_endpoint.removeprefix("ipc://")
        self.ready_by = "status"
        while time.monotonic() < deadline:
            try:
                if b"READY=1" in notify.recv(4096):
                    self.ready_by = "sd_notify"
                    return time.monotonic() - t0
            except BlockingIOError:
                pass
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"coordd exited {self.proc.returncode}:\n{self.log_tail()}")
            if os.path.exists(socket_path):
                try:
                    self.call("status", timeout=0.2)
                except TimeoutError:
                    pass
                else:
                    answered = time.monotonic() - t0
                    # READY=1 follows the bind by a moment: prefer it when it comes.
                    notify.settimeout(1.0)
                    try:
                        if b"READY=1" in notify.recv(4096):
                            self.ready_by = "sd_notify"
                            return time.monotonic() - t0
                    except (TimeoutError, BlockingIOError):
                        pass
                    return answered
            time.sleep(0.002)
        raise RuntimeError(f"coordd was not ready within {timeout}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def rss(self) -> int:
        """Resident set size of the daemon in bytes."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> None:
        self._close_control()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    # --- requests -------------------------------------------------------------------

    def _control_socket(self) -> zmq.Socket[bytes]:
        if self._control is None:
            sock: zmq.Socket[bytes] = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.control_endpoint)
            self._control = sock
        return self._control

    def _close_control(self) -> None:
        if self._control is not None:
            self._control.close(0)
            self._control = None

    def call(self, op: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        """One request on the control socket; the decoded reply (``ok`` or ``error``)."""
        sock = self._control_socket()
        sock.send(request(op, **fields))
        if not sock.poll(int(timeout * 1000)):
            # The socket may hold a late reply: start afresh next time.
            self._close_control()
            raise TimeoutError(f"no reply to {op} within {timeout}s")
        reply: dict[str, Any] = DECODE(sock.recv())
        return reply

    def status(self) -> dict[str, Any]:
        reply = self.call("status")
        data: dict[str, Any] = reply["data"]
        return data

    def heartbeats(self) -> int:
        return int(self.status()["counters"]["heartbeats"])

    def agent(self) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.agent_endpoint)
        return sock


def pipelined(
    sock: zmq.Socket[bytes], payloads: list[bytes], window: int = 500, timeout: float = 120.0
) -> list[dict[str, Any]]:
    """Send many requests with at most ``window`` unanswered; the replies in order.

    The window keeps the replies waiting for this client small: coordd holds at most
    ``max_peer_reply_bytes`` of unread replies per peer and drops the rest (outbox.py).
    """
    replies: list[dict[str, Any]] = []
    sent = 0
    deadline = time.monotonic() + timeout
    while len(replies) < len(payloads):
        while sent < len(payloads) and sent - len(replies) < window:
            sock.send(payloads[sent])
            sent += 1
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(replies)}/{len(payloads)} replies within {timeout}s")
        if sock.poll(1000):
            replies.append(DECODE(sock.recv()))
    return replies


def load_items(
    daemon: BenchDaemon,
    n: int,
    agents: int = 100,
    description_bytes: int = 100,
    prefix: str = "w",
    timeout: float = 300.0,
) -> list[tuple[str, str, int]]:
    """Claim ``n`` items over ``agents`` agents; return (agent, item, lease) triples.

    Ids are given (``w0000042``): the daemon's own id generator is not what we measure.
    """
    sock = daemon.agent()
    out: list[tuple[str, str, int]] = []
    desc = "d" * description_bytes
    deadline = time.monotonic() + timeout
    step = 20_000
    try:
        for start in range(0, n, step):
            ids = [
                (f"a{i % agents}", f"{prefix}{i:08d}") for i in range(start, min(n, start + step))
            ]
            payloads = [
                request("claim", agent_id=a, work_type="bench", description=desc, work_item_id=w)
                for a, w in ids
            ]
            left = max(1.0, deadline - time.monotonic())
            for (a, w), reply in zip(ids, pipelined(sock, payloads, timeout=left), strict=True):
                if reply.get("reply") != "ok":
                    raise RuntimeError(f"claim {w} refused: {reply}")
                out.append((a, w, int(reply["data"]["lease"])))
    finally:
        sock.close(0)
    return out
