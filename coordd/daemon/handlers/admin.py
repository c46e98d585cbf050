"""The daemon itself: status and snapshots."""

from __future__ import annotations

from typing import Any

from coordd import protocol as p
from coordd.daemon.routes import Context, route


@route(p.Status, agents=True)
def status(ctx: Context, req: p.Status, now: float) -> Any:
    cfg, state, facts = ctx.cfg, ctx.state, ctx.facts()
    return {
        "version": facts.version,
        "protocol": p.PROTOCOL_VERSION,
        "pid": facts.pid,
        "uptime": now - facts.started_at,
        "health": facts.health,
        "role": facts.role,
        "leader": facts.leader,
        "degraded_reason": facts.degraded_reason,
        "counts": state.counts(),
        "counters": dict(state.counters),
        "team_velocity": dict(state.team_velocity),
        "stale_threshold": state.policy.stale_threshold,
        "recovery": state.policy.recovery,
        "heartbeat_interval": cfg.heartbeat_interval,
        "agent_endpoint": cfg.agent_endpoint,
        "control_socket": cfg.control_socket,
        "events_endpoint": cfg.events_endpoint,
        "state_dir": cfg.state_dir,
        "coordination_dir": cfg.coordination_dir,
        "snapshot": dict(facts.snapshot),
        "ai": facts.ai,
        "metrics": facts.metrics,
    }


@route(p.Snapshot)
def snapshot(ctx: Context, req: p.Snapshot, now: float) -> Any:
    # Only asked for here: the loop starts it after this batch is journaled (a snapshot
    # taken now would hold records the journal does not have yet, and replay them twice).
    return {"requested": True, **ctx.request_snapshot()}
