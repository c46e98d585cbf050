"""coordctl: the operator's command line. Parse, call the daemon, render.

Each command builds one protocol message, sends it on the control socket and
renders the reply: a table or a line for people, the raw reply with ``--json``.
Exit statuses: 0 ok, 1 refused by the daemon, 2 usage, 3 nothing pending,
4 daemon unreachable, 5 stale items found (``check-stale``).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn, cast

import click

from coordctl import render
from coordctl.client import (
    EXIT_NOTHING_PENDING,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    Client,
    Refused,
    Unreachable,
    to_builtins,
)
from coordd import config as config_mod
from coordd import protocol


class Ctx:
    """What every command needs: the configuration and a client (made lazily)."""

    def __init__(self, cfg: config_mod.Config) -> None:
        self.cfg = cfg
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.cfg.control_socket, self.cfg.client_timeout)
        return self._client

    def agent_id(self, given: str | None) -> str | None:
        return given or self.cfg.agent_id or None

    def required_agent(self, given: str | None) -> str:
        agent_id = self.agent_id(given)
        if not agent_id:
            fail("name the agent (argument, --agent or $AGENT_ID)", 2)
        return agent_id


def fail(message: str, status: int) -> NoReturn:
    click.echo(f"coordctl: {message}", err=True)
    sys.exit(status)


def call(ctx: Ctx, req: protocol.Request) -> Any:
    """Send and map failures to one line and an exit status."""
    try:
        return ctx.client.call(req)
    except Unreachable as e:
        fail(str(e), EXIT_UNREACHABLE)
    except Refused as e:
        if e.code == "nothing_pending":
            fail(e.message, EXIT_NOTHING_PENDING)
        fail(f"refused ({e.code}): {e.message}", EXIT_REFUSED)


def emit(as_json: bool, data: Any, human: Callable[[Any], str]) -> None:
    if as_json:
        click.echo(json.dumps(to_builtins(data), indent=2, sort_keys=True))
    else:
        click.echo(human(data))


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """Every command takes ``--json``."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)


def command(name: str | None = None, **kw: Any) -> Callable[..., Any]:
    """A coordctl command with ``--json`` and the shared context."""

    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        @click.pass_obj
        def inner(obj: Ctx, *args: Any, **kwargs: Any) -> Any:
            return f(obj, *args, **kwargs)

        return main.command(name, **kw)(json_option(inner))

    return wrap


@click.group()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="TOML configuration file (default: $COORDD_CONFIG).",
)
@click.option("--coordination-dir", help="Where coordd lives ($COORDINATION_DIR).")
@click.option(
    "--timeout", "client_timeout", type=float, help="Seconds to wait for the daemon (default 5)."
)
@click.version_option(package_name="coordd")
@click.pass_context
def main(ctx: click.Context, config_file: str | None, **flags: Any) -> None:
    """Drive coordd: claim work, report progress, watch freshness."""
    try:
        cfg = config_mod.load(config_file, os.environ, flags)
    except config_mod.ConfigError as e:
        fail(str(e), 2)
    ctx.obj = Ctx(cfg)


PRIORITY = click.Choice(["low", "medium", "high", "critical"])


def _claimed_line(i: dict[str, Any]) -> str:
    team = f", team {i['team']}" if i.get("team") else ""
    return (
        f"claimed {i['work_item_id']} for {i['agent_id']} (lease {i['lease']},"
        f" {i['priority']}{team})"
    )


@command()
@click.argument("work_type")
@click.argument("description")
@click.argument("priority", required=False, default="medium", type=PRIORITY)
@click.argument("team", required=False, default="")
@click.option("--agent", help="Agent id (default: $AGENT_ID, else a new agent_<ns>).")
@click.option("--id", "work_item_id", help="Use this work item id instead of work_<ns>.")
@click.option("--stale-after", type=float, help="This item's staleness threshold in seconds.")
def claim(
    ctx: Ctx,
    work_type: str,
    description: str,
    priority: str,
    team: str,
    agent: str | None,
    work_item_id: str | None,
    stale_after: float | None,
    as_json: bool,
) -> None:
    """Create a work item and claim it at once (sends Claim)."""
    data = claim_item(ctx, agent, work_type, description, priority, team, work_item_id, stale_after)
    emit(as_json, data, _claimed_line)


def claim_item(
    ctx: Ctx,
    agent: str | None,
    work_type: str,
    description: str,
    priority: str,
    team: str,
    work_item_id: str | None = None,
    stale_after: float | None = None,
) -> dict[str, Any]:
    """Send Claim as the given agent, else $AGENT_ID, else a new ``agent_<ns>`` (the old
    script's default); the claimed item as plain data."""
    agent_id = ctx.agent_id(agent) or f"agent_{time.time_ns()}"
    req = protocol.Claim(
        agent_id=agent_id,
        work_type=work_type,
        description=description,
        priority=cast(Any, priority),
        team=team,
        work_item_id=work_item_id,
        stale_after=stale_after,
    )
    return cast(dict[str, Any], to_builtins(call(ctx, req)))


@command("claim-next")
@click.option("--agent", help="Agent id (default: $AGENT_ID, else a new agent_<ns>).")
@click.option("--type", "work_type", help="Only items of this work type.")
@click.option("--team", help="Only items of this team.")
@click.option("--work", "work_item_id", help="Claim this pending item.")
def claim_next(
    ctx: Ctx,
    agent: str | None,
    work_type: str | None,
    team: str | None,
    work_item_id: str | None,
    as_json: bool,
) -> None:
    """Take the most urgent pending item (sends ClaimNext). Exit 3 when none."""
    agent_id = ctx.agent_id(agent) or f"agent_{time.time_ns()}"
    data = call(
        ctx,
        protocol.ClaimNext(
            agent_id=agent_id, work_type=work_type, team=team, work_item_id=work_item_id
        ),
    )
    emit(as_json, data, _claimed_line)


@command()
@click.argument("work_type")
@click.argument("description")
@click.argument("priority", required=False, default="medium", type=PRIORITY)
@click.argument("team", required=False, default="")
@click.option("--id", "work_item_id", help="Use this work item id instead of work_<ns>.")
@click.option("--stale-after", type=float, help="This item's staleness threshold in seconds.")
def add(
    ctx: Ctx,
    work_type: str,
    description: str,
    priority: str,
    team: str,
    work_item_id: str | None,
    stale_after: float | None,
    as_json: bool,
) -> None:
    """Put a pending item in the backlog (sends Add)."""
    data = call(
        ctx,
        protocol.Add(
            work_type=work_type,
            description=description,
            priority=cast(Any, priority),
            team=team,
            work_item_id=work_item_id,
            stale_after=stale_after,
        ),
    )
    emit(as_json, data, lambda i: f"added {i['work_item_id']} ({i['priority']}, pending)")


holder_options = [
    click.option("--agent", help="Acting agent (default: $AGENT_ID; none: as operator)."),
    click.option("--lease", type=int, help="The lease from the claim (fencing token)."),
]


def with_holder(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed(holder_options):
        f = opt(f)
    return f


@command()
@click.argument("work_item_id")
@click.argument("percent", type=click.IntRange(0, 100))
@click.argument("status", required=False)
@with_holder
def progress(
    ctx: Ctx,
    work_item_id: str,
    percent: int,
    status: str | None,
    agent: str | None,
    lease: int | None,
    as_json: bool,
) -> None:
    """Report progress 0-100 on a held item (sends Progress)."""
    data = call(
        ctx,
        protocol.Progress(
            work_item_id=work_item_id,
            progress=percent,
            agent_id=ctx.agent_id(agent),
            lease=lease,
            status=status,
        ),
    )
    emit(as_json, data, lambda i: f"{i['work_item_id']} at {i['progress']}%")


@command()
@click.argument("work_item_id")
@click.argument("result", required=False, default="success")
@click.argument("velocity", required=False, default=0, type=click.IntRange(min=0))
@with_holder
def complete(
    ctx: Ctx,
    work_item_id: str,
    result: str,
    velocity: int,
    agent: str | None,
    lease: int | None,
    as_json: bool,
) -> None:
    """Finish an item with a result and velocity points (sends Complete)."""
    data = call(
        ctx,
        protocol.Complete(
            work_item_id=work_item_id,
            result=result,
            velocity=velocity,
            agent_id=ctx.agent_id(agent),
            lease=lease,
        ),
    )
    emit(
        as_json,
        data,
        lambda i: (
            f"completed {i['work_item_id']}: {i['result']}"
            f" (+{i['velocity_points']} velocity for"
            f" {i['team'] or 'no team'})"
        ),
    )


@command()
@click.argument("work_item_id")
@with_holder
def release(
    ctx: Ctx, work_item_id: str, agent: str | None, lease: int | None, as_json: bool
) -> None:
    """Give a held item back to the backlog (sends Release)."""
    data = call(
        ctx, protocol.Release(work_item_id=work_item_id, agent_id=ctx.agent_id(agent), lease=lease)
    )
    emit(as_json, data, lambda i: f"released {i['work_item_id']} (pending)")


@command()
@click.argument("agent", required=False)
@click.option("--team", default="")
@click.option("--capacity", type=click.IntRange(min=0), default=100)
@click.option("--specialization", default="")
def register(
    ctx: Ctx, agent: str | None, team: str, capacity: int, specialization: str, as_json: bool
) -> None:
    """Register an agent (sends Register). AGENT defaults to $AGENT_ID."""
    agent_id = ctx.required_agent(agent)
    data = call(
        ctx,
        protocol.Register(
            agent_id=agent_id, team=team, capacity=capacity, specialization=specialization
        ),
    )
    emit(as_json, data, lambda a: f"registered {a['agent_id']} (team {a['team'] or '-'})")


@command()
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
    """Heartbeat an agent (all its items) or one item (sends Heartbeat with ack)."""
    agent_id = ctx.required_agent(agent)
    data = call(
        ctx,
        protocol.Heartbeat(
            agent_id=agent_id, work_item_id=work, lease=lease, progress=progress_, ack=True
        ),
    )
    emit(as_json, data, lambda d: f"heartbeat {agent_id}: {d['refreshed']} item(s) refreshed")


@command("list")
@click.option("--status", type=click.Choice(["pending", "active", "completed", "failed"]))
@click.option("--team")
@click.option("--agent", "agent_id")
@click.option("--type", "work_type")
@click.option("--limit", type=click.IntRange(min=1), default=1000)
def list_(
    ctx: Ctx,
    status: str | None,
    team: str | None,
    agent_id: str | None,
    work_type: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List work items, filtered (sends List)."""
    data = call(
        ctx,
        protocol.List(
            status=status, team=team, agent_id=agent_id, work_type=work_type, limit=limit
        ),
    )
    emit(as_json, data, lambda items: render.item_rows(items) if items else "no work items")


@command()
@click.argument("work_item_id")
def show(ctx: Ctx, work_item_id: str, as_json: bool) -> None:
    """Everything about one work item (sends Show)."""
    emit(as_json, call(ctx, protocol.Show(work_item_id=work_item_id)), render.item_detail)


@command()
def agents(ctx: Ctx, as_json: bool) -> None:
    """Registered agents with their workload (sends Agents)."""

    def human(rows: list[dict[str, Any]]) -> str:
        if not rows:
            return "no agents"
        return render.table(
            ("AGENT", "TEAM", "SPECIALIZATION", "CAPACITY", "WORKLOAD", "DONE", "LAST HEARTBEAT"),
            [
                (
                    a["agent_id"],
                    a["team"] or "-",
                    a["specialization"] or "-",
                    a["capacity"],
                    a["current_workload"],
                    a["tasks_completed"],
                    render.ago(a.get("last_heartbeat")),
                )
                for a in rows
            ],
        )

    emit(as_json, call(ctx, protocol.Agents()), human)


@command()
def status(ctx: Ctx, as_json: bool) -> None:
    """Daemon health and counts (sends Status)."""

    def human(s: dict[str, Any]) -> str:
        c = s["counts"]
        health = s["health"] + (f" ({s['degraded_reason']})" if s.get("degraded_reason") else "")
        return "\n".join(
            [
                f"coordd {s['version']} pid {s['pid']},"
                f" up {render.duration(s['uptime'])}: {health}",
                f"items: {c['items']} ({c['pending']} pending, {c['active']} active,"
                f" {c['stale']} stale, {c['completed']} completed, {c['failed']} failed)",
                f"agents: {c['agents']}",
                f"stale threshold {s['stale_threshold']:g}s, recovery {s['recovery']}",
                f"control socket {s['control_socket']}",
                f"agent endpoint {s['agent_endpoint']}",
            ]
        )

    emit(as_json, call(ctx, protocol.Status()), human)


@command()
@click.option("--wait/--no-wait", default=True, help="Wait until the snapshot is on disk.")
def snapshot(ctx: Ctx, wait: bool, as_json: bool) -> None:
    """Write a snapshot now (sends Snapshot; the daemon forks a writer).

    With --wait (the default) polls Status until that snapshot is done; exit 1 if it failed.
    """
    data = call(ctx, protocol.Snapshot())
    # A snapshot already running holds older state: wait for the one after it.
    count = data.get("count", 0) + (1 if data.get("running") else 0)
    deadline = time.monotonic() + max(ctx.cfg.client_timeout, 60.0)
    while wait and time.monotonic() < deadline:
        data = call(ctx, protocol.Status())["snapshot"]
        if data.get("count", 0) > count and not data.get("running"):
            break
        time.sleep(0.05)
    else:
        if wait:
            fail("the snapshot did not finish in time; see `coordctl status`", EXIT_REFUSED)

    def human(d: dict[str, Any]) -> str:
        if "ok" not in d:
            return "snapshot requested"
        if not d["ok"]:
            return f"snapshot failed: {d['reason']}"
        return (
            f"snapshot written: {d['items']} items, {d['bytes']} bytes in {d['seconds']:.3f}s"
            f" (loop blocked {d['blocked'] * 1000:.1f} ms)"
        )

    emit(as_json, data, human)
    if wait and not data.get("ok"):
        sys.exit(EXIT_REFUSED)


# Command groups kept in their own modules register themselves on ``main``.
from coordctl import ai_cmds, freshness_cmds, keys_cmds  # noqa: E402, F401
