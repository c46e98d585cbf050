"""Providers, fallback and analyses against stand-ins that speak the real wire formats."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import anthropic  # noqa: F401 - imported once here so no test times the SDK's import
import pytest

from coordd.ai import analyses
from coordd.ai.router import Router
from coordd.ai.worker import Settings, make_router
from tests.ai.standins import (
    NOT_FOUND,
    OVERLOADED,
    RATE_LIMITED,
    Anthropic,
    Ollama,
    refused_url,
)

VIEW = analyses.View(
    items=[
        {"work_item_id": "w1", "work_type": "build", "status": "active", "agent_id": "a1"},
        {"work_item_id": "w2", "work_type": "deploy", "status": "pending", "agent_id": None},
    ],
    agents=[{"agent_id": "a1"}, {"agent_id": "a2"}],
)
GOOD = json.dumps(
    {
        "recommendations": [
            {"work_id": "w2", "priority_score": 90, "reasoning": "blocks the release"},
            {"work_id": "w1", "priority_score": 40, "reasoning": "in progress"},
        ],
        "bottlenecks": [{"type": "capacity", "description": "one deployer", "severity": "high"}],
        "optimization_opportunities": [{"description": "batch deploys", "impact": "medium"}],
    }
)


def router(
    mode: str,
    ollama: Ollama | None = None,
    claude: Anthropic | None = None,
    timeout: float = 0.5,
    **kw: Any,
) -> Router:
    return make_router(
        Settings(
            provider=mode,
            ollama_host=ollama.url if ollama else refused_url(),
            anthropic_api_key=Anthropic.API_KEY if claude else "",
            anthropic_base_url=claude.url if claude else "",
            timeout=timeout,
            **kw,
        )
    )


def run(r: Router, kind: str = "priorities", **kw: Any) -> analyses.AiResult:
    async def go() -> analyses.AiResult:
        try:
            return await analyses.run(r, kind, kw.pop("view", VIEW), kw.pop("params", {}), **kw)
        finally:
            await r.aclose()

    return asyncio.run(go())


def reasons(res: analyses.AiResult) -> list[tuple[str, str]]:
    return [(a.provider, a.reason) for a in res.fallbacks]


# --- Ollama alone --------------------------------------------------------------------


def test_ollama_answers_with_a_schema_and_stream_false(ollama: Ollama) -> None:
    ollama.queue(("text", GOOD))
    res = run(router("ollama", ollama))
    assert res.ok and res.provider == "ollama" and res.model == "llama2"
    assert [r["work_id"] for r in res.result["recommendations"]] == ["w2", "w1"]
    body = ollama.chats()[0]["body"]
    assert body["stream"] is False and body["model"] == "llama2"
    assert body["format"]["type"] == "object" and "recommendations" in body["format"]["properties"]
    assert "w1" in body["messages"][-1]["content"]  # the view went into the prompt


def test_ollama_missing_model_is_reported_not_raised(ollama: Ollama) -> None:
    res = run(router("ollama", ollama, ollama_model="mistral"))
    assert not res.ok and res.error is not None and res.error.code == "no_provider"
    assert reasons(res) == [("ollama", "model_missing")]
    assert "not found, try pulling it first" in res.fallbacks[0].detail


def test_ollama_down_is_no_provider_in_ollama_mode() -> None:
    res = run(router("ollama"))
    assert not res.ok and reasons(res) == [("ollama", "down")]


# --- auto: Ollama first, then Claude, and why ----------------------------------------


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (("status", 500, {"error": "llama runner process has terminated"}), "server_error"),
        (("status", 503, {"error": "server busy, please try again"}), "overloaded"),
        (("status", 429, {"error": "too many requests"}), "rate_limited"),
        (("raw", b'{"model": "llama2", "message": {"content": '), "bad_response"),
        (("slow", 1.5, ("text", GOOD)), "timeout"),
    ],
)
def test_auto_falls_back_to_claude_and_says_why(
    ollama: Ollama, claude_api: Anthropic, answer: tuple[Any, ...], reason: str
) -> None:
    ollama.queue(answer)
    claude_api.queue(("text", GOOD))
    started = time.monotonic()
    res = run(router("auto", ollama, claude_api, timeout=0.5))
    assert res.ok and res.provider == "claude" and res.model == "claude-sonnet-4-6"
    assert reasons(res) == [("ollama", reason)]
    assert time.monotonic() - started < 1.4  # a slow Ollama costs the timeout, no more
    sent = claude_api.chats()[0]
    assert Anthropic.API_KEY in str(sent["headers"])
    assert "JSON schema" in sent["body"]["system"]  # system prompt moved out of messages
    assert [m["role"] for m in sent["body"]["messages"]] == ["user"]


def test_auto_falls_back_when_ollama_is_down_or_lacks_the_model(
    ollama: Ollama, claude_api: Anthropic
) -> None:
    claude_api.queue(("text", GOOD), ("text", GOOD))
    res = run(router("auto", None, claude_api))
    assert res.ok and reasons(res) == [("ollama", "down")]
    res = run(router("auto", ollama, claude_api, ollama_model="mistral"))
    assert res.ok and reasons(res) == [("ollama", "model_missing")]


def test_auto_with_nothing_usable_is_a_structured_no_provider(ollama: Ollama) -> None:
    res = run(router("auto", None, None))
    assert not res.ok and res.error is not None and res.error.code == "no_provider"
    assert reasons(res) == [("ollama", "down"), ("claude", "not_configured")]
    assert res.provider is None and res.result is None


# --- Claude alone ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "reason"),
    [(OVERLOADED, "overloaded"), (RATE_LIMITED, "rate_limited"), (NOT_FOUND, "model_missing")],
)
def test_claude_errors_are_mapped_and_not_retried_by_the_sdk(
    claude_api: Anthropic, answer: tuple[Any, ...], reason: str
) -> None:
    claude_api.queue(answer)
    res = run(router("claude", None, claude_api))
    assert not res.ok and reasons(res) == [("claude", reason)]
    assert len(claude_api.chats()) == 1  # max_retries=0: the router decides, promptly
    assert res.fallbacks[0].detail.startswith(f"HTTP {answer[1]} {answer[2]['error']['type']}")


def test_claude_slow_and_wrong_key(claude_api: Anthropic) -> None:
    claude_api.queue(("slow", 1.5, ("text", GOOD)))
    res = run(router("claude", None, claude_api))
    assert reasons(res) == [("claude", "timeout")]
    r = make_router(
        Settings(provider="claude", anthropic_api_key="wrong", anthropic_base_url=claude_api.url)
    )
    assert reasons(run(r)) == [("claude", "auth")]


# --- answers that do not fit: one retry with the error, then the raw text --------------


def test_a_misfit_is_retried_once_with_the_validation_error(ollama: Ollama) -> None:
    bad = json.dumps({"recommendations": [{"work_id": "w1", "priority_score": 500}]})
    ollama.queue(("text", bad), ("text", GOOD))
    res = run(router("ollama", ollama))
    assert res.ok and res.retried
    retry = ollama.chats()[1]["body"]["messages"]
    assert retry[-2] == {"role": "assistant", "content": bad}
    assert "priority_score" in retry[-1]["content"] and "<= 100" in retry[-1]["content"]


def test_two_misfits_are_an_error_that_keeps_the_raw_text(ollama: Ollama) -> None:
    ollama.queue(
        ("text", "Sure! Here are my thoughts: work on w1"), ("text", '{"bottlenecks": []}')
    )
    res = run(router("ollama", ollama))
    assert not res.ok and res.error is not None and res.error.code == "invalid_answer"
    assert res.error.raw == '{"bottlenecks": []}'
    assert "recommendations" in res.error.message
    assert "not valid JSON" in ollama.chats()[1]["body"]["messages"][-1]["content"]
    assert len(ollama.chats()) == 2


def test_json_in_a_code_fence_is_accepted(claude_api: Anthropic) -> None:
    claude_api.queue(("text", f"Here it is:\n```json\n{GOOD}\n```"))
    assert run(router("claude", None, claude_api)).ok


# --- ids: only those of the view -------------------------------------------------------


def test_unknown_ids_are_dropped_and_counted(ollama: Ollama) -> None:
    answer = {
        "recommendations": [
            {"work_id": "w1", "priority_score": 50},
            {"work_id": "w404", "priority_score": 99},
            {"work_type": "deploy", "priority_score": 70},
            {"work_type": "ghost", "priority_score": 70},
        ]
    }
    ollama.queue(("text", json.dumps(answer)))
    res = run(router("ollama", ollama))
    assert [r["work_id"] or r["work_type"] for r in res.result["recommendations"]] == [
        "deploy",
        "w1",
    ]
    assert res.dropped_ids == {"work_id": 1, "work_type": 1}


def test_team_optimisation_keeps_only_known_items_and_agents(ollama: Ollama) -> None:
    answer = {
        "reassignments": [
            {"work_id": "w1", "from_agent": "a1", "to_agent": "a2", "reason": "balance"},
            {"work_id": "w1", "from_agent": "a1", "to_agent": "a9", "reason": "made up"},
            {"work_id": "w7", "to_agent": "a2"},
        ],
        "team_formation": [
            {"team_name": "deploy", "suggested_agents": ["a2", "zz"], "focus_area": "ops"},
            {"team_name": "ghosts", "suggested_agents": ["zz"]},
        ],
        "efficiency_gain": "15%",
    }
    ollama.queue(("text", json.dumps(answer)))
    res = run(router("ollama", ollama), "team_optimization")
    assert res.ok
    assert [m["to_agent"] for m in res.result["reassignments"]] == ["a2"]
    assert res.result["team_formation"] == [
        {"team_name": "deploy", "suggested_agents": ["a2"], "focus_area": "ops"}
    ]
    assert res.dropped_ids == {"agent_id": 3, "work_id": 1}


def test_the_old_scripts_claude_answer_is_accepted_by_work_type() -> None:
    # A real answer of the old script: keyed by work_type, with fields we do not use.
    raw = Path("/work/shared/legacy-samples/claude_priority_analysis.json")
    text = raw.read_text() if raw.exists() else LEGACY_SAMPLE
    answer = analyses.parse(text, analyses.PriorityAnswer)
    view = analyses.View(
        items=[
            {"work_item_id": "w1", "work_type": "observability_infrastructure"},
            {"work_item_id": "w2", "work_type": "distributed_tracing"},
        ]
    )
    kept, dropped = analyses.check_priorities(answer, view)
    assert [r.work_type for r in kept.recommendations] == [
        "observability_infrastructure",
        "distributed_tracing",
    ]
    assert dropped == {"work_type": 1}  # performance_monitoring: no such work in the state
    assert kept.optimization_opportunities[0].impact_score == 0.85


LEGACY_SAMPLE = json.dumps(
    {
        "recommendations": [
            {
                "work_type": "observability_infrastructure",
                "priority_score": 95,
                "reasoning": "x",
                "recommended_action": "implement_promex_grafana",
            },
            {"work_type": "distributed_tracing", "priority_score": 90, "reasoning": "y"},
            {"work_type": "performance_monitoring", "priority_score": 85, "reasoning": "z"},
        ],
        "optimization_opportunities": [
            {"type": "promex_integration", "description": "d", "impact_score": 0.85}
        ],
        "confidence": 0.7,
    }
)


# --- cache ----------------------------------------------------------------------------


def test_answers_are_cached_by_input_and_fresh_bypasses(ollama: Ollama) -> None:
    ollama.default = ("text", GOOD)
    r = router("ollama", ollama)

    async def go() -> list[analyses.AiResult]:
        out = [
            await analyses.run(r, "priorities", VIEW, {}),
            await analyses.run(r, "priorities", VIEW, {}),
            await analyses.run(r, "priorities", VIEW, {}, fresh=True),
            await analyses.run(r, "priorities", analyses.View(items=VIEW.items[:1]), {}),
        ]
        await r.aclose()
        return out

    first, second, fresh, other = asyncio.run(go())
    assert not first.cached and second.cached and not fresh.cached and not other.cached
    assert second.result == first.result
    assert len(ollama.chats()) == 3
    assert r.counters.values["cache_hits"] == 1 and r.counters.values["ollama_requests"] == 3


def test_cache_entries_expire_after_the_ttl() -> None:
    from coordd.ai.router import Cache

    now = [100.0]
    c = Cache(ttl=10, clock=lambda: now[0])
    c.put("k", "v")
    now[0] = 109.9
    assert c.get("k") == "v"
    now[0] = 110.0
    assert c.get("k") is None and len(c) == 0


def test_claim_recommendation_and_free_analysis(ollama: Ollama) -> None:
    ollama.queue(
        (
            "text",
            '{"should_claim": false, "reasoning": "w2 covers it", "suggested_priority": "low"}',
        ),
        ("text", '{"summary": "two items", "findings": [{"title": "t"}]}'),
    )
    claim = {"work_type": "deploy", "description": "ship", "priority": "high", "team": ""}
    res = run(router("ollama", ollama), "claim_recommendation", params={"claim": claim})
    assert res.result == {
        "should_claim": False,
        "reasoning": "w2 covers it",
        "suggested_priority": "low",
    }
    res = run(router("ollama", ollama), "free", params={"prompt": "why?", "data": {"x": 1}})
    assert res.ok and res.result["summary"] == "two items"
    assert "why?" in ollama.chats()[1]["body"]["messages"][-1]["content"]


def test_probe_reports_reachability_and_models(ollama: Ollama, claude_api: Anthropic) -> None:
    r = router("auto", ollama, claude_api)

    async def go() -> dict[str, Any]:
        try:
            return await r.probe()
        finally:
            await r.aclose()

    status = asyncio.run(go())
    assert status["ollama"]["reachable"] and status["ollama"]["models"] == ["llama2:latest"]
    assert status["ollama"]["model_installed"] is True
    assert status["claude"]["reachable"] and status["claude"]["models"] == ["claude-sonnet-4-6"]
    down = asyncio.run(router("ollama").probe())
    assert down["ollama"]["reachable"] is False and down["ollama"]["error"] == "down"
    assert down["claude"] == {
        "used": False,
        "model": "claude-sonnet-4-6",
        "reachable": False,
        "error": "not_configured",
        "detail": "no API key (set ANTHROPIC_API_KEY)",
    }


def test_an_ollama_without_structured_outputs_is_asked_for_plain_json(ollama: Ollama) -> None:
    ollama.schema_format = False
    ollama.queue(("text", GOOD))
    res = run(router("ollama", ollama))
    assert res.ok and [c["body"]["format"] for c in ollama.chats()][1] == "json"


def test_an_explicit_model_goes_to_the_provider_it_names() -> None:
    r = router("auto", models={"priorities": "llama3"})
    assert r.model_for("ollama", "priorities", None) == "llama3"
    assert r.model_for("ollama", "free", None) == "llama2"
    assert r.model_for("ollama", "free", "mistral") == "mistral"
    assert r.model_for("claude", "free", "mistral") == "claude-sonnet-4-6"
    assert r.model_for("claude", "free", "claude-opus-4-8") == "claude-opus-4-8"
    assert r.model_for("ollama", "free", "claude-opus-4-8") == "llama2"


def test_the_worker_answers_off_thread_and_enforces_the_job_deadline(
    ollama: Ollama, claude_api: Anthropic
) -> None:
    import threading

    from coordd.ai.worker import AiWorker, Job

    # Ollama too slow (0.3 s), Claude misfits then is too slow on the retry (0.3 s):
    # more than the job's 2 x 0.3 s, so the job is cancelled and says so.
    ollama.queue(("slow", 2, ("text", GOOD)))
    claude_api.queue(("text", "no json here"), ("slow", 2, ("text", GOOD)))
    woken = threading.Event()
    settings = Settings(
        provider="auto",
        ollama_host=ollama.url,
        anthropic_api_key=Anthropic.API_KEY,
        anthropic_base_url=claude_api.url,
        timeout=0.3,
    )
    worker = AiWorker(settings, woken.set)
    try:
        worker.submit(1, Job(kind="priorities", view=VIEW), now=0.0)
        assert worker.in_flight == 1 and worker.finished() == []
        assert woken.wait(5)
        [(token, result)] = worker.finished()
        assert token == 1 and worker.in_flight == 0
        assert result["ok"] is False and result["error"]["code"] == "timeout"
    finally:
        worker.close()


@pytest.mark.parametrize("kind", sorted(analyses.SPECS))
def test_the_schema_sent_to_the_model_is_flat_and_whole(kind: str) -> None:
    schema = analyses.json_schema(analyses.SPECS[kind].schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            assert "$ref" not in node
            for name in node.get("required", []):
                assert name in node["properties"], (kind, name)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
