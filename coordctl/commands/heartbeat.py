"""coordctl's heartbeat commands: ``heartbeat`` (one, acknowledged) and
``heartbeat-start``/``heartbeat-stop``, which run the detached heartbeater of
``coordctl.heartbeater`` for shell agents and find it by its pid file.
"""

from __future__ import annotations

import hashlib
import os
import re
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

# Files of one agent's heartbeater: heartbeat_daemon.<agent id>.pid and .log.
PID_PREFIX = "heartbeat_daemon."
# The single heartbeater's pid file of releases before per-agent heartbeaters.
LEGACY_PID_NAME = "heartbeat_daemon.pid"
SAFE_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,100}")


@command(short_help="Say an agent (or one item) is alive, now")
@click.argument("agent", required=False)
@click.argument("work", required=False)
@click.option("--lease", type=int, help="The item's lease.")
@click.option("--progress", "progress_", type=click.IntRange(0, 100))
@click.option("--checkpoint", help="A note for the next holder (with WORK; at most 4096 chars).")
def heartbeat(
    ctx: Ctx,
    agent: str | None,
    work: str | None,
    lease: int | None,
    progress_: int | None,
    checkpoint: str | None,
    as_json: bool,
) -> None:
    """Heartbeat an agent (all its items) or one item (sends Heartbeat with ack).

    An agent-level heartbeat also answers with the items the agent lost since its
    last one (recovered away from it): they are printed and the exit status is 1."""
    agent_id = ctx.required_agent(agent)
    data = call(
        ctx,
        protocol.Heartbeat(
            agent_id=agent_id,
            work_item_id=work,
            lease=lease,
            progress=progress_,
            ack=True,
            checkpoint=checkpoint,
        ),
    )
    view = views.heartbeat_view(data)

    def human(d: views.HeartbeatView) -> str:
        lines = [f"heartbeat {agent_id}: {d.refreshed} item(s) refreshed"]
        lines += [lost_line(r) for r in d.lost]
        return "\n".join(lines)

    emit(as_json, view, human)
    if view.lost:
        sys.exit(EXIT_REFUSED)


def lost_line(r: views.LostLease) -> str:
    """One lost lease, for people: which item, which lease, why, who has it now."""
    holder = f", now held by {r.new_holder}" if r.new_holder else ""
    return f"lost {r.work_item_id} (lease {r.lease}, {r.strategy}: {r.reason}{holder})"


def file_key(agent_id: str) -> str:
    """The agent id as it appears in file names: itself when that is safe, else a hash."""
    if SAFE_NAME.fullmatch(agent_id) and not agent_id.startswith("."):
        return agent_id
    return "h" + hashlib.sha256(agent_id.encode()).hexdigest()[:20]


def pid_path(ctx: Ctx, agent_id: str) -> Path:
    """The pid file of ``agent_id``'s heartbeater: one heartbeater per agent."""
    return coordination_dir(ctx) / f"{PID_PREFIX}{file_key(agent_id)}.pid"


def log_path(ctx: Ctx, agent_id: str) -> Path:
    return coordination_dir(ctx) / f"{PID_PREFIX}{file_key(agent_id)}.log"


def all_pid_files(ctx: Ctx) -> list[Path]:
    """Every heartbeater's pid file in COORDINATION_DIR (the pre-per-agent name too)."""
    d = coordination_dir(ctx)
    return sorted([*d.glob(f"{PID_PREFIX}*.pid"), *d.glob(LEGACY_PID_NAME)])


def pid_status(pid_file: Path) -> str:
    """One line about a heartbeater, from its pid file."""
    pid = read_pid(str(pid_file))
    if pid is None:
        return "not running"
    if pid_alive(pid):
        return f"running (pid {pid})"
    return f"not running (stale pid file for pid {pid})"


def heartbeater_view(ctx: Ctx, agent_id: str | None) -> views.HeartbeaterView:
    """``agent_id``'s heartbeater as data: running or not, and its pid (from its pid
    file); not running when no agent is named."""
    pid = None if agent_id is None else read_pid(str(pid_path(ctx, agent_id)))
    running = pid is not None and pid_alive(pid)
    return views.HeartbeaterView(running=running, pid=pid, agent_id=agent_id)


def heartbeat_daemon_status(ctx: Ctx) -> str:
    """The dashboard's line: $AGENT_ID's heartbeater, and how many run in all."""
    running = sum(1 for f in all_pid_files(ctx) if (p := read_pid(str(f))) and pid_alive(p))
    total = f"{running} running in {coordination_dir(ctx)}"
    agent_id = ctx.agent_id(None)
    if agent_id is None:
        return total
    return f"{agent_id}'s {pid_status(pid_path(ctx, agent_id))}; {total}"


def _clean_dead_pid_file(pid_file: Path) -> None:
    pid = read_pid(str(pid_file))
    if pid is not None and not pid_alive(pid):
        pid_file.unlink(missing_ok=True)
        click.echo(f"removed stale pid file {pid_file} (pid {pid} is gone)", err=True)


def running_pid(ctx: Ctx, agent_id: str) -> int | None:
    """The pid of ``agent_id``'s live heartbeater (a dead one's file is cleaned)."""
    pid_file = pid_path(ctx, agent_id)
    _clean_dead_pid_file(pid_file)
    return read_pid(str(pid_file))


def start_heartbeater(
    ctx: Ctx, agent_id: str, work_item_id: str | None = None, lease: int | None = None
) -> int:
    """Start ``agent_id``'s detached heartbeater; its pid. Exits 1 when that agent's
    heartbeater runs already (another agent's never stands in the way)."""
    pid_file = pid_path(ctx, agent_id)
    running = running_pid(ctx, agent_id)
    if running is not None:
        fail(
            f"{agent_id}'s heartbeat daemon is already running (pid {running}, {pid_file})",
            EXIT_REFUSED,
        )
    link = ctx.link()  # checks the key files here, where the user sees the message
    args = [
        sys.executable,
        "-m",
        "coordctl.heartbeater",
        "--agent",
        agent_id,
        "--interval",
        str(ctx.cfg.heartbeat_interval),
        "--timeout",
        str(ctx.cfg.client_timeout),
        "--pid-file",
        str(pid_file),
    ]
    for endpoint in link.endpoints:
        args += ["--endpoint", endpoint]
    if link.curve is not None:
        # Paths, never the keys: a command line is visible to every local user.
        args += ["--curve-key", ctx.cfg.curve_key, "--server-key", ctx.cfg.server_key]
    if work_item_id is not None:
        args += ["--work", work_item_id]
    if lease is not None:
        args += ["--lease", str(lease)]
    log_file_path = log_path(ctx, agent_id)
    with open(log_file_path, "ab") as log_file:
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
            fail(f"the heartbeat daemon exited at start (see {log_file_path})", EXIT_REFUSED)
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
    """Start the agent's background heartbeater, every HEARTBEAT_INTERVAL.

    It sends Heartbeat for the agent (all its items) on the agent endpoint
    (COORDD_ENDPOINTS when set); its pid is in
    COORDINATION_DIR/heartbeat_daemon.<AGENT_ID>.pid, its log next to it. One per
    agent: a second one for the same agent is refused.
    """
    agent_id = ctx.required_agent(agent)
    pid = start_heartbeater(ctx, agent_id, work_item_id, lease)
    interval = ctx.cfg.heartbeat_interval
    emit(
        as_json,
        views.HeartbeaterView(running=True, pid=pid, agent_id=agent_id),
        lambda d: f"heartbeat daemon started for {agent_id} (pid {pid}, every {interval:g}s)",
    )


def _stop(pid_file: Path) -> int | None:
    """SIGTERM the heartbeater of ``pid_file`` and wait; its pid, None if none ran."""
    _clean_dead_pid_file(pid_file)
    pid = read_pid(str(pid_file))
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if pid_alive(pid):
        fail(f"heartbeat daemon (pid {pid}, {pid_file}) did not stop within 10s", EXIT_REFUSED)
    pid_file.unlink(missing_ok=True)  # normally the daemon removed it already
    return pid


def _stopped(pids: list[tuple[int, str | None]]) -> views.HeartbeaterList:
    return views.HeartbeaterList(
        items=[views.HeartbeaterView(running=False, pid=pid, agent_id=a) for pid, a in pids]
    )


def _agent_of(pid_file: Path) -> str | None:
    """The agent whose heartbeater holds ``pid_file``: from that process's command line
    (``--agent ID``; an unsafe id names its file by a hash), else the file's name; None
    for the old single file's name."""
    pid = read_pid(str(pid_file))
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if pid else []
    except OSError:
        argv = []
    if b"--agent" in argv[:-1]:
        return argv[argv.index(b"--agent") + 1].decode(errors="replace")
    if pid_file.name == LEGACY_PID_NAME:
        return None
    return pid_file.name[len(PID_PREFIX) : -len(".pid")]


@command("heartbeat-stop", short_help="Stop the agent's background heartbeater")
@click.option("--agent", help="Agent id (default: $AGENT_ID).")
@click.option("--all", "all_", is_flag=True, help="Stop every agent's heartbeater here.")
def heartbeat_stop(ctx: Ctx, agent: str | None, all_: bool, as_json: bool) -> None:
    """Stop the agent's background heartbeater (SIGTERM, then wait up to 10 s).

    Only $AGENT_ID's (or --agent's); --all stops every heartbeater in COORDINATION_DIR.
    """
    if all_:
        named = [(f, _agent_of(f)) for f in all_pid_files(ctx)]  # before they stop
        done = [(pid, agent) for f, agent in named if (pid := _stop(f)) is not None]
        pids = [pid for pid, _ in done]
        emit(
            as_json,
            _stopped(done),
            lambda _d: (
                f"stopped {len(pids)} heartbeat daemon(s)"
                + (f" (pids {', '.join(map(str, pids))})" if pids else "")
            ),
        )
        return
    agent_id = ctx.agent_id(agent)
    if agent_id is None:
        fail("name the agent (--agent or $AGENT_ID), or --all for every heartbeater", 2)
    pid = _stop(pid_path(ctx, agent_id))
    if pid is None:
        emit(as_json, _stopped([]), lambda _d: f"no heartbeat daemon running for {agent_id}")
        return
    emit(
        as_json,
        _stopped([(pid, agent_id)]),
        lambda _d: f"heartbeat daemon of {agent_id} stopped (pid {pid})",
    )


COMMANDS = [heartbeat, heartbeat_start, heartbeat_stop]
