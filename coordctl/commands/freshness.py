"""coordctl's freshness commands: check-stale, recover-stale, freshness-dashboard, and
claim-enhanced (the old script's claim: warn about staleness, ask the AI, claim, keep
the claim fresh with the heartbeater).

The old script's command words, so its users keep their habits. Like the rest of
coordctl these parse, call and render; the rules are in ``coordd.core.rules``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, cast

import click

from coordctl import render
from coordctl.base import PRIORITY, RECOVERY, Ctx, call, command, coordination_dir, emit
from coordctl.client import EXIT_AI_DECLINED, EXIT_STALE_FOUND, to_builtins
from coordctl.commands.ai import (
    ai_claim_recommendation,
    apply_claim_recommendation,
    provider_summary,
)
from coordctl.commands.heartbeat import heartbeat_daemon_status, pid_path, start_heartbeater
from coordctl.commands.items import claim_item, claimed_line
from coordctl.heartbeater import pid_alive, read_pid
from coordd import protocol

REPORT_NAME = "stale_work_report.json"


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
    path = coordination_dir(ctx) / REPORT_NAME
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
@click.argument("strategy", type=RECOVERY)
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


# --- the dashboard ---------------------------------------------------------------------


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
        f"\nheartbeat daemon: {heartbeat_daemon_status(pid_path(ctx))}",
        f"\nAI provider: {provider_summary(ctx)}",
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
        data["heartbeat_daemon"] = heartbeat_daemon_status(pid_path(ctx))
        data["ai_provider"] = provider_summary(ctx)
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
    stale = to_builtins(call(ctx, protocol.CheckStale()))["stale"]
    if stale:
        click.echo(f"warning: {len(stale)} stale item(s); see `coordctl check-stale`", err=True)
    advice = ai_claim_recommendation(ctx, work_type, description, priority, team)
    priority, proceed = apply_claim_recommendation(advice, priority, respect_ai)
    if not proceed:
        sys.exit(EXIT_AI_DECLINED)
    item = claim_item(ctx, agent, work_type, description, priority, team, None, stale_after)
    agent_id = item["agent_id"]
    running = read_pid(str(pid_path(ctx)))
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
                claimed_line(o["item"]),
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


COMMANDS = [check_stale, recover_stale, freshness_dashboard, claim_enhanced]
