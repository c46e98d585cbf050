"""AI analyses through a real coordd and coordctl, with stand-in providers."""

from __future__ import annotations

import json
import time
from typing import Any

import zmq

from coordctl.base import Ctx
from coordctl.commands.ai import ai_claim_recommendation, apply_claim_recommendation
from coordd import config, protocol
from tests.ai.standins import Anthropic, Ollama, refused_url
from tests.conftest import CoorddProcess


def answer(recs: list[tuple[str, int]]) -> str:
    return json.dumps(
        {
            "recommendations": [
                {"work_id": w, "priority_score": s, "reasoning": f"because {w}"} for w, s in recs
            ],
            "bottlenecks": [{"type": "review", "description": "one reviewer", "severity": "high"}],
        }
    )


def with_work(d: CoorddProcess) -> list[str]:
    ids = [
        d.call(protocol.Add(work_type="build", description=f"item {n}"))["work_item_id"]
        for n in range(3)
    ]
    d.call(protocol.Register(agent_id="a1", team="core"))
    return ids


def test_priorities_shown_saved_and_cached(coordd_factory: Any, ollama: Ollama) -> None:
    d = coordd_factory({"ollama_host": ollama.url, "ai_timeout": 0.5})
    ids = with_work(d)
    ollama.queue(("text", answer([(ids[1], 80), ("work_made_up", 99), (ids[0], 30)])))
    r = d.ctl("ollama-priorities")
    assert r.returncode == 0, r.stderr
    assert "answered by ollama (llama2)" in r.stdout
    assert "dropped 1 unknown id(s): 1 work_id" in r.stdout
    assert r.stdout.index(ids[1]) < r.stdout.index(ids[0]) and "work_made_up" not in r.stdout
    saved = json.loads((d.dir / "ollama_priority_analysis.json").read_text())
    assert [x["work_id"] for x in saved["result"]["recommendations"]] == [ids[1], ids[0]]
    assert saved["provider"] == "ollama" and saved["dropped_ids"] == {"work_id": 1}

    again = json.loads(d.ctl("ollama-priorities", "--json").stdout)
    assert again["cached"] is True and len(ollama.chats()) == 1
    ollama.queue(("text", answer([(ids[2], 50)])))
    fresh = json.loads(d.ctl("ollama-priorities", "--fresh", "--json").stdout)
    assert fresh["cached"] is False and fresh["result"]["recommendations"][0]["work_id"] == ids[2]
    counters = d.call(protocol.Status())["ai"]
    assert counters["cache_hits"] == 1 and counters["ollama_requests"] == 2


def test_auto_falls_back_to_claude_and_status_says_so(
    coordd_factory: Any, claude_api: Anthropic
) -> None:
    d = coordd_factory(
        {
            "ai_provider": "auto",
            "ollama_host": refused_url(),
            "anthropic_base_url": claude_api.url,
            "ai_timeout": 0.5,
        },
        env={"ANTHROPIC_API_KEY": Anthropic.API_KEY},
    )
    with_work(d)
    claude_api.queue(("text", json.dumps({"reassignments": [], "efficiency_gain": "10%"})))
    r = d.ctl("ollama-optimize")
    assert r.returncode == 0, r.stderr
    assert "ollama unusable (down)" in r.stdout and "answered by claude" in r.stdout
    assert (d.dir / "ollama_team_optimization.json").exists()

    status = json.loads(d.ctl("ai-status", "--json").stdout)
    assert status["provider"] == "auto"
    assert status["providers"]["ollama"]["reachable"] is False
    assert status["providers"]["claude"]["reachable"] is True
    human = d.ctl("ai-status").stdout
    assert "ollama: unusable (down)" in human and "claude: reachable" in human


def test_ai_status_says_when_the_model_is_not_pulled(coordd_factory: Any, ollama: Ollama) -> None:
    d = coordd_factory({"ollama_host": ollama.url, "ollama_model": "mistral"})
    r = d.ctl("ai-status")
    assert r.returncode == 0, r.stderr
    assert "ollama: reachable, model mistral (NOT installed); models: llama2:latest" in r.stdout


def test_no_provider_is_a_clear_failure(coordd_factory: Any) -> None:
    d = coordd_factory({"ollama_host": refused_url(), "ai_timeout": 0.5})
    r = d.ctl("ollama-priorities")
    assert r.returncode == 1
    assert "AI analysis failed (no_provider)" in r.stderr and "ollama: down" in r.stderr
    r = d.ctl("ollama-priorities", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["error"]["code"] == "no_provider"
    assert not (d.dir / "ollama_priority_analysis.json").exists()


def test_ai_analyze_reads_stdin_and_ai_is_control_only(coordd_factory: Any, ollama: Ollama) -> None:
    d = coordd_factory({"ollama_host": ollama.url, "ai_timeout": 0.5})
    ollama.queue(("text", json.dumps({"summary": "deploys fail on Mondays"})))
    r = d.ctl("ai-analyze", "Why do deploys fail?", "llama2", input='{"failures": [1, 2]}')
    assert r.returncode == 0, r.stderr
    assert "deploys fail on Mondays" in r.stdout
    prompt = ollama.chats()[0]["body"]["messages"][-1]["content"]
    assert "Why do deploys fail?" in prompt and '"failures": [1, 2]' in prompt

    agent = d.agent()
    reply = d.request(agent, protocol.AiPriorities())
    assert isinstance(reply, protocol.Error) and reply.code == "not_allowed"
    agent.close()


def test_claim_recommendation_for_claim_enhanced(coordd_factory: Any, ollama: Ollama) -> None:
    d = coordd_factory({"ollama_host": ollama.url, "ai_timeout": 0.5})
    ctx = Ctx(config.load(str(d.config_path), env={}))
    ollama.queue(
        (
            "text",
            '{"should_claim": false, "reasoning": "duplicate of w1", "suggested_priority": "low"}',
        )
    )
    rec = ai_claim_recommendation(ctx, "build", "Rebuild the cache", "high", "core")
    assert rec is not None and rec["should_claim"] is False and rec["provider"] == "ollama"
    assert "Rebuild the cache" in ollama.chats()[0]["body"]["messages"][-1]["content"]
    assert apply_claim_recommendation(rec, "high", respect_ai=False) == ("low", True)
    assert apply_claim_recommendation(rec, "high", respect_ai=True) == ("low", False)
    assert apply_claim_recommendation(None, "high", respect_ai=True) == ("high", True)

    d2 = coordd_factory({"ollama_host": refused_url(), "ai_timeout": 0.5})
    down = Ctx(config.load(str(d2.config_path), env={}))
    assert ai_claim_recommendation(down, "build", "x", "medium", "") is None


def test_heartbeats_and_claims_do_not_wait_for_a_slow_analysis(
    coordd_factory: Any, ollama: Ollama
) -> None:
    d = coordd_factory({"ollama_host": ollama.url, "ai_timeout": 10})
    ollama.queue(("slow", 3.0, ("text", answer([]))))
    control: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    control.setsockopt(zmq.LINGER, 0)
    control.connect("ipc://" + d.control_socket)
    started = time.monotonic()
    control.send(d.codec.encode(protocol.AiPriorities()))
    deadline = time.monotonic() + 2
    while not ollama.chats() and time.monotonic() < deadline:  # the model is now thinking
        time.sleep(0.01)
    assert ollama.chats(), "the analysis never reached the stand-in"

    agent = d.agent()
    t0 = time.monotonic()
    item = d.request(agent, protocol.Claim(agent_id="a1", work_type="t", description="d")).data
    claim_rtt = time.monotonic() - t0
    worst = 0.0
    for _ in range(1000):
        t0 = time.monotonic()
        reply = d.request(
            agent,
            protocol.Heartbeat(
                agent_id="a1", work_item_id=item["work_item_id"], lease=item["lease"], ack=True
            ),
        )
        worst = max(worst, time.monotonic() - t0)
        assert isinstance(reply, protocol.Ok)
    beats = d.call(protocol.Status())["counters"]["heartbeats"]
    served_in = time.monotonic() - started
    assert control.poll(0) == 0, "the analysis returned early: the test proves nothing"

    assert beats == 1000 and served_in < 3.0
    assert claim_rtt < 0.2 and worst < 0.2, (claim_rtt, worst)
    print(
        f"claim {claim_rtt * 1000:.1f} ms, worst heartbeat {worst * 1000:.1f} ms,"
        f" 1000 heartbeats in {served_in:.2f} s"
    )

    assert control.poll(10_000)
    result = d.codec.reply_decoder.decode(control.recv()).data
    assert result["ok"] and result["provider"] == "ollama" and result["elapsed"] >= 2.9
    control.close()
    agent.close()


def test_stopping_cancels_a_running_analysis(coordd_factory: Any, ollama: Ollama) -> None:
    d = coordd_factory({"ollama_host": ollama.url, "ai_timeout": 30})
    ollama.queue(("slow", 20.0, ("text", answer([]))))
    control: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    control.setsockopt(zmq.LINGER, 0)
    control.connect("ipc://" + d.control_socket)
    control.send(d.codec.encode(protocol.AiPriorities()))
    deadline = time.monotonic() + 2
    while not ollama.chats() and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    assert d.stop() == 0
    assert time.monotonic() - started < 5  # not the 20 s the model would take
    control.close()


def test_claim_enhanced_applies_the_ai_priority_and_respects_a_no(
    coordd_factory: Any, ollama: Ollama
) -> None:
    d = coordd_factory({"ollama_host": ollama.url, "ai_timeout": 2})
    env = {"AGENT_ID": "shell_agent", "COORDD_HEARTBEAT_INTERVAL": "30"}
    no = '{"should_claim": false, "reasoning": "duplicate of w1", "suggested_priority": "low"}'
    ollama.queue(("text", no))
    r = d.ctl("claim-enhanced", "build", "Rebuild cache", "high", "core", "--respect-ai", env=env)
    assert r.returncode == 7, r.stderr
    assert "advises not to claim: duplicate of w1" in r.stderr
    assert d.call(protocol.List()) == []

    ollama.queue(("text", no))
    r = d.ctl("claim-enhanced", "build", "Rebuild cache", "high", "core", "--json", env=env)
    try:
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["item"]["priority"] == "low"  # the AI's suggestion was applied
        assert out["ai_recommendation"]["should_claim"] is False
    finally:
        d.ctl("heartbeat-stop", env=env)
