"""coordctl's freshness commands: check-stale, recover-stale, freshness-dashboard, and
claim-enhanced (the old script's claim: warn about staleness, ask the AI, claim, keep
the claim fresh with the heartbeater).

The old script's command words, so its users keep their habits. Like the rest of
coordctl these parse, call and render; the rules are in ``coordd.core.rules``.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any, cast

import click
import msgspec

from coordctl import render
from coordctl.base import PRIORITY, RECOVERY, Ctx, call, command, coordination_dir, emit
from coordctl.client import EXIT_AI_DECLINED, EXIT_STALE_FOUND, to_builtins
from coordctl.commands.ai import (
    ai_claim_recommendation,
    apply_claim_recommendation,
    provider_summary,
)
from coordctl.commands.heartbeat import (
    heartbeat_daemon_status,
    heartbeater_view,
    running_pid,
    start_heartbeater,
)
from coordctl.commands.items import claim_item, claimed_line
from coordd import protocol, views
from coordd.storage.files import write_atomic

REPORT_NAME = "stale_work_report.json"


# --- check-stale / recover-stale ---------------------------------------------------


def _stale_table(entries: list[views.StaleEntry]) -> str:
    short = render.short_ids([e.work_item_id for e in entries])
    return render.table(
        ("ID", "AGENT", "TYPE", "SILENT", "THRESHOLD", "STRATEGY", "DESCRIPTION"),
        [
            (
                short[e.work_item_id],
                e.agent_id,
                e.work_type,
                render.duration(e.silent_seconds),
                f"{e.threshold_seconds:g}s",
                e.strategy,
                e.description,
            )
            for e in entries
        ],
    )


def _to_whom(e: views.RecoveredView) -> str:
    """Who took it over: their id (with the item's status once it is no longer theirs
    to work on), or the status while nobody has."""
    if e.now_held_by:
        return e.now_held_by if e.status == "active" else f"{e.now_held_by} ({e.status})"
    return f"- ({e.status})"


def recovered_summary(recovered: list[views.RecoveredView], window: float) -> str:
    span = render.duration(window)
    if not recovered:
        return f"nothing recovered in the last {span}"
    return f"{len(recovered)} item(s) recovered in the last {span}"


def recovered_table(recovered: list[views.RecoveredView]) -> str:
    """What was recovered: when, strategy, from, to, why (ids short, as every table)."""
    short = render.short_ids([e.work_item_id for e in recovered])
    return render.table(
        ("ID", "WHEN", "STRATEGY", "FROM", "TO", "WHY", "DESCRIPTION"),
        [
            (
                short[e.work_item_id],
                f"{render.age(e.recovered_at.timestamp())} ago",
                e.strategy,
                e.recovered_from,
                _to_whom(e),
                e.reason,
                e.description,
            )
            for e in recovered
        ],
    )


def recovered_text(recovered: list[views.RecoveredView], window: float | None) -> str:
    """check-stale's account of what was recovered within the window."""
    if window is None:
        return ""  # an older daemon: it does not report recoveries
    summary = recovered_summary(recovered, window)
    return f"{summary}:\n{recovered_table(recovered)}" if recovered else summary


WINDOW_OPTION = click.option(
    "--window",
    type=click.FloatRange(min=0, min_open=True, max=protocol.MAX_SECONDS),
    default=protocol.RECOVERED_WINDOW,
    show_default=True,
    help="Also list what was recovered within this many seconds.",
)


@command("check-stale", short_help="Items whose agent went silent (exit 5 if any)")
@WINDOW_OPTION
def check_stale(ctx: Ctx, window: float, as_json: bool) -> None:
    """List the items whose agent went silent, and write stale_work_report.json; also
    list the items recovered within --window seconds (when, why, from whom, to whom).

    Exit 0 when nothing is stale now, 5 when some items are (past recoveries do not
    count: they are done).
    """
    report = views.stale_report(call(ctx, protocol.CheckStale(window=window)))
    path = coordination_dir(ctx) / REPORT_NAME
    # write_atomic: a temporary file of this process's own (agents sharing a directory
    # may run check-stale at once; a shared name let one rename the other's file away).
    write_atomic(path, views.encode(report) + b"\n")
    emit(
        as_json,
        report,
        lambda r: (
            (
                f"{r.stale_count} stale item(s) (report: {path})\n" + _stale_table(r.items)
                if r.items
                else f"no stale items (report: {path})"
            )
            + "\n"
            + recovered_text(r.recovered, r.recovered_window_seconds)
        ),
    )
    sys.exit(EXIT_STALE_FOUND if report.items else 0)


def _recovery_line(r: views.RecoveryView) -> str:
    verb = r.strategy if r.applied else f"would {r.strategy}"
    if r.strategy == "none":
        verb = "left alone (strategy none)"
    return (
        f"{verb} {r.work_item_id} (agent {r.agent_id or '-'},"
        f" silent {render.duration(r.silent_seconds)}, threshold {r.threshold_seconds:g}s)"
    )


@command("recover-stale", short_help="Recover stale items now: reassign, retry or fail")
@click.argument("strategy", type=RECOVERY)
@click.option("--dry-run", is_flag=True, help="Show what would happen; change nothing.")
@click.option("--work", "work_item_id", help="Recover this active item (stale or not).")
def recover_stale(
    ctx: Ctx, strategy: str, dry_run: bool, work_item_id: str | None, as_json: bool
) -> None:
    """Recover stale items now: hand them back, retry them or fail them (operators).

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
        views.recovery_list(to_builtins(data)),
        lambda v: "\n".join(_recovery_line(r) for r in v.items) if v.items else "no stale items",
    )


# --- the dashboard ---------------------------------------------------------------------


def dashboard_data(
    ctx: Ctx, limit: int = 200, window: float = protocol.RECOVERED_WINDOW
) -> views.DashboardView:
    data = to_builtins(call(ctx, protocol.Freshness(limit=limit, window=window)))
    return views.dashboard_view(data, heartbeater_view(ctx, ctx.agent_id(None)))


BAR = 10  # characters of the silence / threshold bar


def _bar(row: views.DashboardRow) -> str:
    share = row.silent_seconds / row.threshold_seconds if row.threshold_seconds else 1.0
    filled = min(BAR, round(share * BAR))
    return "#" * filled + "." * (BAR - filled)


def dashboard_text(ctx: Ctx, d: views.DashboardView, width: int, height: int) -> str:
    """The dashboard as lines fitted to ``width`` x ``height``: counts, then the active
    items worst first (silence as a share of the threshold), as many as fit."""
    head = [
        f"coordd freshness  {render.iso(d.generated_at.timestamp())}"
        f"  threshold {d.stale_threshold_seconds:g}s, recovery {d.recovery}",
        f"active {d.active}: {d.fresh} fresh, {d.potentially_stale} potentially stale"
        f" (>{d.warn_ratio:.0%}), {d.stale} stale; {d.blocked} blocked",
        f"heartbeat daemon: {heartbeat_daemon_status(ctx)}",
        f"AI provider: {provider_summary(ctx)}",
    ]
    if d.recovered_window_seconds is not None:  # (an older daemon does not report them)
        head.append(recovered_summary(d.recovered, d.recovered_window_seconds))
    # Under the head: a blank line, the table's header, the rows, and "... N more".
    room = max(1, height - len(head) - 3)
    rows = d.items[:room]
    short = render.short_ids([r.work_item_id for r in rows])
    body = render.table(
        ("ID", "SILENT/THRESHOLD", "", "AGENT", "PROG", "STAGE"),
        [
            (
                short[r.work_item_id],
                _bar(r),
                f"{render.duration(r.silent_seconds)}/{r.threshold_seconds:g}s"
                + (" STALE" if r.freshness == "stale" else ""),
                r.agent_id,
                f"{r.progress}%",
                r.stage,
            )
            for r in rows
        ],
    )
    lines = head + ([""] + body.splitlines() if rows else ["", "no active items"])
    if len(d.items) > len(rows):
        lines.append(f"... {len(d.items) - len(rows)} more (--json for all)")
    room = height - len(lines) - 2
    if d.blocked_items and room > 0:
        short = render.short_ids(
            [b.work_item_id for b in d.blocked_items]
            + [w.work_item_id for b in d.blocked_items for w in b.waiting_on]
        )
        lines.append("")
        for b in d.blocked_items[:room]:
            why = ", ".join(render.dependency_words(w, short[w.work_item_id]) for w in b.waiting_on)
            lines.append(f"blocked {short[b.work_item_id]}: waits for {why}")
    # The recovered items, as many as the rows left (blank line and header first).
    room = height - len(lines) - 2
    if d.recovered and room > 1:
        shown = d.recovered[: room if room >= len(d.recovered) else room - 1]
        lines += ["", *recovered_table(shown).splitlines()]
        if len(d.recovered) > len(shown):
            lines.append(f"... {len(d.recovered) - len(shown)} more recovered (--json for all)")
    return "\n".join(line[:width] for line in lines)


@command("freshness-dashboard", short_help="Active items worst first: who went silent")
@click.option("--watch", type=float, help="Redraw in place every SECONDS until Ctrl-C.")
@WINDOW_OPTION
def freshness_dashboard(ctx: Ctx, watch: float | None, window: float, as_json: bool) -> None:
    """The active items, worst first: how long each agent has been silent; and what
    was recovered within --window seconds."""
    if as_json:
        emit(True, dashboard_data(ctx, window=window), str)
        return
    size = shutil.get_terminal_size((80, 24))
    if watch is None:
        data = dashboard_data(ctx, window=window)
        click.echo(dashboard_text(ctx, data, size.columns, size.lines))
        return
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    console = Console()

    def frame() -> Text:
        data = dashboard_data(ctx, window=window)
        return Text(dashboard_text(ctx, data, console.width, console.height))

    try:
        with Live(frame(), console=console, auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(watch)
                live.update(frame(), refresh=True)
    except KeyboardInterrupt:
        pass


# --- claim-enhanced ----------------------------------------------------------------------


@command("claim-enhanced", short_help="Claim with AI advice, then keep the claim alive")
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
    """Claim with advice: warn about stale work, ask the AI, claim, keep it alive.

    The AI's suggested priority is applied; its "don't claim" is shown, and obeyed
    only with --respect-ai (exit 7). Then the heartbeater is started if none runs."""
    stale = call(ctx, protocol.CheckStale())["stale"]
    if stale:
        click.echo(f"warning: {len(stale)} stale item(s); see `coordctl check-stale`", err=True)
    advice = ai_claim_recommendation(ctx, work_type, description, priority, team)
    priority, proceed = apply_claim_recommendation(advice, priority, respect_ai)
    if not proceed:
        sys.exit(EXIT_AI_DECLINED)
    item = claim_item(ctx, agent, work_type, description, priority, team, None, stale_after)
    # The claiming agent's own heartbeater must run: another agent's keeps only its items.
    agent_id = item.agent_id or ""
    running = running_pid(ctx, agent_id)
    if running is not None:
        heartbeat = f"{agent_id}'s heartbeat daemon already running (pid {running})"
        hb = views.HeartbeaterView(running=True, pid=running, agent_id=agent_id)
    else:
        pid = start_heartbeater(ctx, agent_id)
        heartbeat = f"heartbeat daemon started for {agent_id} (pid {pid})"
        hb = views.HeartbeaterView(running=True, pid=pid, agent_id=agent_id)
    out = views.ClaimEnhancedView(
        item=item,
        stale_count=len(stale),
        heartbeater=hb,
        ai_recommendation=None if advice is None else msgspec.convert(advice, views.ClaimAdvice),
    )
    emit(
        as_json,
        out,
        lambda o: "\n".join([claimed_line(o.item), heartbeat, _advice_line(advice)]),
    )


def _advice_line(advice: dict[str, Any] | None) -> str:
    if advice is None:
        return "AI recommendation: none (no provider answered; claimed as asked)"
    verdict = "claim" if advice["should_claim"] else "do not claim"
    return (
        f"AI recommendation ({advice['provider']}): {verdict},"
        f" priority {advice['suggested_priority']}: {advice['reasoning']}"
    )


@command("retry", short_help="Put a failed item (a dead letter) back to pending")
@click.argument("work_item_id")
def retry(ctx: Ctx, work_item_id: str, as_json: bool) -> None:
    """Put a failed item back to pending (operators: the local control socket only).

    `coordctl list --status failed` is the dead-letter view; progress, retries and
    recoveries start again from 0, the checkpoint is kept for the next holder."""
    item = views.item_view(call(ctx, protocol.Retry(work_item_id=work_item_id)))
    emit(
        as_json,
        item,
        lambda i: (
            f"{i.work_item_id} is pending again (lease {i.lease})"
            + (f"; checkpoint kept: {i.checkpoint}" if i.checkpoint else "")
        ),
    )


COMMANDS = [check_stale, recover_stale, freshness_dashboard, claim_enhanced, retry]
