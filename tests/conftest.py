"""Shared fixtures: a real ``coordd`` process on a temporary directory."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from coordctl.client import Client
from coordd import protocol

BIN = Path(sys.executable).parent


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_toml(path: Path, cfg: dict[str, Any]) -> None:
    flat = [f"{k} = {_toml_value(v)}" for k, v in cfg.items() if not isinstance(v, dict)]
    tables = []
    for k, v in cfg.items():
        if isinstance(v, dict):
            for name, sub in v.items():
                tables.append(f"[{k}.{name}]")
                tables += [f"{sk} = {_toml_value(sv)}" for sk, sv in sub.items()]
    path.write_text("\n".join(flat + tables) + "\n")


class CoorddProcess:
    """A coordd started as a user would (``coordd run``), with helpers to drive it."""

    def __init__(self, base: Path, config: dict[str, Any], env: dict[str, str] | None = None):
        self.base = base
        self.dir = base / "coord"
        self.dir.mkdir(exist_ok=True)
        self.config_path = base / "coordd.toml"
        self.config = {
            "coordination_dir": str(self.dir),
            "run_dir": str(base / "run"),
            "metrics_listen": "",
            **config,
        }
        write_toml(self.config_path, self.config)
        self.env = {**os.environ, "COORDD_CONFIG": str(self.config_path), **(env or {})}
        for legacy in (
            "COORDINATION_DIR",
            "AGENT_ID",
            "STALE_THRESHOLD",
            "AI_PROVIDER",
            "OLLAMA_HOST",
            "HEARTBEAT_INTERVAL",
            "JOURNAL_STREAM",
            "NOTIFY_SOCKET",
        ):
            if legacy not in (env or {}):
                self.env.pop(legacy, None)
        self.control_socket = str(base / "run" / "control.sock")
        self.agent_endpoint = f"ipc://{base / 'run' / 'agents.sock'}"
        self.events_endpoint = f"ipc://{base / 'run' / 'events.sock'}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = base / "coordd.log"
        self.codec = protocol.Codec()

    def start(self, wait: bool = True, extra_args: tuple[str, ...] = ()) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(BIN / "coordd"), "run", *extra_args],
            env=self.env,
            cwd=self.base,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"coordd exited {self.proc.returncode}:\n{self.log()}")
            if os.path.exists(self.control_socket):
                try:
                    self.call(protocol.Status(), timeout=0.5)
                    return
                except Exception:
                    pass
            time.sleep(0.02)
        raise AssertionError(f"coordd did not become ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def call(self, req: protocol.Request, timeout: float = 5.0) -> Any:
        client = Client(self.control_socket, timeout)
        try:
            return client.call(req)
        finally:
            client.close()

    def ctl(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        input: str | None = None,
        timeout: float = 30,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "coordctl"), *args],
            env={**self.env, **(env or {})},
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )

    def agent(self) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 5000)
        sock.connect(self.agent_endpoint)
        return sock

    def send(self, sock: zmq.Socket[bytes], req: msgspec.Struct) -> None:
        sock.send(self.codec.encode(req))

    def recv(self, sock: zmq.Socket[bytes]) -> Any:
        return self.codec.reply_decoder.decode(sock.recv())

    def request(self, sock: zmq.Socket[bytes], req: msgspec.Struct) -> Any:
        self.send(sock, req)
        return self.recv(sock)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self._log.close()
        return rc


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary directory: Unix socket paths must stay under 108 bytes."""
    d = Path(tempfile.mkdtemp(prefix="cd", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def coordd_factory(short_tmp: Path) -> Iterator[Any]:
    made: list[CoorddProcess] = []

    def make(
        config: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        start: bool = True,
        name: str = "d",
    ) -> CoorddProcess:
        base = short_tmp / f"{name}{len(made)}"
        base.mkdir()
        d = CoorddProcess(base, config or {}, env)
        made.append(d)
        if start:
            d.start()
        return d

    yield make
    for d in made:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
        _stop_heartbeaters(d.dir)


def _stop_heartbeaters(coordination_dir: Path) -> None:
    """Stop the detached heartbeaters a test left running in its directory: they
    outlive the test's coordd by design (a daemon restart must not stop them)."""
    for pid_file in coordination_dir.glob("heartbeat_daemon*.pid"):
        try:
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
        except (ValueError, IndexError, OSError):
            pass  # gone already, or not a pid


@pytest.fixture
def coordd(coordd_factory: Any) -> CoorddProcess:
    d: CoorddProcess = coordd_factory()
    return d
