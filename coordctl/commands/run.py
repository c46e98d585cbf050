"""``coordctl run``: claim, run a command while the agent SDK heartbeats its lease,
complete; stop the command when the lease is lost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import click

from coordctl.base import PRIORITY, Ctx, command, fail
from coordctl.client import (
    EXIT_LEASE_LOST,
    EXIT_NOTHING_PENDING,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from coordctl.commands.items import claimed_line
from coordd import views
from coordd.agent import Agent, AgentError, AgentTimeout, Lease

STOP_GRACE = 5.0  # seconds a command gets between SIGTERM and SIGKILL when its lease is lost
# As shells do: 127 a command that is not found, 126 one found but not executable.
EXIT_NOT_FOUND = 127
EXIT_CANNOT_EXECUTE = 126
POINT_AT_WORK = (
    "run takes only work it is pointed at: --description D [--type T] (a new item),"
    " --work ID, --type T and/or --team X (the most urgent pending one of those),"
    " or --any (the most urgent pending item of any type)"
)


def _take_lease(
    agent: Agent,
    work_item_id: str | None,
    work_type: str | None,
    description: str | None,
    priority: str,
    team: str | None,
    stale_after: float | None,
    any_: bool,
) -> Lease:
    if work_item_id is not None:
        return agent.lease(work_item_id=work_item_id)
    if any_ and description is None and work_type is None and team is None:
        return agent.lease()
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


@command(
    "run",
    short_help="Claim, run a command while heartbeating, complete",
    context_settings={"ignore_unknown_options": True},
)
@click.option("--agent", help="Agent id (default: $AGENT_ID, else a new agent_<ns>).")
@click.option("--work", "work_item_id", help="Take this pending item.")
@click.option("--type", "work_type", help="Work type (with --description: of the new item).")
@click.option("--description", help="Create and claim a new item with this description.")
@click.option("--priority", type=PRIORITY, default="medium")
@click.option("--team")
@click.option("--stale-after", type=float, help="The new item's staleness threshold.")
@click.option("--any", "any_", is_flag=True, help="Take the most urgent pending item of any type.")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def run(ctx: Ctx, agent: str | None, argv: tuple[str, ...], as_json: bool, **claim: Any) -> None:
    """Claim, run COMMAND while heartbeating, then complete (coordctl run ... -- COMMAND).

    Claims a new item (--description), the pending item --work, the most urgent pending
    one of --type/--team, or with --any the most urgent of all; without any of these it
    is a usage error. COMMAND gets COORDD_WORK_ITEM_ID, COORDD_LEASE, AGENT_ID and
    COORDD_CHECKPOINT (the previous holder's checkpoint, "" if none). Exit 0 completes
    with result "success"; any other status completes with result "failed" (so it is
    not handed to the next agent to fail again). SIGTERM/SIGINT are forwarded to the
    command. Exits with the command's status (128+N when killed by signal N), 127 (126)
    when it cannot be found (executed), the item released, or 6 when the lease was
    lost and the command stopped (coordd pushes the loss at once).
    """
    if not any(claim[k] for k in ("work_item_id", "work_type", "team", "description", "any_")):
        fail(POINT_AT_WORK, EXIT_USAGE)
    agent_id = ctx.agent_id(agent) or f"agent_{time.time_ns()}"
    sdk = Agent(ctx.link(), agent_id, ctx.cfg.heartbeat_interval, ctx.cfg.client_timeout)
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
    click.echo(claimed_line(views.item_view(lease.item)), err=True)
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
    try:
        proc = subprocess.Popen(list(argv), env=_command_env(sdk, lease))
    except OSError as e:
        return _not_started(lease, argv[0], e)
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


def _command_env(sdk: Agent, lease: Lease) -> dict[str, str]:
    """The command's environment: ours, plus what it needs to act on its item."""
    return {
        **os.environ,
        "AGENT_ID": sdk.agent_id,
        "COORDD_WORK_ITEM_ID": lease.work_item_id,
        "COORDD_LEASE": str(lease.lease),
        "COORDD_CHECKPOINT": lease.checkpoint or "",
    }


def _not_started(lease: Lease, name: str, e: OSError) -> int:
    """The command could not be started: one line, the item released (nothing would
    ever heartbeat or finish it), the shell's status."""
    missing = isinstance(e, FileNotFoundError)
    why = "command not found" if missing else (e.strerror or str(e))
    try:
        lease.release()
        released = f"released {lease.work_item_id}"
    except AgentError as err:
        released = f"could not release {lease.work_item_id}: {err}"
    click.echo(f"coordctl: cannot run {name}: {why} ({released})", err=True)
    return EXIT_NOT_FOUND if missing else EXIT_CANNOT_EXECUTE


COMMANDS = [run]
