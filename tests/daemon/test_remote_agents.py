"""Agents anywhere (issue 15): coordctl's agent commands, the heartbeater and the SDK
from a working directory that shares nothing with the daemon's, over its tcp://
agent endpoint with CURVE required (loopback here, as on another host)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from coordd import config, protocol
from coordd.agent import Agent
from tests.conftest import BIN, CoorddProcess, write_toml
from tests.helpers import wait_for

FAST = {"stale_threshold": 10.0, "tick_interval": 0.05, "heartbeat_interval": 0.1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Remote:
    """A coordd with require_curve on tcp://127.0.0.1, and a separate "host" for agent
    a1: its own directory holding only its key pair and the server's public key."""

    def __init__(self, factory: Any, tmp: Path) -> None:
        self.d: CoorddProcess = factory(
            {**FAST, "require_curve": True, "curve_dir": "keys"}, start=False
        )
        keys = self.d.base / "keys"
        made = self.d.base / "made"
        assert self.d.ctl("keys", "generate").returncode == 0
        assert self.d.ctl("keys", "generate", "--agent", "a1", "--out", str(made)).returncode == 0
        assert self.d.ctl("keys", "allow", "a1", str(made / "a1.key")).returncode == 0
        # The agent's host: nothing of the daemon's directory, only these three files.
        self.home = tmp / "agent-host"
        (self.home / "keys").mkdir(parents=True)
        for name in ("a1.key", "a1.key_secret"):
            shutil.copy(made / name, self.home / "keys" / name)
        shutil.copy(keys / "server.key", self.home / "keys" / "server.key")
        self.endpoint = self._start()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("COORD", "AGENT_ID"))},
            "COORDD_ENDPOINTS": self.endpoint,
            "COORDD_CURVE_KEY": str(self.home / "keys" / "a1.key_secret"),
            "COORDD_SERVER_KEY": str(self.home / "keys" / "server.key"),
            "COORDINATION_DIR": str(self.home / "coordination"),
            "AGENT_ID": "a1",
            "HEARTBEAT_INTERVAL": "0.1",
            "COLUMNS": "200",
        }

    def _start(self) -> str:
        """Bind a free port; another process may take it first, so try a few."""
        for _ in range(5):
            endpoint = f"tcp://127.0.0.1:{_free_port()}"
            self.d.config["agent_endpoint"] = endpoint
            write_toml(self.d.config_path, self.d.config)
            self.d.start(wait=False)
            try:
                self.d.wait_ready()
                return endpoint
            except AssertionError:
                if "Address already in use" not in self.d.log():
                    raise
        raise AssertionError("no free port")

    def ctl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "coordctl"), *args],
            env=self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def show(self, wid: str) -> dict[str, Any]:
        return dict(self.d.call(protocol.Show(work_item_id=wid)))


@pytest.fixture
def remote(coordd_factory: Any, tmp_path: Path) -> Any:
    r = Remote(coordd_factory, tmp_path)
    yield r
    r.ctl("heartbeat-stop", "--all")


def ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, (r.args, r.stdout, r.stderr)
    return r


def test_agent_commands_work_over_curve_from_another_directory(remote: Remote) -> None:
    assert not (remote.home / "coordination" / "run").exists()
    claimed = json.loads(ok(remote.ctl("claim", "build", "remote job", "--json")).stdout)
    wid, lease = claimed["work_item_id"], claimed["lease"]
    assert claimed["agent_id"] == "a1"
    ok(remote.ctl("progress", wid, "40", "--lease", str(lease), "--checkpoint", "step 4"))
    ok(remote.ctl("heartbeat", "a1", wid, "--lease", str(lease)))
    assert "1 item(s) refreshed" in ok(remote.ctl("heartbeat")).stdout
    listed = json.loads(ok(remote.ctl("list", "--agent", "a1", "--json")).stdout)
    assert [i["work_item_id"] for i in listed["items"]] == [wid]
    assert "step 4" in ok(remote.ctl("show", wid)).stdout
    ok(remote.ctl("release", wid, "--lease", str(lease)))
    nxt = json.loads(ok(remote.ctl("claim-next", "--type", "build", "--json")).stdout)
    assert nxt["work_item_id"] == wid and nxt["checkpoint"] == "step 4"
    ok(remote.ctl("complete", wid, "success", "2", "--lease", str(nxt["lease"])))
    ok(remote.ctl("add", "build", "queued remotely"))
    assert remote.ctl("check-stale").returncode == 0
    assert remote.show(wid)["status"] == "completed"


def test_operator_commands_say_they_need_the_local_control_socket(remote: Remote) -> None:
    for args in (("recover-stale", "reassign"), ("snapshot",), ("retry", "w1")):
        r = remote.ctl(*args)
        assert r.returncode == 1, r
        assert "is an operator request: it needs the local control socket" in r.stderr
        assert "COORDD_ENDPOINTS" in r.stderr


def test_the_heartbeater_and_run_work_remotely(remote: Remote) -> None:
    ok(remote.ctl("heartbeat-start"))
    assert (remote.home / "coordination" / "heartbeat_daemon.a1.pid").exists()
    wid = json.loads(ok(remote.ctl("claim", "t", "kept fresh", "--json")).stdout)["work_item_id"]
    claimed_at = remote.show(wid)["claimed_at"]
    wait_for(lambda: remote.show(wid)["last_heartbeat"] > claimed_at + 1.0)
    assert remote.show(wid)["status"] == "active"
    ok(remote.ctl("heartbeat-stop"))

    # run: claims over CURVE, heartbeats, and is told of a recovery at once.
    proc = subprocess.Popen(
        [str(BIN / "coordctl"), "run", "--description", "long", "--", "sleep", "30"],
        env=remote.env,
        cwd=remote.home,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert line.startswith("claimed "), line
    run_id = line.split()[1]
    # The SDK announces a new lease from its heartbeat socket at once: where coordd tells.
    wait_for(lambda: (i := remote.show(run_id))["last_heartbeat"] > i["claimed_at"])
    remote.d.call(protocol.RecoverStale(strategy="reassign", work_item_id=run_id))
    assert proc.wait(10) == 6
    assert "revoked (reassign)" in proc.stderr.read()


def test_the_sdk_reads_endpoints_and_keys_from_the_configuration(remote: Remote) -> None:
    cfg = config.load(env=remote.env)
    assert cfg.endpoints == [remote.endpoint]
    with Agent.from_config(cfg=cfg) as agent:
        assert agent.agent_id == "a1" and agent.link.curve is not None
        lease = agent.lease("t", "from the SDK")
        lease.progress(10, checkpoint="sdk note")
        remote.d.call(protocol.RecoverStale(strategy="reassign", work_item_id=lease.work_item_id))
        assert lease.lost.wait(5) and lease.revoked is not None
    assert remote.show(lease.work_item_id)["checkpoint"] == "sdk note"


def test_a_wrong_server_key_is_unreachable_not_a_hang(remote: Remote) -> None:
    wrong = remote.home / "keys" / "other.key"
    subprocess.run(
        [str(BIN / "coordctl"), "keys", "generate", "--agent", "other", "--out", str(wrong.parent)],
        env=remote.env,
        check=True,
        capture_output=True,
    )
    env = {**remote.env, "COORDD_SERVER_KEY": str(wrong)}
    r = subprocess.run(
        [str(BIN / "coordctl"), "--timeout", "1", "claim", "t", "d"],
        env=env,
        cwd=remote.home,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 4 and "COORDD_SERVER_KEY" in r.stderr
    missing = {**remote.env, "COORDD_CURVE_KEY": str(remote.home / "nope")}
    r = subprocess.run(
        [str(BIN / "coordctl"), "claim", "t", "d"],
        env=missing,
        cwd=remote.home,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "cannot read the agent key" in r.stderr


def test_endpoints_is_a_list_in_the_environment() -> None:
    cfg = config.load(env={"COORDD_ENDPOINTS": "tcp://h1:5555, tcp://h2:5555"})
    assert cfg.endpoints == ["tcp://h1:5555", "tcp://h2:5555"]
    with pytest.raises(config.ConfigError, match="not a tcp:// or ipc:// address"):
        config.load(env={"COORDD_ENDPOINTS": "h1:5555"})
    with pytest.raises(config.ConfigError, match="go together"):
        config.load(env={"COORDD_CURVE_KEY": "a.key_secret"})
