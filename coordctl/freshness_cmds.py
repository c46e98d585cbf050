"""coordctl's freshness commands: check-stale, recover-stale, freshness-dashboard,
heartbeat-start/-stop, claim-enhanced, run, events.

The old script's command words, so its users keep their habits. Like the rest of
coordctl these parse, call and render; the rules are in ``coordd.core.freshness``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import click
import msgspec
import zmq

from coordctl import render
from coordctl.cli import PRIORITY, Ctx, _claimed_line, call, claim_item, command, emit, fail
from coordctl.client import (
    EXIT_AI_DECLINED,
    EXIT_LEASE_LOST,
    EXIT_NOTHING_PENDING,
    EXIT_REFUSED,
    EXIT_STALE_FOUND,
    EXIT_UNREACHABLE,
    to_builtins,
)
from coordctl.heartbeater import pid_alive, read_pid
from coordd import protocol
from coordd.agent import Agent, AgentError, AgentTimeout, Lease
from coordd.core.state import Event

# `coordctl run`: the lease was lost, so the command was stopped.
REPORT_NAME = "stale_work_report.json"
PID_NAME = "heartbeat_daemon.pid"
HEARTBEAT_LOG_NAME = "heartbeat_daemon.log"


def _coordination_dir(ctx: Ctx) -> Path:
    d = Path(ctx.cfg.coordination_dir)
    d.mkdir(parents=True, exist_ok=True)
    return d


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --- check-stale / recover-stale ---------------------------------------------------


def _stale_table(entries: list[dict[str, Any]]) -> str:
    return render.table(
        ("ID", "AGENT", "TYPE", "SILENT", "THRESHOLD", "STRATEGY", "DESCRIPTION"),
        [
            (
                e["work_item_id"],
                e["agent_id"],
                e["work_type"],
                render.duration(e["silent_for"]),
                f"{e['threshold']:g}s",
                e["strategy"],
                e["description"],
            )
            for e in entries
        ],
    )


@command("check-stale")
def check_stale(ctx: Ctx, as_json: bool) -> None:
    """List stale items and write stale_work_report.json (sends CheckStale).

    Exit 0 when nothing is stale, 5 when some items are.
    """
    data = to_builtins(call(ctx, protocol.CheckStale()))
    stale = data["stale"]
    report = {
        "generated_at": render.iso(data["now"]),
        "stale_count": len(stale),
        "stale_items": stale,
    }
    path = _coordination_dir(ctx) / REPORT_NAME
    _write_atomically(path, json.dumps(report, indent=2, sort_keys=True) + "\n")
    emit(
        as_json,
        report,
        lambda r: (
            f"{r['stale_count']} stale item(s) (report: {path})\n" + _stale_table(stale)
            if stale
            else f"no stale items (report: {path})"
        ),
    )
    sys.exit(EXIT_STALE_FOUND if stale else 0)


def _recovery_line(r: dict[str, Any]) -> str:
    verb = r["strategy"] if r["applied"] else f"would {r['strategy']}"
    if r["strategy"] == "none":
        verb = "left alone (strategy none)"
    return (
        f"{verb} {r['work_item_id']} (agent {r['agent_id'] or '-'},"
        f" silent {render.duration(r['silent_for'])}, threshold {r['threshold']:g}s)"
    )


@command("recover-stale")
@click.argument("strategy", type=click.Choice(["reassign", "fail", "retry"]))
@click.option("--dry-run", is_flag=True, help="Show what would happen; change nothing.")
@click.option("--work", "work_item_id", help="Recover this active item (stale or not).")
def recover_stale(
    ctx: Ctx, strategy: str, dry_run: bool, work_item_id: str | None, as_json: bool
) -> None:
    """Recover stale items now (sends RecoverStale; control socket only).

    retry past max_retries becomes the configured escalation (default fail).
    """
    data = call(
        ctx,
        protocol.RecoverStale(
            strategy=cast(Any, strategy), work_item_id=work_item_id, dry_run=dry_run
        ),
    )
    emit(
        as_json,
        data,
        lambda rows: (
            "\n".join(_recovery_line(r) for r in to_builtins(rows)) if rows else "no stale items"
        ),
    )


# --- the heartbeat daemon -------------------------------------------------------------


def _pid_file(ctx: Ctx) -> Path:
    return _coordination_dir(ctx) / PID_NAME


def heartbeat_daemon_status(pid_file: Path) -> str:
    """One line about the heartbeater, from its pid file."""
    pid = read_pid(str(pid_file))
    if pid is None:
        return "not running"
    if pid_alive(pid):
        return f"running (pid {pid})"
    return f"not running (stale pid file for pid {pid})"


def _clean_dead_pid_file(pid_file: Path) -> None:
    pid = read_pid(str(pid_file))
    if pid is not None and not pid_alive(pid):
        pid_file.unlink(missing_ok=True)
        click.echo(f"removed stale pid file {pid_file} (pid {pid} is gone)", err=True)


def start_heartbeater(
    ctx: Ctx, agent_id: str, work_item_id: str | None = None, lease: int | None = None
) -> int:
    """Start the detached heartbeater; its pid. Exits 1 when one is running already."""
    pid_file = _pid_file(ctx)
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
    with open(_coordination_dir(ctx) / HEARTBEAT_LOG_NAME, "ab") as log_file:
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


@command("heartbeat-start")
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
    emit(
        as_json,
        {"pid": pid, "agent_id": agent_id, "interval": ctx.cfg.heartbeat_interval},
        lambda d: f"heartbeat daemon started for {agent_id} (pid {pid}, every {d['interval']:g}s)",
    )


@command("heartbeat-stop")
def heartbeat_stop(ctx: Ctx, as_json: bool) -> None:
    """Stop the background heartbeater (SIGTERM, then wait up to 10 s)."""
    pid_file = _pid_file(ctx)
    _clean_dead_pid_file(pid_file)
    pid = read_pid(str(pid_file))
    if pid is None:
        emit(as_json, {"stopped": None}, lambda _d: "no heartbeat daemon running")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if pid_alive(pid):
        fail(f"heartbeat daemon (pid {pid}) did not stop within 10s", EXIT_REFUSED)
    pid_file.unlink(missing_ok=True)  # normally the daemon removed it already
    emit(as_json, {"stopped": pid}, lambda _d: f"heartbeat daemon stopped (pid {pid})")


# --- the dashboard ---------------------------------------------------------------------


def ai_provider_status(ctx: Ctx) -> str:
    """The AI provider line of the dashboard: which provider, and whether it answers."""
    from coordctl.ai_cmds import provider_summary

    return provider_summary(ctx)


def _dashboard(ctx: Ctx) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    data = to_builtins(call(ctx, protocol.Freshness()))
    d = data["dashboard"]
    summary = Text.assemble(
        ("coordd freshness", "bold"),
        f"  {render.iso(data['now'])}  threshold {data['stale_threshold']:g}s,"
        f" recovery {data['recovery']}\n",
        f"active {d['active']}   ",
        (f"fresh {d['fresh']}", "green"),
        "   ",
        (f"potentially stale {d['potentially_stale']}", "yellow"),
        f" (silent > {d['warn_ratio']:.0%} of threshold)   ",
        (f"stale {d['stale']}", "red" if d["stale"] else "green"),
        f"\nheartbeat daemon: {heartbeat_daemon_status(_pid_file(ctx))}",
        f"\nAI provider: {ai_provider_status(ctx)}",
    )
    parts: list[Any] = [summary]
    if d["stale_items"]:
        table = Table("ID", "AGENT", "TYPE", "SILENT", "THRESHOLD", "STRATEGY", title="stale items")
        for e in d["stale_items"]:
            table.add_row(
                e["work_item_id"],
                e["agent_id"] or "-",
                e["work_type"],
                render.duration(e["silent_for"]),
                f"{e['threshold']:g}s",
                e["strategy"],
            )
        parts.append(table)
    return Group(*parts)


@command("freshness-dashboard")
@click.option("--watch", type=float, help="Redraw in place every SECONDS until Ctrl-C.")
def freshness_dashboard(ctx: Ctx, watch: float | None, as_json: bool) -> None:
    """Active, fresh, potentially stale and stale counts (sends Freshness)."""
    from rich.console import Console
    from rich.live import Live

    if as_json:
        data = to_builtins(call(ctx, protocol.Freshness()))
        data["heartbeat_daemon"] = heartbeat_daemon_status(_pid_file(ctx))
        data["ai_provider"] = ai_provider_status(ctx)
        emit(True, data, str)
        return
    console = Console()
    if watch is None:
        console.print(_dashboard(ctx))
        return
    try:
        with Live(_dashboard(ctx), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(watch)
                live.update(_dashboard(ctx), refresh=True)
    except KeyboardInterrupt:
        pass


# --- claim-enhanced ----------------------------------------------------------------------


@command("claim-enhanced")
@click.argument("work_type")
@click.argument("description")
@click.argument("priority", required=False, default="medium", type=PRIORITY)
@click.argument("team", required=False, default="")
@click.option("--agent", help="Agent id (default: $AGENT_ID, else a new agent_<ns>).")
@click.option("--stale-after", type=float, help="This item's staleness threshold in seconds.")
@click.option("--respect-ai", is_flag=True, help="Do not claim when the AI advises against it.")
def claim_enhanced(
    ctx: Ctx,
    work_type: str,
    description: str,
    priority: str,
    team: str,
    agent: str | None,
    stale_after: float | None,
    respect_ai: bool,
    as_json: bool,
) -> None:
    """Check staleness and warn, ask the AI, claim, start the heartbeater.

    Sends CheckStale, AiRecommendClaim, Claim. The AI's suggested priority is applied;
    its "don't claim" is shown and obeyed only with --respect-ai (exit 7)."""
    from coordctl.ai_cmds import ai_claim_recommendation, apply_claim_recommendation

    stale = to_builtins(call(ctx, protocol.CheckStale()))["stale"]
    if stale:
        click.echo(f"warning: {len(stale)} stale item(s); see `coordctl check-stale`", err=True)
    advice = ai_claim_recommendation(ctx, work_type, description, priority, team)
    priority, proceed = apply_claim_recommendation(advice, priority, respect_ai)
    if not proceed:
        sys.exit(EXIT_AI_DECLINED)
    item = claim_item(ctx, agent, work_type, description, priority, team, None, stale_after)
    agent_id = item["agent_id"]
    running = read_pid(str(_pid_file(ctx)))
    if running is not None and pid_alive(running):
        heartbeat = f"heartbeat daemon already running (pid {running})"
    else:
        heartbeat = f"heartbeat daemon started (pid {start_heartbeater(ctx, agent_id)})"
    out = {
        "item": item,
        "stale_count": len(stale),
        "heartbeat": heartbeat,
        "ai_recommendation": advice,
    }
    emit(
        as_json,
        out,
        lambda o: "\n".join(
            [
                _claimed_line(o["item"]),
                o["heartbeat"],
                _advice_line(o["ai_recommendation"]),
            ]
        ),
    )


def _advice_line(advice: dict[str, Any] | None) -> str:
    if advice is None:
        return "AI recommendation: none (no provider answered; claimed as asked)"
    verdict = "claim" if advice["should_claim"] else "do not claim"
    return (
        f"AI recommendation ({advice['provider']}): {verdict},"
        f" priority {advice['suggested_priority']}: {advice['reasoning']}"
    )


# --- run ------------------------------------------------------------------------------------

STOP_GRACE = 5.0  # seconds a command gets between SIGTERM and SIGKILL when its lease is lost


def _take_lease(
    agent: Agent,
    work_item_id: str | None,
    work_type: str | None,
    description: str | None,
    priority: str,
    team: str | None,
    stale_after: float | None,
) -> Lease:
    if work_item_id is not None:
        return agent.lease(work_item_id=work_item_id)
    if description is not None:
        return agent.lease(
            work_type, description, priority=priority, team=team, stale_after=stale_after
        )
    return agent.lease(work_type, team=team)


def _supervise(proc: subprocess.Popen[bytes], lease: Lease) -> bool:
    """Wait for the command; stop it if the lease is lost. True when it was stopped."""
    while proc.poll() is None:
        if lease.lost.wait(0.05):
            click.echo(
                f"coordctl: lease lost ({lease.lost_reason}); stopping the command", err=True
            )
            proc.terminate()
            try:
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return True
    return False


@command("run", context_settings={"ignore_unknown_options": True})
@click.option("--agent", help="Agent id (default: $AGENT_ID, else a new agent_<ns>).")
@click.option("--work", "work_item_id", help="Take this pending item.")
@click.option("--type", "work_type", help="Work type (with --description: of the new item).")
@click.option("--description", help="Create and claim a new item with this description.")
@click.option("--priority", type=PRIORITY, default="medium")
@click.option("--team")
@click.option("--stale-after", type=float, help="The new item's staleness threshold.")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def run(ctx: Ctx, agent: str | None, argv: tuple[str, ...], as_json: bool, **claim: Any) -> None:
    """Claim, run COMMAND while heartbeating, then complete (coordctl run ... -- COMMAND).

    Claims a new item (--description), the pending item --work, or the most urgent
    pending one (--type/--team). Exit 0 completes with result "success"; any other
    status completes with result "failed" (so it is not handed to the next agent to fail
    again). SIGTERM/SIGINT are forwarded to the command. Exits with the command's status
    (128+N when killed by signal N), or 6 when the lease was lost and the command stopped.
    """
    agent_id = ctx.agent_id(agent) or f"agent_{time.time_ns()}"
    sdk = Agent(
        ctx.cfg.agent_endpoint, agent_id, ctx.cfg.heartbeat_interval, ctx.cfg.client_timeout
    )
    try:
        status = _run(sdk, argv, claim)
    finally:
        sdk.close()
    sys.exit(status)


def _run(sdk: Agent, argv: tuple[str, ...], claim: dict[str, Any]) -> int:
    try:
        lease = _take_lease(sdk, **claim)
    except AgentTimeout as e:
        fail(e.message, EXIT_UNREACHABLE)
    except AgentError as e:
        fail(
            f"refused ({e.code}): {e.message}",
            EXIT_NOTHING_PENDING if e.code == "nothing_pending" else EXIT_REFUSED,
        )
    click.echo(_claimed_line(lease.item), err=True)
    # Handlers go in before the command starts so no signal slips between the two; one
    # that arrives before the command exists is delivered as soon as it does.
    started: list[subprocess.Popen[bytes]] = []
    early: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        if started:
            started[0].send_signal(signum)
        else:
            early.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    proc = subprocess.Popen(list(argv))
    started.append(proc)
    for signum in early:
        proc.send_signal(signum)
    stopped = _supervise(proc, lease)
    rc = proc.returncode
    status = rc if rc >= 0 else 128 - rc
    if stopped:
        return EXIT_LEASE_LOST
    result = "success" if rc == 0 else "failed"
    try:
        lease.complete(result)
        click.echo(f"completed {lease.work_item_id}: {result} (exit {status})", err=True)
    except AgentError as e:
        click.echo(f"coordctl: could not complete {lease.work_item_id}: {e}", err=True)
    return status


# --- events -----------------------------------------------------------------------------


def _event_line(ev: Event) -> str:
    parts = [render.iso(ev.at), ev.event]
    if ev.work_item_id:
        parts.append(ev.work_item_id)
    if ev.agent_id:
        parts.append(f"agent={ev.agent_id}")
    if ev.lease is not None:
        parts.append(f"lease={ev.lease}")
    if ev.detail:
        parts.append(ev.detail)
    return " ".join(parts)


@command("events")
@click.option("--count", type=click.IntRange(min=1), help="Exit after N events.")
@click.option("--event", "names", multiple=True, help="Only these events (repeatable).")
def events(ctx: Ctx, count: int | None, names: tuple[str, ...], as_json: bool) -> None:
    """Follow the daemon's event stream (SUB on events_endpoint), one line per event."""
    endpoint = ctx.cfg.events_endpoint
    if endpoint.startswith("ipc://") and not os.path.exists(endpoint[len("ipc://") :]):
        # A SUB socket would wait forever in silence; say what is wrong instead.
        fail(f"coordd is not running at {endpoint} (no socket)", EXIT_UNREACHABLE)
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    for name in names or ("",):
        sock.setsockopt(zmq.SUBSCRIBE, name.encode())
    sock.connect(endpoint)
    decoder = msgspec.msgpack.Decoder(Event)
    seen = 0
    try:
        while count is None or seen < count:
            _name, payload = sock.recv_multipart()
            ev = decoder.decode(payload)
            if as_json:
                click.echo(json.dumps(msgspec.to_builtins(ev), sort_keys=True))
            else:
                click.echo(_event_line(ev))
            seen += 1
    except KeyboardInterrupt:
        pass
    finally:
        sock.close(0)
