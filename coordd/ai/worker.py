"""Runs analyses off the event loop: one thread with its own asyncio loop.

The daemon's loop hands a ``Job`` to ``submit`` (never blocks) and, when woken,
collects finished results with ``finished``. The worker calls ``wake`` after each
result so the loop's poller returns at once; the loop then sends the reply on the
ROUTER envelope it kept. Nothing here touches the daemon's state: a job carries a
plain ``View`` built by the server.

Each job has a total deadline (``job_timeout``: long enough for one failed provider
plus one answer, or an answer and its retry); past it the job is cancelled and
reported as ``timeout``. Results are saved to disk here, not on the loop, because an
fsync can take milliseconds that a heartbeat should not wait for.
"""

from __future__ import annotations

import asyncio
import collections
import os
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import msgspec
import structlog

from coordd import views
from coordd.ai import analyses
from coordd.ai.base import Provider
from coordd.ai.claude import ClaudeProvider
from coordd.ai.ollama import OllamaProvider
from coordd.ai.router import Router

log = structlog.get_logger("coordd.ai")


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    """The part of ``Config`` the AI side needs (so it never imports the config)."""

    provider: str = "ollama"
    ollama_host: str = "http://localhost:11434"
    ollama_model: str = "llama2"
    claude_model: str = "claude-sonnet-4-6"
    anthropic_api_key: str = ""
    anthropic_base_url: str = ""
    timeout: float = 30.0
    cache_ttl: float = 300.0
    models: dict[str, str] = {}
    save_dir: str = "."

    @property
    def job_timeout(self) -> float:
        return 2 * self.timeout


class Job(msgspec.Struct, kw_only=True, frozen=True):
    """One analysis to run: ``kind`` is a key of ``analyses.SPECS`` or ``status``."""

    kind: str
    view: analyses.View = msgspec.field(default_factory=analyses.View)
    params: dict[str, Any] = {}
    model: str | None = None
    provider: str | None = None  # ollama | claude | auto for this job; None: the default
    fresh: bool = False
    save_as: str | None = None  # file name under ``save_dir`` for a successful result


def make_router(s: Settings) -> Router:
    providers: dict[str, Provider] = {
        "ollama": OllamaProvider(s.ollama_host, s.timeout),
        "claude": ClaudeProvider(
            s.anthropic_api_key, s.claude_model, s.anthropic_base_url, s.timeout
        ),
    }
    models = {"ollama": s.ollama_model, "claude": s.claude_model}
    return Router(s.provider, providers, models, s.cache_ttl, s.models)


class AiWorker:
    def __init__(self, settings: Settings, wake: Callable[[], None]) -> None:
        self.settings = settings
        self.wake = wake
        self._done: collections.deque[tuple[int, dict[str, Any]]] = collections.deque()
        self._futures: dict[int, Future[None]] = {}
        self._loop = asyncio.new_event_loop()
        self._router: Router | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="coordd-ai", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the worker has imported what it needs and built its providers'
        clients (the daemon does, before it serves: that work holds the GIL for tens
        of milliseconds, which the loop's heartbeats would otherwise wait for)."""
        return self._ready.wait(timeout)

    @property
    def in_flight(self) -> int:
        return len(self._futures)

    def submit(self, token: int, job: Job, now: float) -> None:
        """Start ``job``; its result comes back from ``finished`` under ``token``."""
        fut = asyncio.run_coroutine_threadsafe(self._run(token, job, now), self._loop)
        self._futures[token] = fut

    def finished(self) -> list[tuple[int, dict[str, Any]]]:
        """Results ready since the last call (called from the daemon's loop)."""
        out = []
        while self._done:
            token, result = self._done.popleft()
            self._futures.pop(token, None)
            out.append((token, result))
        return out

    def counters(self) -> dict[str, float]:
        return self._router.counters.snapshot() if self._router else {}

    def close(self, timeout: float = 2.0) -> None:
        for fut in list(self._futures.values()):
            fut.cancel()
        if self._router is not None:
            closing = asyncio.run_coroutine_threadsafe(self._router.aclose(), self._loop)
            try:
                closing.result(timeout)
            except Exception:
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    # --- inside the worker thread -----------------------------------------------------

    def _serve(self) -> None:
        # The SDK takes about a second to import: pay it here, before any job's deadline
        # starts, and not on the daemon's loop.
        try:
            if self.settings.provider != "ollama":
                import anthropic  # noqa: F401
            self._loop.call_soon(self._warm)
        except BaseException:
            self._ready.set()
            raise
        self._loop.run_forever()

    def _warm(self) -> None:
        try:
            self.router()
        except Exception:  # a job will meet the same error and report it
            log.exception("ai_warm_failed")
        finally:
            self._ready.set()

    def router(self) -> Router:
        if self._router is None:  # built on the worker's loop, where its clients live
            self._router = make_router(self.settings)
        return self._router

    async def _run(self, token: int, job: Job, now: float) -> None:
        if job.provider not in (None, "ollama"):
            # Claude asked for by this request only: the SDK's import (about a second)
            # is paid before the job's deadline starts, as _serve does for the default.
            import anthropic  # noqa: F401
        try:
            async with asyncio.timeout(self.settings.job_timeout):
                result = await self._execute(job, now)
        except TimeoutError:
            result = msgspec.to_builtins(
                analyses.failed(
                    job.kind, "timeout", f"no result within {self.settings.job_timeout:g}s"
                )
            )
        except Exception as e:  # a bug: the operator still gets an answer
            log.exception("ai_job_failed", kind=job.kind)
            result = msgspec.to_builtins(analyses.failed(job.kind, "internal", str(e)))
        self._done.append((token, result))
        self.wake()

    async def _execute(self, job: Job, now: float) -> dict[str, Any]:
        router = self.router()
        if job.kind == "status":
            return await self._status(router)
        res = await analyses.run(
            router, job.kind, job.view, job.params, job.model, job.fresh, now, job.provider
        )
        log.info(
            "ai_analysis_done",
            kind=job.kind,
            ok=res.ok,
            provider=res.provider,
            fallbacks=[a.reason for a in res.fallbacks],
            cached=res.cached,
            error=res.error.code if res.error else None,
            elapsed=round(res.elapsed, 3),
        )
        if res.ok and job.save_as:
            path = str(Path(self.settings.save_dir) / job.save_as)
            res = msgspec.structs.replace(res, saved_to=path)
            # The file holds what ``--json`` prints: the published view of the result.
            saved = views.ai_result_view(msgspec.to_builtins(res))
            await asyncio.to_thread(write_atomic, path, views.encode(saved) + b"\n")
        out: dict[str, Any] = msgspec.to_builtins(res)
        return out

    async def _status(self, router: Router) -> dict[str, Any]:
        s = self.settings
        return {
            "provider": s.provider,
            "timeout": s.timeout,
            "providers": await router.probe(),
            "analysis_models": s.models,
            "cache": {"entries": len(router.cache), "ttl": s.cache_ttl},
            "counters": router.counters.snapshot(),
            "checked_at": time.time(),
        }


def write_atomic(path: str, data: bytes) -> None:
    """tmp + fsync + rename + fsync dir: readers see the old file or the new, never half."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
