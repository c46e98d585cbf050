"""Which provider answers: ``ollama``, ``claude`` or ``auto`` (Ollama, then Claude).

``auto`` moves on to the next provider after any ``ProviderError`` (down, timeout,
model missing, rate limited, overloaded, 5xx, ...) and records why, so the result can
say who answered and what was tried first. When nobody answers the router raises
``NoProvider`` carrying every attempt; the analysis layer turns it into a result.

Also here: the answer cache (analysis, model, input digest -> result, with a TTL) and
the counters the metrics endpoint reads.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec

from coordd.ai.base import Completion, Message, Provider, ProviderError

ORDER = {"ollama": ("ollama",), "claude": ("claude",), "auto": ("ollama", "claude")}


class Attempt(msgspec.Struct, kw_only=True):
    """One provider that was tried and failed: the reason a fallback happened."""

    provider: str
    reason: str
    detail: str


class NoProvider(Exception):
    """No configured provider gave an answer."""

    def __init__(self, attempts: list[Attempt]) -> None:
        super().__init__("; ".join(f"{a.provider}: {a.reason}" for a in attempts))
        self.attempts = attempts


class Counters:
    """Flat, monotonically growing numbers (requests, errors by kind, latency sums)."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def add(self, key: str, amount: float = 1) -> None:
        self.values[key] = self.values.get(key, 0) + amount

    def snapshot(self) -> dict[str, float]:
        return dict(self.values)


class Cache:
    """A small TTL + LRU map. The clock is injected so tests need no sleep."""

    def __init__(self, ttl: float, size: int = 64, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.size = size
        self.clock = clock
        self._data: OrderedDict[str, tuple[float, Any]] = OrderedDict()

    def get(self, key: str) -> Any:
        hit = self._data.get(key)
        if hit is None or hit[0] <= self.clock():
            self._data.pop(key, None)
            return None
        self._data.move_to_end(key)
        return hit[1]

    def put(self, key: str, value: Any) -> None:
        if self.ttl <= 0:
            return
        self._data[key] = (self.clock() + self.ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        now = self.clock()
        return sum(1 for exp, _ in self._data.values() if exp > now)


def digest(*parts: Any) -> str:
    """A stable key for any msgspec-encodable input (sorted keys: same data, same key)."""
    raw = msgspec.json.encode(parts, order="sorted")
    return hashlib.sha256(raw).hexdigest()[:32]


class Router:
    def __init__(
        self,
        mode: str,
        providers: dict[str, Provider],
        models: dict[str, str],
        cache_ttl: float,
        analysis_models: dict[str, str] | None = None,
    ) -> None:
        self.mode = mode
        self.providers = providers
        self.models = models  # default model per provider
        self.analysis_models = analysis_models or {}  # Ollama model per analysis
        self.cache = Cache(cache_ttl)
        self.counters = Counters()

    def order(self, only: str | None = None, mode: str | None = None) -> tuple[str, ...]:
        return (only,) if only else ORDER[mode or self.mode]

    def model_for(self, provider: str, analysis: str, override: str | None) -> str:
        """An explicit model goes to the provider it names (``claude-*`` is Claude's,
        anything else Ollama's); the other provider keeps its configured model."""
        if override and (override.startswith("claude")) == (provider == "claude"):
            return override
        if provider == "ollama":
            return self.analysis_models.get(analysis) or self.models["ollama"]
        return self.models[provider]

    async def complete(
        self,
        messages: list[Message],
        schema: dict[str, Any] | None,
        analysis: str,
        override: str | None = None,
        only: str | None = None,
        mode: str | None = None,
    ) -> tuple[Completion, list[Attempt]]:
        """The first provider's answer, with the failed attempts before it (``mode``:
        this request's provider choice instead of the configured one)."""
        attempts: list[Attempt] = []
        for name in self.order(only, mode):
            model = self.model_for(name, analysis, override)
            try:
                done = await self.providers[name].complete(messages, model, schema)
            except ProviderError as e:
                self.counters.add(f"{name}_errors_{e.kind}")
                attempts.append(Attempt(provider=name, reason=e.kind, detail=e.detail))
                continue
            self.counters.add(f"{name}_requests")
            self.counters.add(f"{name}_latency_seconds_sum", done.elapsed)
            if attempts:
                self.counters.add("fallbacks")
            return done, attempts
        raise NoProvider(attempts)

    async def probe(self) -> dict[str, Any]:
        """Per provider: used by the mode?, its model, reachable?, models it offers."""
        out = {}
        for name in ORDER["auto"]:
            found = await self.providers[name].probe()
            model = self.models[name]
            if found.get("reachable"):
                offered = found.get("models") or []
                # Ollama names a model "llama2:latest" when pulled as "llama2".
                found["model_installed"] = model in offered or f"{model}:latest" in offered
            out[name] = {"used": name in ORDER[self.mode], "model": model, **found}
        return out

    async def aclose(self) -> None:
        for p in self.providers.values():
            await p.aclose()
