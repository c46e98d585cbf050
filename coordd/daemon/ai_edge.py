"""The daemon's side of AI analyses: requests in, jobs out, replies when done.

The AI handlers (``handlers/ai.py``) call ``analysis``, which copies a plain view of
the state (the AI code never sees ``State``) and returns ``Deferred(job)``. The loop
hands that to ``submit`` with the ROUTER envelope; the worker thread runs it and
wakes the loop, which calls ``drain`` to queue the replies and count each analysis
in the metrics. Nothing here blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice
from typing import TYPE_CHECKING, Any, NamedTuple

import zmq

from coordd.config import Config
from coordd.core.state import State
from coordd.daemon import metrics
from coordd.kinds import Status
from coordd.protocol import Error, Ok

if TYPE_CHECKING:
    from coordd.ai.worker import AiWorker, Job

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
    def __init__(self, cfg: Config, wake: Callable[[], None], reply: Reply):
        self.cfg = cfg
        self.wake = wake
        self.reply = reply
        self._worker: AiWorker | None = None
        self._outdated = False  # settings changed by a reload; rebuild when idle
        self._seq = 0
        self._waiting: dict[int, tuple[zmq.Socket[bytes], list[bytes], str]] = {}

    def start(self, timeout: float = 5.0) -> None:
        """Import the AI side and build its clients now, at start-up: done on the first
        analysis instead, the import ran on the loop (~135 ms) and the clients' set-up
        took the GIL from it (~35 ms) while heartbeats waited."""
        self.worker().wait_ready(timeout)

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
        if self._worker is None:  # imported at start (``start``), or after a reload
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
        self._waiting[self._seq] = (sock, envelope, later.job.kind)
        worker.submit(self._seq, later.job, later.now)

    def drain(self) -> None:
        """Queue the replies of the analyses that finished, and count each one."""
        if self._worker is None:
            return
        for token, result in self._worker.finished():
            sock, envelope, kind = self._waiting.pop(token)
            if kind != "status":  # a status probe is not an analysis
                observe(result)
            self.reply(sock, envelope, Ok(data=result))

    def counters(self) -> dict[str, float]:
        return self._worker.counters() if self._worker is not None else {}

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None


def observe(result: dict[str, Any]) -> None:
    """Count one finished analysis (``AiResult`` as builtins) by provider and outcome.

    ``provider`` is the one that answered, ``none`` when none did. The duration is
    observed for answers a provider gave, not for cache hits (they cost no request).
    """
    provider = result.get("provider") or "none"
    error = result.get("error") or {}
    if result.get("cached"):
        outcome = "cached"
    elif not result.get("ok"):
        outcome = "timeout" if error.get("code") == "timeout" else "error"
    elif result.get("fallbacks"):
        outcome = "fallback"
    else:
        outcome = "ok"
    metrics.AI_REQUESTS.labels(provider, outcome).inc()
    if outcome != "cached":
        metrics.AI_REQUEST_SECONDS.labels(provider).observe(float(result.get("elapsed", 0.0)))


def analysis(
    kind: str, state: State, req: Any, now: float, params: dict[str, Any] | None = None
) -> Deferred:
    """An analysis of ``kind`` over a copy of the state, to run off the loop."""
    from coordd.ai.worker import Job

    job = Job(
        kind=kind,
        view=view_of(state),
        params=params or {},
        model=getattr(req, "model", None),
        provider=getattr(req, "provider", None),
        fresh=getattr(req, "fresh", False),
        save_as=FILES.get(kind),
    )
    return Deferred(job, state.wall(now))  # the answer's generated_at: for people


def status_job(now: float) -> Deferred:
    """The providers' health, asked off the loop (a probe is a network call)."""
    from coordd.ai.worker import Job

    return Deferred(Job(kind="status"), now)


def view_of(state: State) -> Any:
    """A plain copy of the open work and the agents, for an analysis to read.

    No timestamps: they change with every heartbeat and would defeat the answer cache.
    """
    from coordd.ai.analyses import View

    open_items = (i for i in state.items.values() if i.status in (Status.PENDING, Status.ACTIVE))
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
