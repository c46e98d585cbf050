"""AI settings per command (issue 16): the provider set for one coordctl command travels
in its request and wins over the daemon's for that analysis; ``ai-analyze`` reads
stdin when given, else the live state, and says when there is nothing to analyze
without calling any provider."""

from __future__ import annotations

import json
from typing import Any

from coordd import protocol
from tests.ai.standins import Anthropic, Ollama, refused_url
from tests.conftest import CoorddProcess


def claude_only_reachable(coordd_factory: Any, claude_api: Anthropic) -> CoorddProcess:
    """A daemon configured for Ollama (down); Claude is configured and answers."""
    d: CoorddProcess = coordd_factory(
        {
            "ai_provider": "ollama",
            "ollama_host": refused_url(),
            "anthropic_base_url": claude_api.url,
            "ai_timeout": 3,
        },
        env={"ANTHROPIC_API_KEY": Anthropic.API_KEY},
    )
    d.call(protocol.Add(work_type="build", description="item one"))
    return d


def test_ai_provider_in_the_environment_overrides_the_daemon(
    coordd_factory: Any, claude_api: Anthropic
) -> None:
    d = claude_only_reachable(coordd_factory, claude_api)
    # The daemon's own choice (ollama) cannot answer.
    assert d.ctl("ollama-optimize").returncode == 1
    claude_api.queue(("text", json.dumps({"reassignments": [], "efficiency_gain": "5%"})))
    r = d.ctl("ollama-optimize", env={"AI_PROVIDER": "claude"})
    assert r.returncode == 0, r.stderr
    assert "answered by claude" in r.stdout
    # auto: Ollama first (down), then Claude; the fallback is said.
    claude_api.queue(
        ("text", '{"should_claim": true, "reasoning": "fine", "suggested_priority": "high"}')
    )
    r = d.ctl(
        "claim-enhanced", "build", "cache", "--json", env={"AI_PROVIDER": "auto", "AGENT_ID": "a"}
    )
    try:
        assert r.returncode == 0, r.stderr
        advice = json.loads(r.stdout)["ai_recommendation"]
        assert advice["provider"] == "claude" and advice["suggested_priority"] == "high"
    finally:
        d.ctl("heartbeat-stop", env={"AGENT_ID": "a"})
    # --provider on the command line says the same.
    claude_api.queue(("text", json.dumps({"summary": "ok"})))
    r = d.ctl("ai-analyze", "how is it going?", "--provider", "claude")
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_ai_analyze_without_stdin_asks_about_the_live_state(
    coordd_factory: Any, ollama: Ollama
) -> None:
    d: CoorddProcess = coordd_factory({"ollama_host": ollama.url, "ai_timeout": 1})
    d.call(protocol.Add(work_type="build", description="the flaky deploy"))
    ollama.queue(("text", json.dumps({"summary": "one item open"})))
    r = d.ctl("ai-analyze", "what is open?", input="")
    assert r.returncode == 0, r.stderr
    prompt = ollama.chats()[0]["body"]["messages"][-1]["content"]
    assert "the flaky deploy" in prompt


def test_nothing_to_analyze_is_said_without_a_provider_call(
    coordd_factory: Any, ollama: Ollama
) -> None:
    d: CoorddProcess = coordd_factory({"ollama_host": ollama.url, "ai_timeout": 1})
    r = d.ctl("ai-analyze", "anything?", input="")
    assert r.returncode == 1 and "nothing to analyze: no open work" in r.stderr
    r = d.ctl("ai-analyze", "anything?", "--json", input="{}")
    assert r.returncode == 1
    assert json.loads(r.stdout)["error"]["code"] == "nothing_to_analyze"
    assert ollama.chats() == []
