"""The freshness commands, run as a user runs them, against a real coordd."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from coordd import protocol
from tests.conftest import BIN, CoorddProcess
from tests.helpers import wait_for

THRESHOLD = 0.4
FAST = {
    "stale_threshold": THRESHOLD,
    "tick_interval": 0.05,
    "heartbeat_interval": 0.1,
    "recovery": "none",  # items made stale stay so, for check-stale and recover-stale
}
SHELL = {"AGENT_ID": "shell_agent", "COLUMNS": "200"}


def show(d: CoorddProcess, wid: str) -> dict[str, Any]:
    return dict(d.call(protocol.Show(work_item_id=wid)))


def claim(d: CoorddProcess, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    r = d.ctl("claim", *args, "--json", env=env)
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def pid_file(d: CoorddProcess, agent_id: str = "shell_agent") -> Path:
    return d.dir / f"heartbeat_daemon.{agent_id}.pid"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_heartbeater(d: CoorddProcess) -> None:
    d.ctl("heartbeat-stop", "--all")


def test_old_script_scenario(coordd_factory: Any) -> None:
    d = coordd_factory(FAST)
    try:
        started = d.ctl("heartbeat-start", env=SHELL)
        assert started.returncode == 0, started.stderr
        assert "heartbeat daemon started for shell_agent" in started.stdout
        pid = int(pid_file(d).read_text())
        assert pid_alive(pid)

        mine = claim(d, "feature", "Add the login page", "high", "frontend", env=SHELL)
        wid = mine["work_item_id"]
        # The heartbeater keeps it fresh past several thresholds.
        claimed_at = show(d, wid)["claimed_at"]
        wait_for(lambda: show(d, wid)["last_heartbeat"] > claimed_at + 3 * THRESHOLD)

        dash = d.ctl("freshness-dashboard", env=SHELL)
        assert dash.returncode == 0, dash.stderr
        assert "active 1: 1 fresh" in dash.stdout and "0 stale" in dash.stdout
        assert f"heartbeat daemon: shell_agent's running (pid {pid})" in dash.stdout
        assert "AI provider: ollama unusable (down)" in dash.stdout

        # An item made stale: its agent never heartbeats.
        ghost = claim(d, "bugfix", "Fix the flaky test", "--agent", "ghost", "--stale-after", "0.3")
        gid = ghost["work_item_id"]
        wait_for(lambda: show(d, gid)["stale_since"])

        check = d.ctl("check-stale", env=SHELL)
        assert check.returncode == 5, check.stderr
        # Tables show ids in their short form (work_…<tail>), accepted back as input.
        assert gid[-6:] in check.stdout and "ghost" in check.stdout
        assert wid[-6:] not in check.stdout
        report = json.loads((d.dir / "stale_work_report.json").read_text())
        assert report["stale_count"] == 1
        assert report["items"][0]["work_item_id"] == gid
        assert report["items"][0]["silent_seconds"] >= 0.3

        dash = d.ctl("freshness-dashboard", env=SHELL)
        assert "1 stale" in dash.stdout and gid[-6:] in dash.stdout and "ghost" in dash.stdout

        dry = d.ctl("recover-stale", "reassign", "--dry-run", env=SHELL)
        assert dry.returncode == 0 and f"would reassign {gid}" in dry.stdout
        assert show(d, gid)["status"] == "active"

        rec = d.ctl("recover-stale", "reassign", env=SHELL)
        assert rec.returncode == 0, rec.stderr
        assert f"reassign {gid} (agent ghost" in rec.stdout
        assert show(d, gid)["status"] == "pending" and show(d, wid)["status"] == "active"

        again = d.ctl("check-stale", env=SHELL)
        assert again.returncode == 0 and "no stale items" in again.stdout
        assert json.loads((d.dir / "stale_work_report.json").read_text())["stale_count"] == 0

        stopped = d.ctl("heartbeat-stop", env=SHELL)
        assert stopped.returncode == 0 and f"stopped (pid {pid})" in stopped.stdout
        assert not pid_file(d).exists() and not pid_alive(pid)
        dash = d.ctl("freshness-dashboard", env=SHELL)
        assert "heartbeat daemon: shell_agent's not running; 0 running" in dash.stdout
    finally:
        stop_heartbeater(d)


def test_heartbeat_start_refuses_a_second_and_cleans_a_dead_pid_file(coordd_factory: Any) -> None:
    d = coordd_factory(FAST)
    try:
        gone = subprocess.Popen(["true"])
        gone.wait()
        pid_file(d).write_text(f"{gone.pid}\n")
        first = d.ctl("heartbeat-start", env=SHELL)
        assert first.returncode == 0, first.stderr
        assert "removed stale pid file" in first.stderr
        second = d.ctl("heartbeat-start", env=SHELL)
        assert second.returncode == 1 and "already running" in second.stderr
    finally:
        stop_heartbeater(d)
    none = d.ctl("heartbeat-stop", env=SHELL)
    assert none.returncode == 0 and "no heartbeat daemon running for shell_agent" in none.stdout


def test_heartbeater_stops_with_a_log_line_when_its_lease_is_lost(coordd_factory: Any) -> None:
    d = coordd_factory(FAST)
    item = claim(d, "deploy", "ship it", env=SHELL)
    wid = item["work_item_id"]
    started = d.ctl("heartbeat-start", "--work", wid, "--lease", str(item["lease"]), env=SHELL)
    assert started.returncode == 0, started.stderr
    pid = int(pid_file(d).read_text())
    d.ctl("recover-stale", "reassign", "--work", wid)
    wait_for(lambda: not pid_alive(pid) and not pid_file(d).exists())
    log = (d.dir / "heartbeat_daemon.shell_agent.log").read_text()
    # Told at once by coordd's push (lease_revoked), or at its next beat (lease_lost).
    assert "heartbeater_stopping" in log and ("lease_revoked" in log or "lease_lost" in log)


def test_claim_enhanced_warns_claims_and_starts_the_heartbeater(coordd_factory: Any) -> None:
    d = coordd_factory(FAST)
    ghost = claim(d, "t", "forgotten", "--agent", "ghost", "--stale-after", "0.2")
    wait_for(lambda: show(d, ghost["work_item_id"])["stale_since"])
    try:
        r = d.ctl("claim-enhanced", "feature", "New page", "high", "web", env=SHELL)
        assert r.returncode == 0, r.stderr
        assert "warning: 1 stale item(s)" in r.stderr
        assert "claimed work_" in r.stdout and "for shell_agent" in r.stdout
        assert "heartbeat daemon started" in r.stdout
        assert "AI recommendation: none (no provider answered" in r.stdout
        assert pid_alive(int(pid_file(d).read_text()))
        again = d.ctl("claim-enhanced", "feature", "Other page", env=SHELL)
        assert again.returncode == 0 and "already running" in again.stdout
    finally:
        stop_heartbeater(d)


def run_ctl(d: CoorddProcess, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "coordctl"), *args],
        env={**d.env, **SHELL},
        cwd=d.base,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def claimed_id(proc: subprocess.Popen[str]) -> str:
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert line.startswith("claimed "), line
    return line.split()[1]


def test_run_completes_on_success_and_records_failure(coordd_factory: Any) -> None:
    d = coordd_factory(FAST)
    ok = d.ctl("run", "--type", "build", "--description", "ok", "--", "sh", "-c", "sleep 1")
    assert ok.returncode == 0, ok.stderr
    wid = ok.stderr.split()[1]
    item = show(d, wid)
    assert item["status"] == "completed" and item["result"] == "success"
    assert item["stale_since"] is None  # heartbeated through a second with a 0.4 s threshold

    bad = d.ctl("run", "--type", "build", "--description", "bad", "--", "sh", "-c", "exit 3")
    assert bad.returncode == 3
    assert show(d, bad.stderr.split()[1])["result"] == "failed"

    d.call(protocol.Add(work_type="test", description="queued", work_item_id="queued_1"))
    took = d.ctl("run", "--work", "queued_1", "--", "true")
    assert took.returncode == 0 and show(d, "queued_1")["status"] == "completed"
    none = d.ctl("run", "--type", "nothing", "--", "true")
    assert none.returncode == 3


def test_run_forwards_sigterm_and_exits_with_the_command_status(coordd_factory: Any) -> None:
    d = coordd_factory(FAST)
    proc = run_ctl(
        d,
        "run",
        "--description",
        "trap",
        "--",
        "sh",
        "-c",
        'trap "kill $!; exit 7" TERM; echo up; sleep 30 & wait',
    )
    wid = claimed_id(proc)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 7
    assert show(d, wid)["result"] == "failed"


def test_run_stops_the_command_when_the_lease_is_lost(coordd_factory: Any) -> None:
    d = coordd_factory(FAST)
    proc = run_ctl(d, "run", "--description", "long", "--", "sleep", "30")
    wid = claimed_id(proc)
    d.call(protocol.RecoverStale(strategy="reassign", work_item_id=wid))
    assert proc.wait(10) == 6
    assert proc.stderr is not None and "lease lost" in proc.stderr.read()
    assert show(d, wid)["status"] == "pending"


def test_events_prints_one_json_line_per_event(coordd_factory: Any) -> None:
    d = coordd_factory(FAST)
    proc = run_ctl(d, "events", "--json", "--count", "3", "--event", "claimed")
    # The subscription takes a moment: make events until the follower has seen three.
    for n in range(200):
        if proc.poll() is not None:
            break
        d.call(protocol.Claim(agent_id="a", work_type="t", description=f"d{n}"))
        time.sleep(0.02)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert len(events) == 3 and all(e["event"] == "claimed" for e in events)
    assert all(e["agent_id"] == "a" and e["work_item_id"] for e in events)


def test_events_shows_stale_detected_and_recovered_lines(coordd_factory: Any) -> None:
    d = coordd_factory({**FAST, "recovery": "reassign"})
    proc = run_ctl(d, "events", "--event", "stale_detected", "--event", "recovered", "--count", "2")
    for n in range(200):
        if proc.poll() is not None:
            break
        if n % 25 == 0:
            claim(d, "t", f"will go stale {n}", "--agent", "ghost", "--stale-after", "0.2")
        time.sleep(0.02)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert "stale_detected" in lines[0] and "agent=ghost" in lines[0]
    assert "recovered" in lines[1] and "reassign" in lines[1]


def test_dashboard_watch_redraws_until_ctrl_c(coordd_factory: Any) -> None:
    d = coordd_factory(FAST)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [str(BIN / "coordctl"), "freshness-dashboard", "--watch", "0.1"],
        env={**d.env, **SHELL},
        cwd=d.base,
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 10
        # Two draws: the claim made after the first one shows up in place.
        while time.monotonic() < deadline and b"active 1" not in seen:
            if select.select([master], [], [], 0.1)[0]:
                seen += os.read(master, 65536)
            if b"active 0" in seen and b"claimed" not in seen:
                d.call(protocol.Claim(agent_id="a", work_type="t", description="d"))
                seen += b"claimed"
        assert b"active 0" in seen and b"active 1" in seen, seen
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_events_says_when_the_daemon_is_not_running(coordd_factory: Any) -> None:
    d = coordd_factory(FAST, start=False)
    r = d.ctl("events", "--count", "1", timeout=10)
    assert r.returncode == 4 and "not running" in r.stderr


def test_agents_table_says_never_for_an_agent_without_heartbeat() -> None:
    from coordctl import render

    assert render.ago(None) == "never"
    assert render.ago(100.0, now=165.0) == "1m05s ago"
