"""coordctl's heartbeat commands: ``heartbeat`` (one, acknowledged) and
``heartbeat-start``/``heartbeat-stop``, which run the detached heartbeater of
``coordctl.heartbeater`` for shell agents and find it by its pid file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from coordctl.base import Ctx, call, command, coordination_dir, emit, fail
from coordctl.client import EXIT_REFUSED
from coordctl.pidfile import pid_alive, read_pid
from coordd import protocol, views

PID_NAME = "heartbeat_daemon.pid"
HEARTBEAT_LOG_NAME = "heartbeat_daemon.log"


@command(short_help="Say an agent (or one item) is alive, now")
@click.argument("agent", required=False)
@click.argument("work", required=False)
@click.option("--lease", type=int, help="The item's lease.")
@click.option("--progress", "progress_", type=click.IntRange(0, 100))
def heartbeat(
    ctx: Ctx,
    agent: str | None,
    work: str | None,
    lease: int | None,
    progress_: int | None,
    as_json: bool,
) -> None:
    """Tell coordd an agent (all its items) or one item is alive, now."""
    agent_id = ctx.required_agent(agent)
    data = call(
        ctx,
        protocol.Heartbeat(
            agent_id=agent_id, work_item_id=work, lease=lease, progress=progress_, ack=True
        ),
    )
    emit(
        as_json,
        views.heartbeat_view(data),
        lambda d: f"heartbeat {agent_id}: {d.refreshed} item(s) refreshed",
    )


def pid_path(ctx: Ctx) -> Path:
    return coordination_dir(ctx) / PID_NAME


def heartbeat_daemon_status(pid_file: Path) -> str:
    """One line about the heartbeater, from its pid file."""
    pid = read_pid(str(pid_file))
    if pid is None:
        return "not running"
    if pid_alive(pid):
        return f"running (pid {pid})"
    return f"not running (stale pid file for pid {pid})"


def heartbeater_view(pid_file: Path) -> views.HeartbeaterView:
    """The heartbeater as data: running or not, and its pid (from its pid file)."""
    pid = read_pid(str(pid_file))
    return views.HeartbeaterView(running=pid is not None and pid_alive(pid), pid=pid)


def _clean_dead_pid_file(pid_file: Path) -> None:
    pid = read_pid(str(pid_file))
    if pid is not None and not pid_alive(pid):
        pid_file.unlink(missing_ok=True)
        click.echo(f"removed stale pid file {pid_file} (pid {pid} is gone)", err=True)


def start_heartbeater(
    ctx: Ctx, agent_id: str, work_item_id: str | None = None, lease: int | None = None
) -> int:
    """Start the detached heartbeater; its pid. Exits 1 when one is running already."""
    pid_file = pid_path(ctx)
    _clean_dead_pid_file(pid_file)
    running = read_pid(str(pid_file))
    if running is not None:
        fail(f"a heartbeat daemon is already running (pid {running}, {pid_file})", EXIT_REFUSED)
    args = [
        sys.executable,
        "-m",
        "coordctl.heartbeater",
        "--endpoint",
        ctx.cfg.agent_endpoint,
        "--agent",
        agent_id,
        "--interval",
        str(ctx.cfg.heartbeat_interval),
        "--timeout",
        str(ctx.cfg.client_timeout),
        "--pid-file",
        str(pid_file),
    ]
    if work_item_id is not None:
        args += ["--work", work_item_id]
    if lease is not None:
        args += ["--lease", str(lease)]
    with open(coordination_dir(ctx) / HEARTBEAT_LOG_NAME, "ab") as log_file:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # detached: survives the shell that started it
        )
    # The child writes the pid file itself (O_EXCL); wait until it has, or has died.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if read_pid(str(pid_file)) == proc.pid:
            return proc.pid
        if proc.poll() is not None:
            fail(f"the heartbeat daemon exited at start (see {log_file.name})", EXIT_REFUSED)
        time.sleep(0.02)
    fail("the heartbeat daemon did not start within 10s", EXIT_REFUSED)


@command("heartbeat-start", short_help="Start a background heartbeater for a shell agent")
@click.option("--agent", help="Agent id (default: $AGENT_ID).")
@click.option(
    "--work", "work_item_id", help="Heartbeat only this item (stops if its lease is lost)."
)
@click.option("--lease", type=int, help="The item's lease (with --work).")
def heartbeat_start(
    ctx: Ctx, agent: str | None, work_item_id: str | None, lease: int | None, as_json: bool
) -> None:
    """Start a background heartbeater for a shell agent, every HEARTBEAT_INTERVAL.

    It sends Heartbeat for the agent (all its items) on the agent endpoint; its pid is
    in COORDINATION_DIR/heartbeat_daemon.pid. A second one is refused.
    """
    agent_id = ctx.required_agent(agent)
    pid = start_heartbeater(ctx, agent_id, work_item_id, lease)
    interval = ctx.cfg.heartbeat_interval
    emit(
        as_json,
        views.HeartbeaterView(running=True, pid=pid, agent_id=agent_id),
        lambda d: f"heartbeat daemon started for {agent_id} (pid {pid}, every {interval:g}s)",
    )


@command("heartbeat-stop", short_help="Stop the background heartbeater")
def heartbeat_stop(ctx: Ctx, as_json: bool) -> None:
    """Stop the background heartbeater (SIGTERM, then wait up to 10 s)."""
    pid_file = pid_path(ctx)
    _clean_dead_pid_file(pid_file)
    pid = read_pid(str(pid_file))
    if pid is None:
        stopped = views.HeartbeaterView(running=False, pid=None)
        emit(as_json, stopped, lambda _d: "no heartbeat daemon running")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if pid_alive(pid):
        fail(f"heartbeat daemon (pid {pid}) did not stop within 10s", EXIT_REFUSED)
    pid_file.unlink(missing_ok=True)  # normally the daemon removed it already
    stopped = views.HeartbeaterView(running=False, pid=pid)
    emit(as_json, stopped, lambda _d: f"heartbeat daemon stopped (pid {pid})")


COMMANDS = [heartbeat, heartbeat_start, heartbeat_stop]
