"""The daemon's side of AI analyses: requests in, jobs out, replies when done.

The event loop registers ``AiEdge.handlers()``; each handler copies a plain view of
the state (the AI code never sees ``State``) and returns ``Deferred(job)``. The loop
hands that to ``submit`` with the ROUTER envelope; the worker thread runs it and
wakes the loop, which calls ``drain`` to queue the replies. Nothing here blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice
from typing import TYPE_CHECKING, Any, NamedTuple

import zmq

from coordd import protocol
from coordd.config import Config
from coordd.core.state import State
from coordd.protocol import Error, Ok

if TYPE_CHECKING:
    from coordd.ai.worker import AiWorker, Job

# Operators only: an analysis costs a model call.
REQUESTS: frozenset[type] = frozenset(
    {
        protocol.AiPriorities,
        protocol.AiOptimize,
        protocol.AiAnalyze,
        protocol.AiRecommendClaim,
        protocol.AiStatus,
    }
)
# At most this many analyses at once (each holds a provider connection); the view is
# capped so a prompt stays within a small model's context.
MAX_JOBS = 8
VIEW_ITEMS = 200
VIEW_AGENTS = 200
FILES = {
    "priorities": "ollama_priority_analysis.json",
    "team_optimization": "ollama_team_optimization.json",
}

Reply = Callable[[zmq.Socket[bytes], list[bytes], Any], None]


class Deferred(NamedTuple):
    """A handler's answer that comes later: an AI job run off the loop."""

    job: Job
    now: float


class AiEdge:
    def __init__(self, cfg: Config, state: State, wake: Callable[[], None], reply: Reply):
        self.cfg = cfg
        self.state = state
        self.wake = wake
        self.reply = reply
        self._worker: AiWorker | None = None
        self._outdated = False  # settings changed by a reload; rebuild when idle
        self._seq = 0
        self._waiting: dict[int, tuple[zmq.Socket[bytes], list[bytes]]] = {}

    def handlers(self) -> dict[type, Callable[[Any, float, bool], Any]]:
        return {
            protocol.AiPriorities: self.on_priorities,
            protocol.AiOptimize: self.on_optimize,
            protocol.AiAnalyze: self.on_analyze,
            protocol.AiRecommendClaim: self.on_recommend_claim,
            protocol.AiStatus: self.on_status,
        }

    def reconfigure(self, cfg: Config) -> None:
        """A reload (SIGHUP): the next analysis uses the new provider settings. A worker
        with analyses in flight is replaced only once they are done, never cancelled."""
        self.cfg = cfg
        self._outdated = self._worker is not None

    def worker(self) -> AiWorker:
        if self._outdated and self._worker is not None and self._worker.in_flight == 0:
            self.drain()
            self._worker.close()
            self._worker = None
            self._outdated = False
        if self._worker is None:  # imported on first use: a daemon without AI never pays
            from coordd.ai.worker import AiWorker, Settings

            cfg = self.cfg
            settings = Settings(
                provider=cfg.ai_provider,
                ollama_host=cfg.ollama_host,
                ollama_model=cfg.ollama_model,
                claude_model=cfg.claude_model,
                anthropic_api_key=cfg.anthropic_api_key,
                anthropic_base_url=cfg.anthropic_base_url,
                timeout=cfg.ai_timeout,
                cache_ttl=cfg.ai_cache_ttl,
                models=dict(cfg.ai_models),
                save_dir=cfg.coordination_dir,
            )
            self._worker = AiWorker(settings, self.wake)
        return self._worker

    def submit(self, sock: zmq.Socket[bytes], envelope: list[bytes], later: Deferred) -> None:
        """Start an analysis; its reply goes to ``envelope`` once ``drain`` sees it."""
        worker = self.worker()
        if worker.in_flight >= MAX_JOBS:
            busy = f"{worker.in_flight} AI analyses are running; try again shortly"
            self.reply(sock, envelope, Error(code="unavailable", message=busy))
            return
        self._seq += 1
        self._waiting[self._seq] = (sock, envelope)
        worker.submit(self._seq, later.job, later.now)

    def drain(self) -> None:
        """Queue the replies of the analyses that finished."""
        if self._worker is None:
            return
        for token, result in self._worker.finished():
            sock, envelope = self._waiting.pop(token)
            self.reply(sock, envelope, Ok(data=result))

    def counters(self) -> dict[str, float]:
        return self._worker.counters() if self._worker is not None else {}

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    # --- handlers -----------------------------------------------------------------

    def _job(self, kind: str, req: Any, now: float, params: dict[str, Any] | None = None) -> Any:
        from coordd.ai.worker import Job

        return Deferred(
            Job(
                kind=kind,
                view=view_of(self.state),
                params=params or {},
                model=getattr(req, "model", None),
                fresh=getattr(req, "fresh", False),
                save_as=FILES.get(kind),
            ),
            now,
        )

    def on_priorities(self, req: protocol.AiPriorities, now: float, _c: bool) -> Any:
        return self._job("priorities", req, now)

    def on_optimize(self, req: protocol.AiOptimize, now: float, _c: bool) -> Any:
        return self._job("team_optimization", req, now)

    def on_analyze(self, req: protocol.AiAnalyze, now: float, _c: bool) -> Any:
        return self._job("free", req, now, {"prompt": req.prompt, "data": req.data})

    def on_recommend_claim(self, req: protocol.AiRecommendClaim, now: float, _c: bool) -> Any:
        claim = {
            "work_type": req.work_type,
            "description": req.description,
            "priority": req.priority,
            "team": req.team,
        }
        return self._job("claim_recommendation", req, now, {"claim": claim})

    def on_status(self, req: protocol.AiStatus, now: float, _c: bool) -> Any:
        from coordd.ai.worker import Job

        return Deferred(Job(kind="status"), now)


def view_of(state: State) -> Any:
    """A plain copy of the open work and the agents, for an analysis to read.

    No timestamps: they change with every heartbeat and would defeat the answer cache.
    """
    from coordd.ai.analyses import View

    open_items = (i for i in state.items.values() if i.status in ("pending", "active"))
    items = [
        {
            "work_item_id": i.work_item_id,
            "work_type": i.work_type,
            "description": i.description[:300],
            "priority": i.priority,
            "team": i.team,
            "status": i.status,
            "agent_id": i.agent_id,
            "progress": i.progress,
            "stale": i.stale_since is not None,
            "retry_count": i.retry_count,
        }
        for i in islice(open_items, VIEW_ITEMS)
    ]
    agents = [
        {
            "agent_id": a.agent_id,
            "team": a.team,
            "specialization": a.specialization,
            "capacity": a.capacity,
            "workload": state.workload(a.agent_id),
            "tasks_completed": a.tasks_completed,
            "status": a.status,
        }
        for a in islice(state.agents.values(), VIEW_AGENTS)
    ]
    return View(items=items, agents=agents)
