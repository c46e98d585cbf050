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
    job = analysis("free", ctx.state, req, now, {"prompt": req.prompt, "data": req.data})
    view = job.job.view
    if _empty(req.data) if req.data is not None else not (view.items or view.agents):
        # No provider call for nothing: say so at once.
        what = "the data given is empty" if req.data is not None else "no open work, no agents"
        return {
            "ok": False,
            "analysis": "free",
            "error": {"code": "nothing_to_analyze", "message": f"nothing to analyze: {what}"},
        }
    return job


def _empty(data: Any) -> bool:
    return data in ({}, [], None) or (isinstance(data, str) and not data.strip())


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
    return status_job(ctx.state.wall(now))
