"""AI analyses, operators only (an analysis costs a model call). Each handler answers
``Deferred``: the loop hands the job to the AI edge, which replies when it is done."""

from __future__ import annotations

from typing import Any

from coordd import protocol as p
from coordd.daemon.ai_edge import analysis, status_job
from coordd.daemon.routes import Context, route


@route(p.AiPriorities)
def priorities(ctx: Context, req: p.AiPriorities, now: float) -> Any:
    return analysis("priorities", ctx.state, req, now)


@route(p.AiOptimize)
def optimize(ctx: Context, req: p.AiOptimize, now: float) -> Any:
    return analysis("team_optimization", ctx.state, req, now)


@route(p.AiAnalyze)
def analyze(ctx: Context, req: p.AiAnalyze, now: float) -> Any:
    return analysis("free", ctx.state, req, now, {"prompt": req.prompt, "data": req.data})


@route(p.AiRecommendClaim)
def recommend_claim(ctx: Context, req: p.AiRecommendClaim, now: float) -> Any:
    claim = {
        "work_type": req.work_type,
        "description": req.description,
        "priority": req.priority,
        "team": req.team,
    }
    return analysis("claim_recommendation", ctx.state, req, now, {"claim": claim})


@route(p.AiStatus)
def status(ctx: Context, req: p.AiStatus, now: float) -> Any:
    return status_job(now)
