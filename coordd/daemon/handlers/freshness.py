"""Staleness: the rules are in ``coordd.core`` (rules, recovery, views); here only the
translation."""

from __future__ import annotations

from typing import Any

from coordd import protocol as p
from coordd.core import recovery, views
from coordd.daemon.routes import Context, route


@route(p.CheckStale, agents=True)
def check_stale(ctx: Context, req: p.CheckStale, now: float) -> Any:
    # "now" is shown to people (the report's time): wall time; silences are monotonic.
    return {
        "now": ctx.state.wall(now),
        "stale": views.stale_report(ctx.state, now),
        "window": req.window,
        "recovered": views.recent_recoveries(ctx.state, now, req.window),
    }


@route(p.RecoverStale)
def recover_stale(ctx: Context, req: p.RecoverStale, now: float) -> Any:
    return recovery.recover_stale(ctx.state, now, req.strategy, req.work_item_id, req.dry_run)


@route(p.Freshness, agents=True)
def dashboard(ctx: Context, req: p.Freshness, now: float) -> Any:
    policy = ctx.state.policy
    return {
        "now": ctx.state.wall(now),
        "dashboard": views.dashboard(ctx.state, now, limit=req.limit),
        "window": req.window,
        "recovered": views.recent_recoveries(ctx.state, now, req.window),
        "stale_threshold": policy.stale_threshold,
        "recovery": policy.recovery,
        "heartbeat_interval": ctx.cfg.heartbeat_interval,
        "tick_interval": ctx.cfg.tick_interval,
        "ai_provider": ctx.cfg.ai_provider,
    }


@route(p.Retry)
def retry(ctx: Context, req: p.Retry, now: float) -> Any:
    return ctx.state.retry(req.work_item_id, now)
