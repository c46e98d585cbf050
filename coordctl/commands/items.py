"""coordctl's item and agent commands: add, claim, claim-next, progress, complete,
release, register, list, show, agents, status, snapshot.

Each builds one protocol message, sends it on the control socket and renders the
reply: a table or a line for people, the raw reply with ``--json``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

import click

from coordctl import render
from coordctl.base import PRIORITY, STATUS, Ctx, call, command, emit, fail
from coordctl.client import EXIT_REFUSED
from coordd import protocol, views
from coordd.views import ItemView


def claimed_line(i: ItemView) -> str:
    team = f", team {i.team}" if i.team else ""
    return f"claimed {i.work_item_id} for {i.agent_id} (lease {i.lease}, {i.priority}{team})"


@command(short_help="Create an item and claim it now")
@click.argument("work_type")
@click.argument("description")
@click.argument("priority", required=False, default="medium", type=PRIORITY)
@click.argument("team", required=False, default="")
@click.option("--agent", help="Agent id (default: $AGENT_ID, else a new agent_<ns>).")
@click.option("--id", "work_item_id", help="Use this work item id instead of work_<ns>.")
@click.option("--stale-after", type=float, help="This item's staleness threshold in seconds.")
@click.option(
    "--after", multiple=True, metavar="ID", help="Only if item ID succeeded (repeatable)."
)
def claim(
    ctx: Ctx,
    work_type: str,
    description: str,
    priority: str,
    team: str,
    agent: str | None,
    work_item_id: str | None,
    stale_after: float | None,
    after: tuple[str, ...],
    as_json: bool,
) -> None:
    """Create a work item and claim it now, as the acting agent."""
    data = claim_item(
        ctx, agent, work_type, description, priority, team, work_item_id, stale_after, after
    )
    emit(as_json, data, claimed_line)


def claim_item(
    ctx: Ctx,
    agent: str | None,
    work_type: str,
    description: str,
    priority: str,
    team: str,
    work_item_id: str | None = None,
    stale_after: float | None = None,
    after: tuple[str, ...] = (),
) -> ItemView:
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
        after=list(after) or None,
    )
    return views.item_view(call(ctx, req))


@command("claim-next", short_help="Take the most urgent ready item (exit 3 if none)")
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
    """Take the most urgent ready item (exit 3 when there is none)."""
    agent_id = ctx.agent_id(agent) or f"agent_{time.time_ns()}"
    data = call(
        ctx,
        protocol.ClaimNext(
            agent_id=agent_id, work_type=work_type, team=team, work_item_id=work_item_id
        ),
    )
    emit(as_json, views.item_view(data), claimed_line)


@command(short_help="Add an item to the backlog (--after: wait for others)")
@click.argument("work_type")
@click.argument("description")
@click.argument("priority", required=False, default="medium", type=PRIORITY)
@click.argument("team", required=False, default="")
@click.option("--id", "work_item_id", help="Use this work item id instead of work_<ns>.")
@click.option("--stale-after", type=float, help="This item's staleness threshold in seconds.")
@click.option(
    "--after",
    multiple=True,
    metavar="ID",
    help="Blocked until item ID completes with success (repeatable).",
)
def add(
    ctx: Ctx,
    work_type: str,
    description: str,
    priority: str,
    team: str,
    work_item_id: str | None,
    stale_after: float | None,
    after: tuple[str, ...],
    as_json: bool,
) -> None:
    """Put a new item in the backlog, to be claimed later (--after: once others succeed)."""
    data = call(
        ctx,
        protocol.Add(
            work_type=work_type,
            description=description,
            priority=cast(Any, priority),
            team=team,
            work_item_id=work_item_id,
            stale_after=stale_after,
            after=list(after) or None,
        ),
    )
    emit(as_json, views.item_view(data), added_line)


def added_line(i: ItemView) -> str:
    waits = f", {render.blocked_reason(i)}" if i.blocked else ""
    return f"added {i.work_item_id} ({i.priority}, {render.item_state(i)}{waits})"


holder_options = [
    click.option("--agent", help="Acting agent (default: $AGENT_ID; none: as operator)."),
    click.option("--lease", type=int, help="The lease from the claim (fencing token)."),
]


def with_holder(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed(holder_options):
        f = opt(f)
    return f


@command(short_help="Report progress (0-100) and stage of a held item")
@click.argument("work_item_id")
@click.argument("percent", type=click.IntRange(0, 100))
@click.argument("status", required=False)
@with_holder
@click.option("--checkpoint", help="A note for the next holder (at most 4096 characters).")
def progress(
    ctx: Ctx,
    work_item_id: str,
    percent: int,
    status: str | None,
    agent: str | None,
    lease: int | None,
    checkpoint: str | None,
    as_json: bool,
) -> None:
    """Report how far a held item is (0-100), with an optional stage name and a
    checkpoint: a note for whoever holds it next."""
    data = call(
        ctx,
        protocol.Progress(
            work_item_id=work_item_id,
            progress=percent,
            agent_id=ctx.agent_id(agent),
            lease=lease,
            status=status,
            checkpoint=checkpoint,
        ),
    )
    emit(as_json, views.item_view(data), lambda i: f"{i.work_item_id} at {i.progress}%")


@command(short_help="Finish a held item with a result and points")
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
    """Finish a held item with a result (default success) and velocity points."""
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
        views.item_view(data),
        lambda i: (
            f"completed {i.work_item_id}: {i.result}"
            f" (+{i.velocity_points} velocity for {i.team or 'no team'})"
        ),
    )


@command(short_help="Give a held item back to the backlog")
@click.argument("work_item_id")
@with_holder
def release(
    ctx: Ctx, work_item_id: str, agent: str | None, lease: int | None, as_json: bool
) -> None:
    """Give a held item back to the backlog for another agent."""
    data = call(
        ctx, protocol.Release(work_item_id=work_item_id, agent_id=ctx.agent_id(agent), lease=lease)
    )
    emit(as_json, views.item_view(data), lambda i: f"released {i.work_item_id} (pending)")


@command(short_help="Register an agent with its team and capacity")
@click.argument("agent", required=False)
@click.option("--team", default="")
@click.option("--capacity", type=click.IntRange(min=0), help="Default: keep (100 when new).")
@click.option("--specialization", default="")
def register(
    ctx: Ctx,
    agent: str | None,
    team: str,
    capacity: int | None,
    specialization: str,
    as_json: bool,
) -> None:
    """Register an agent with its team and capacity (AGENT defaults to $AGENT_ID)."""
    agent_id = ctx.required_agent(agent)
    data = call(
        ctx,
        protocol.Register(
            agent_id=agent_id, team=team, capacity=capacity, specialization=specialization
        ),
    )
    emit(
        as_json, views.agent_view(data), lambda a: f"registered {a.agent_id} (team {a.team or '-'})"
    )


@command("list", short_help="List work items (filters; --ready: claimable now)")
@click.option("--status", type=STATUS)
@click.option("--team")
@click.option("--agent", "agent_id")
@click.option("--type", "work_type")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Show at most this many items (coordctl says so when more match).",
)
@click.option("--ready", is_flag=True, help="Only items that can be claimed now.")
def list_(
    ctx: Ctx,
    status: str | None,
    team: str | None,
    agent_id: str | None,
    work_type: str | None,
    limit: int,
    ready: bool,
    as_json: bool,
) -> None:
    """List work items, filtered by status, team, agent or type (one page at a time,
    following the daemon's cursor)."""

    def ask(cursor: str, n: int) -> Any:
        req = protocol.List(
            status=status,
            team=team,
            agent_id=agent_id,
            work_type=work_type,
            limit=n,
            ready=ready,
            cursor=cursor,
        )
        return call(ctx, req)

    items: list[Any] = []
    after: str | None = ""
    while after is not None and len(items) < limit:
        page = ask(after, min(limit - len(items), protocol.MAX_PAGE))
        items.extend(page["items"])
        after = page["next_cursor"]
    if after is not None and _more_after(ask, after):
        click.echo(
            f"coordctl: stopped at --limit {limit}; more items match (raise --limit)",
            err=True,
        )
    # ``list --status failed`` is the dead-letter view: why each one failed.
    rows = render.failed_rows if status == "failed" else render.item_rows
    emit(as_json, views.item_list(items), lambda v: rows(v.items) if v.items else "no work items")


def _more_after(ask: Callable[[str, int], Any], after: str | None) -> bool:
    """Whether any item matches past the cursor ``after`` (pages may come back empty)."""
    while after is not None:
        page = ask(after, 1)
        if page["items"]:
            return True
        after = page["next_cursor"]
    return False


@command(short_help="Everything about one item, and what it waits for")
@click.argument("work_item_id")
def show(ctx: Ctx, work_item_id: str, as_json: bool) -> None:
    """Everything about one work item, and what it waits for."""
    data = call(ctx, protocol.Show(work_item_id=work_item_id))
    emit(as_json, views.item_view(data), render.item_detail)


@command(short_help="Registered agents, their workload and last heartbeat")
def agents(ctx: Ctx, as_json: bool) -> None:
    """Registered agents with their team, workload and last heartbeat."""

    def human(v: views.AgentList) -> str:
        if not v.items:
            return "no agents"
        return render.table(
            ("AGENT", "TEAM", "SPECIALIZATION", "CAPACITY", "WORKLOAD", "DONE", "LAST HEARTBEAT"),
            [
                (
                    a.agent_id,
                    a.team,
                    a.specialization,
                    a.capacity,
                    a.current_workload,
                    a.tasks_completed,
                    render.ago(a.last_heartbeat.timestamp() if a.last_heartbeat else None),
                )
                for a in v.items
            ],
        )

    emit(as_json, views.agent_list(call(ctx, protocol.Agents())), human)


@command(short_help="Is coordd up: health, counts, sockets, metrics")
def status(ctx: Ctx, as_json: bool) -> None:
    """Is coordd up: health, counts, thresholds, sockets, metrics."""

    def human(s: views.StatusView) -> str:
        c, m = s.counts, s.metrics
        health = s.health + (f" ({s.degraded_reason})" if s.degraded_reason else "")
        why = {"address_in_use": "address in use"}.get(m.reason or "", m.reason)
        metrics = f"on ({m.listen})" if m.state == "on" else f"off ({why})"
        if s.role == "standby":  # PostgreSQL store: another coordd leads
            health += f", standby (leader: {s.leader or 'unknown'})"
        return "\n".join(
            [
                f"coordd {s.version} pid {s.pid}, up {render.duration(s.uptime_seconds)}: {health}",
                f"items: {c.items} ({c.pending} pending of which {c.blocked} blocked,"
                f" {c.active} active,"
                f" {c.stale} stale, {c.completed} completed, {c.failed} failed)",
                f"agents: {c.agents}",
                f"stale threshold {s.stale_threshold_seconds:g}s, recovery {s.recovery}",
                f"control socket {s.control_socket}",
                f"agent endpoint {s.agent_endpoint}",
                f"metrics: {metrics}",
            ]
        )

    emit(as_json, views.status_view(call(ctx, protocol.Status())), human)


@command(short_help="Write a snapshot of the state to disk now")
@click.option("--wait/--no-wait", default=True, help="Wait until the snapshot is on disk.")
def snapshot(ctx: Ctx, wait: bool, as_json: bool) -> None:
    """Write a snapshot of the state to disk now.

    With --wait (the default) returns when it is on disk; exit 1 if it failed.
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

    def human(d: views.SnapshotView) -> str:
        if d.ok is None:
            return "snapshot requested"
        if not d.ok:
            return f"snapshot failed: {d.reason}"
        return (
            f"snapshot written: {d.items} items, {d.bytes} bytes in {d.duration_seconds:.3f}s"
            f" (loop blocked {(d.loop_blocked_seconds or 0) * 1000:.1f} ms)"
        )

    if wait and not data.get("ok"):
        fail(f"snapshot failed: {data.get('reason')}", EXIT_REFUSED, "snapshot_failed")
    emit(as_json, views.snapshot_view(data), human)


COMMANDS = [
    add,
    claim,
    claim_next,
    progress,
    complete,
    release,
    register,
    list_,
    show,
    agents,
    status,
    snapshot,
]
