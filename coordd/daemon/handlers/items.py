"""Agents and work items: each handler translates one request into one ``State`` call."""

from __future__ import annotations

from itertools import islice
from typing import Any

import msgspec

from coordd import protocol as p
from coordd.core import views
from coordd.core.model import BadRequest, WorkItem
from coordd.core.state import State
from coordd.daemon.routes import NO_REPLY, Context, acting_agent, log_refused, route


@route(p.Register, agents=True)
def register(ctx: Context, req: p.Register, now: float) -> Any:
    return ctx.state.register(
        req.agent_id, now, req.team, req.capacity, req.specialization, req.heartbeat_interval
    )


@route(p.Heartbeat, agents=True)
def heartbeat(ctx: Context, req: p.Heartbeat, now: float) -> Any:
    # The loop's hot path does the same for a one-way heartbeat without this call (and
    # sends here an agent-level one whose agent lost leases, so that it is answered).
    state = ctx.state
    n = state.heartbeat(
        req.agent_id, now, req.work_item_id, req.lease, req.progress, req.checkpoint
    )
    lost = state.take_lost(req.agent_id) if req.work_item_id is None else []
    if lost:
        # Something is wrong, so it is answered even one-way: the agent lost these.
        return {"refreshed": n, "lost": lost}
    return {"refreshed": n} if req.ack else NO_REPLY


@route(p.HeartbeatBatch, agents=True)
def heartbeat_batch(ctx: Context, req: p.HeartbeatBatch, now: float) -> Any:
    limit = ctx.cfg.max_batch
    if len(req.items) > limit:
        raise BadRequest(f"batch of {len(req.items)} items; the limit is {limit} (max_batch)")
    refreshed, refused = ctx.state.heartbeat_batch(req.agent_id, now, req.items)
    if refused:
        # The agent needs to know which leases it lost; everything else was applied.
        leases = {b.work_item_id: b.lease for b in req.items}
        for w, e in refused:
            log_refused(req, e, w, leases.get(w))
        errors = [{"work_item_id": w, "code": e.code, "message": str(e)} for w, e in refused]
        return {"refreshed": refreshed, "errors": errors}
    return {"refreshed": refreshed} if req.ack else NO_REPLY


@route(p.Add, agents=True)
def add(ctx: Context, req: p.Add, now: float) -> Any:
    return shown(ctx.state, _add(ctx, req, now))


def _add(ctx: Context, req: p.Add, now: float) -> WorkItem:
    return ctx.state.add(
        req.work_type,
        req.description,
        now,
        req.priority,
        req.team,
        req.work_item_id,
        req.stale_after,
        req.after,
    )


@route(p.Claim, agents=True)
def claim(ctx: Context, req: p.Claim, now: float) -> Any:
    return ctx.state.claim(
        req.agent_id,
        req.work_type,
        req.description,
        now,
        req.priority,
        req.team,
        req.work_item_id,
        req.stale_after,
        req.after,
    )


@route(p.ClaimNext, agents=True)
def claim_next(ctx: Context, req: p.ClaimNext, now: float) -> Any:
    return ctx.state.claim_next(req.agent_id, now, req.work_type, req.team, req.work_item_id)


@route(p.Progress, agents=True)
def progress(ctx: Context, req: p.Progress, now: float) -> Any:
    agent = acting_agent(ctx, req)
    return ctx.state.progress(
        req.work_item_id, req.progress, now, agent, req.lease, req.status, req.checkpoint
    )


@route(p.Complete, agents=True)
def complete(ctx: Context, req: p.Complete, now: float) -> Any:
    agent = acting_agent(ctx, req)
    return ctx.state.complete(req.work_item_id, now, agent, req.lease, req.result, req.velocity)


@route(p.Release, agents=True)
def release(ctx: Context, req: p.Release, now: float) -> Any:
    return ctx.state.release(req.work_item_id, now, acting_agent(ctx, req), req.lease)


@route(p.List, agents=True)
def list_items(ctx: Context, req: p.List, now: float) -> Any:
    # One bounded page whatever the limit: an old client asking for a billion items
    # gets the first page (finding 5: 8 MB replies piled up for a peer not reading).
    state = ctx.state
    limit = min(req.limit, p.MAX_PAGE)
    if req.ready:
        # What can be claimed now, most urgent first (claim-next's order): one page.
        found = state.select(req.status, req.team, req.agent_id, req.work_type, ready=True)
        items, after = list(islice(found, limit)), None
    else:
        want = views.Filter(
            status=req.status, team=req.team, agent_id=req.agent_id, work_type=req.work_type
        )
        items, after = views.page(state, want, req.cursor, limit, p.MAX_PAGE_BYTES, p.MAX_SCAN)
    out = [shown(state, item) for item in items]
    if req.cursor is None:
        return out
    return {"items": out, "next_cursor": after}


def shown(state: State, item: WorkItem) -> Any:
    """An item as read: a blocked one carries ``waiting_on`` (its unmet dependencies
    with their status and result); the others go out as they are."""
    waiting = state.waiting_on(item) if item.after else []
    if not waiting:
        return item
    return {**msgspec.structs.asdict(item), "waiting_on": waiting}


@route(p.Show, agents=True)
def show(ctx: Context, req: p.Show, now: float) -> Any:
    return shown(ctx.state, ctx.state.get(req.work_item_id))


@route(p.Agents, agents=True)
def agents(ctx: Context, req: p.Agents, now: float) -> Any:
    state = ctx.state
    return [
        {**msgspec.structs.asdict(a), "current_workload": state.workload(a.agent_id)}
        for a in state.agents.values()
    ]
