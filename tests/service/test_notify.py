"""coordd under a stand-in systemd: a NOTIFY_SOCKET datagram socket this test owns."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordd import protocol
from tests.conftest import CoorddProcess, write_toml

WATCHDOG_USEC = 200_000  # 0.2 s: coordd pings every 0.1 s


class NotifySocket:
    """The receiving end of sd_notify, as systemd holds it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.seen: list[tuple[float, dict[str, str]]] = []

    def recv(self, timeout: float) -> dict[str, str] | None:
        """One datagram as {field: value}, or None after ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.seen.append((time.monotonic(), fields))
        return fields

    def wait_for(self, key: str, value: str | None = None, timeout: float = 10.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.recv(left)
            if msg is not None and key in msg and (value is None or msg[key] == value):
                return msg
        raise AssertionError(f"no {key}={value} within {timeout}s; saw {self.seen}")

    def collect(self, seconds: float) -> list[dict[str, str]]:
        out = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            msg = self.recv(left)
            if msg is not None:
                out.append(msg)
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(short_tmp: Path) -> Iterator[NotifySocket]:
    n = NotifySocket(short_tmp / "notify.sock")
    yield n
    n.close()


def _daemon(factory: Any, notify: NotifySocket, **config: Any) -> CoorddProcess:
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    d: CoorddProcess = factory({"tick_interval": 0.05, **config}, env=env, start=False)
    d.start(wait=False)
    return d


def test_ready_status_watchdog_reload_and_stopping(
    coordd_factory: Any, notify: NotifySocket
) -> None:
    d = _daemon(coordd_factory, notify, stale_threshold=30)
    ready = notify.wait_for("READY", "1")
    # READY=1 means every socket is bound: the control socket answers at once.
    status = d.call(protocol.Status(), timeout=1.0)
    assert status["stale_threshold"] == 30
    assert ready.get("STATUS") == "0 active, 0 pending, 0 stale, 0 agents"

    pings = [m for m in notify.collect(1.0) if m.get("WATCHDOG") == "1"]
    assert 5 <= len(pings) <= 15, pings  # every 0.1 s, from the loop

    item = d.call(protocol.Claim(agent_id="a1", work_type="t", description="d"))
    notify.wait_for("STATUS", "1 active, 0 pending, 0 stale, 1 agents")

    # Tighten the threshold in the file and reload: the item, silent for longer than
    # the new threshold, must be recovered without waiting for its old 30 s deadline.
    time.sleep(0.5)
    write_toml(d.config_path, {**d.config, "stale_threshold": 0.3})
    d.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    notify.wait_for("RELOADING", "1", timeout=5)
    notify.wait_for("READY", "1", timeout=5)
    assert d.call(protocol.Status())["stale_threshold"] == 0.3
    notify.wait_for("STATUS", "0 active, 1 pending, 0 stale, 1 agents", timeout=5)
    shown = d.call(protocol.Show(work_item_id=item["work_item_id"]))
    assert shown["status"] == "pending" and shown["recovered_from"] == "a1"
    assert d.call(protocol.Status())["counters"]["claims"] == 1  # state kept

    d.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    notify.wait_for("STOPPING", "1", timeout=5)
    assert d.stop() == 0
    assert "reloaded" in d.log() and "stale_threshold=0.3" in d.log()


def test_a_bad_config_on_reload_changes_nothing(coordd_factory: Any, notify: NotifySocket) -> None:
    d = _daemon(coordd_factory, notify, stale_threshold=30)
    notify.wait_for("READY", "1")
    d.config_path.write_text("stale_threshold = -1\n")
    d.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    notify.wait_for("RELOADING", "1", timeout=5)
    notify.wait_for("READY", "1", timeout=5)
    assert d.call(protocol.Status())["stale_threshold"] == 30
    assert "reload_failed" in d.log()
    assert d.stop() == 0


def test_a_frozen_loop_stops_the_watchdog_pings(coordd_factory: Any, notify: NotifySocket) -> None:
    d = _daemon(coordd_factory, notify)
    notify.wait_for("READY", "1")
    assert len([m for m in notify.collect(0.5) if "WATCHDOG" in m]) >= 3
    assert d.proc is not None
    d.proc.send_signal(signal.SIGSTOP)
    try:
        notify.collect(0.15)  # a ping already in flight
        frozen = notify.collect(1.0)
        # systemd (WatchdogSec=0.2s) would have killed and restarted it by now.
        assert [m for m in frozen if "WATCHDOG" in m] == []
    finally:
        d.proc.send_signal(signal.SIGCONT)
    notify.wait_for("WATCHDOG", "1", timeout=1.0)
    assert d.stop() == 0


def test_without_notify_socket_everything_is_off(coordd: CoorddProcess) -> None:
    # The plain fixture has no NOTIFY_SOCKET: coordd serves and stops as usual.
    assert coordd.call(protocol.Status())["health"] == "ok"
    assert coordd.stop() == 0
