"""coordctl's AI commands: ``ollama-priorities``, ``ollama-optimize``, ``ai-analyze``,
``ai-status``, and the claim recommendation ``claim-enhanced`` uses.

Each sends one ``Ai*`` request on the control socket and waits long enough for the
daemon's own deadline (``2 * ai_timeout``) plus a margin, since coordd answers only
when the provider is done. Every result says which provider answered and why any
fallback happened; an analysis that failed exits 1 with the reason (``--json`` still
prints the whole result).
"""

from __future__ import annotations

import json
import sys
from typing import Any, cast

import click
import msgspec

from coordctl import render
from coordctl.base import Ctx, call, command, emit, fail
from coordctl.client import EXIT_REFUSED, Client, Refused, Unreachable
from coordd import protocol, views

TOP = 5  # findings shown per section to a person; --json shows everything
MARGIN = 5.0  # seconds beyond the daemon's own deadline for the reply to travel


def ai_timeout(ctx: Ctx) -> float:
    """Long enough for the daemon's own deadline; a longer ``--timeout`` still wins."""
    return max(ctx.cfg.client_timeout, ctx.cfg.ai_timeout * 2 + MARGIN)


def ai_ctx(ctx: Ctx) -> Ctx:
    """The same context with a client that waits for a whole analysis."""
    return Ctx(msgspec.structs.replace(ctx.cfg, client_timeout=ai_timeout(ctx)), ctx.ai_provider)


def run_analysis(ctx: Ctx, req: protocol.Request, as_json: bool, human: Any) -> None:
    """Call, render; an analysis that failed is a refusal (exit 1, ``ai_failed``)."""
    result = call(ai_ctx(ctx), req)
    if not result["ok"]:
        err = result.get("error") or {}
        attempts = [msgspec.convert(a, views.Attempt) for a in result.get("fallbacks") or ()]
        fail(
            _failure_line(result),
            EXIT_REFUSED,
            err.get("code") or "ai_failed",
            fallbacks=attempts,
            raw=err.get("raw"),
        )
    view = views.ai_result_view(result)
    emit(as_json, view, lambda v: _header(result) + "\n" + human(result["result"]))


def _header(r: dict[str, Any]) -> str:
    lines = []
    for a in r.get("fallbacks") or []:
        lines.append(f"{a['provider']} unusable ({a['reason']}): {a['detail']}")
    if r.get("provider"):
        how = " (cached)" if r.get("cached") else f" in {r.get('elapsed', 0):.1f}s"
        retried = ", after one retry" if r.get("retried") else ""
        lines.append(f"answered by {r['provider']} ({r['model']}){how}{retried}")
    dropped = r.get("dropped_ids") or {}
    if dropped:
        what = ", ".join(f"{n} {field}" for field, n in sorted(dropped.items()))
        lines.append(f"dropped {sum(dropped.values())} unknown id(s): {what}")
    if r.get("saved_to"):
        lines.append(f"saved to {r['saved_to']}")
    return "\n".join(lines)


def _failure_line(r: dict[str, Any]) -> str:
    err = r.get("error") or {}
    if err.get("code") == "nothing_to_analyze":
        return str(err.get("message"))
    line = f"AI analysis failed ({err.get('code')}): {err.get('message')}"
    if err.get("raw"):
        line += f"\nraw answer: {err['raw'][:500]}"
    return line


def _section(title: str, lines: list[str], total: int) -> str:
    if not lines:
        return f"{title}: none"
    more = f"\n  ... {total - len(lines)} more (--json)" if total > len(lines) else ""
    return f"{title}:\n" + "\n".join("  " + s for s in lines) + more


def priorities_text(a: dict[str, Any]) -> str:
    recs, bns, ops = a["recommendations"], a["bottlenecks"], a["optimization_opportunities"]
    rows = render.table(
        ("SCORE", "WORK", "REASONING"),
        [
            (r["priority_score"], r["work_id"] or f"type {r['work_type']}", r["reasoning"])
            for r in recs[:TOP]
        ],
    )
    return "\n".join(
        [
            # The table's header line counts as one shown line.
            _section("Top priorities", rows.splitlines() if recs else [], len(recs) + 1),
            _section(
                "Bottlenecks",
                [
                    f"[{b['severity'] or '-'}] {b['type'] or '-'}: {b['description']}"
                    for b in bns[:TOP]
                ],
                len(bns),
            ),
            _section(
                "Opportunities",
                [
                    f"{o['description']} (impact {o['impact'] or o['impact_score'] or '-'})"
                    for o in ops[:TOP]
                ],
                len(ops),
            ),
        ]
    )


def team_text(a: dict[str, Any]) -> str:
    moves, teams = a["reassignments"], a["team_formation"]
    return "\n".join(
        [
            _section(
                "Reassignments",
                [
                    f"{m['work_id']}: {m['from_agent'] or '-'} -> {m['to_agent']} ({m['reason']})"
                    for m in moves[:TOP]
                ],
                len(moves),
            ),
            _section(
                "Teams",
                [
                    f"{t['team_name']}: {', '.join(t['suggested_agents'])}"
                    f" ({t['focus_area'] or '-'})"
                    for t in teams[:TOP]
                ],
                len(teams),
            ),
            f"Expected efficiency gain: {a['efficiency_gain'] or '-'}",
        ]
    )


def free_text(a: dict[str, Any]) -> str:
    findings, recs = a["findings"], a["recommendations"]
    return "\n".join(
        [
            a["summary"],
            _section(
                "Findings",
                [f"[{f['severity'] or '-'}] {f['title']}: {f['detail']}" for f in findings[:TOP]],
                len(findings),
            ),
            _section("Recommendations", [f"- {r}" for r in recs[:TOP]], len(recs)),
        ]
    )


model_option = click.option("--model", help="Model to ask (claude-* goes to Claude).")
provider_option = click.option(
    "--provider",
    type=click.Choice(["ollama", "claude", "auto"]),
    help="Provider for this analysis (default: $AI_PROVIDER, else the daemon's).",
)
fresh_option = click.option("--fresh", is_flag=True, help="Ask again; ignore a cached answer.")


def _provider(ctx: Ctx, given: str | None) -> Any:
    """This command's provider: --provider, else $AI_PROVIDER, else None (the daemon's)."""
    return given or ctx.ai_provider


@command("ollama-priorities", short_help="AI: rank the open work, name bottlenecks")
@model_option
@provider_option
@fresh_option
def ollama_priorities(
    ctx: Ctx, model: str | None, provider: str | None, fresh: bool, as_json: bool
) -> None:
    """Rank the open work and name bottlenecks (saved to ollama_priority_analysis.json)."""
    req = protocol.AiPriorities(model=model, fresh=fresh, provider=_provider(ctx, provider))
    run_analysis(ctx, req, as_json, priorities_text)


@command("ollama-optimize", short_help="AI: reassignments and teams to form")
@model_option
@provider_option
@fresh_option
def ollama_optimize(
    ctx: Ctx, model: str | None, provider: str | None, fresh: bool, as_json: bool
) -> None:
    """Suggest reassignments and teams (saved to ollama_team_optimization.json)."""
    req = protocol.AiOptimize(model=model, fresh=fresh, provider=_provider(ctx, provider))
    run_analysis(ctx, req, as_json, team_text)


@command("ai-analyze", short_help="Ask the AI about piped JSON, else the live work")
@click.argument("prompt")
@click.argument("model", required=False)
@provider_option
@fresh_option
def ai_analyze(
    ctx: Ctx, prompt: str, model: str | None, provider: str | None, fresh: bool, as_json: bool
) -> None:
    """Ask the AI a question about the JSON piped in, else about the live work.

    Example: cat data.json | coordctl ai-analyze "What is blocking us?" llama3
    """
    data = _stdin_data()
    req = protocol.AiAnalyze(
        prompt=prompt, data=data, model=model, fresh=fresh, provider=_provider(ctx, provider)
    )
    run_analysis(ctx, req, as_json, free_text)


def _stdin_data() -> Any:
    """JSON from a pipe; text that is not JSON is passed as it is; a terminal gives None."""
    if sys.stdin is None or sys.stdin.isatty():
        return None
    text = sys.stdin.read()
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


@command("ai-status", short_help="AI provider in use, reachable or not, models, cache")
def ai_status(ctx: Ctx, as_json: bool) -> None:
    """Which AI provider is used, whether it answers, its models and the cache."""
    emit(as_json, views.ai_status_view(call(ai_ctx(ctx), protocol.AiStatus())), status_text)


def status_text(s: views.AiStatusView) -> str:
    lines = [f"provider: {s.provider} (timeout {s.timeout_seconds:g}s)"]
    for name, p in s.providers.items():
        used = "" if p.used else " (not used)"
        if p.reachable:
            models = ", ".join(p.models or []) or "none installed"
            missing = "" if p.model_installed in (None, True) else " (NOT installed)"
            lines.append(f"{name}{used}: reachable, model {p.model}{missing}; models: {models}")
        else:
            lines.append(f"{name}{used}: unusable ({p.error}): {p.detail}")
    c = s.cache
    lines.append(f"cache: {c.entries} answer(s), ttl {c.ttl_seconds:g}s")
    counters = s.counters
    if counters:
        lines.append("counters: " + ", ".join(f"{k} {v:g}" for k, v in sorted(counters.items())))
    return "\n".join(lines)


def provider_summary(ctx: Ctx) -> str:
    """One line for the freshness dashboard: the provider in use and whether it answers."""
    client = Client(ctx.cfg.control_socket, ai_timeout(ctx))
    try:
        s = client.call(protocol.AiStatus())
    except (Unreachable, Refused) as e:
        return f"unknown ({e})"
    finally:
        client.close()
    parts = []
    for name, p in s["providers"].items():
        if not p["used"]:
            continue
        state = f"reachable, model {p['model']}" if p["reachable"] else f"unusable ({p['error']})"
        parts.append(f"{name} {state}")
    summary = "; ".join(parts) or "none"
    return f"auto: {summary}" if s["provider"] == "auto" else summary


def ai_claim_recommendation(
    ctx: Ctx, work_type: str, description: str, priority: str, team: str
) -> dict[str, Any] | None:
    """Ask coordd whether to claim this item (sends AiRecommendClaim); for ``claim-enhanced``.

    Returns ``{"should_claim": bool, "reasoning": str, "suggested_priority":
    "low"|"medium"|"high"|"critical", "provider": str, "model": str, "cached": bool,
    "fallbacks": [{"provider", "reason", "detail"}]}``, or ``None`` when no usable
    recommendation came (no provider, an invalid answer, daemon too slow): a one-line
    notice then goes to stderr and the caller claims as asked. Never exits.

    The caller then applies it with ``apply_claim_recommendation``: the suggested
    priority replaces the given one, a "don't claim" is shown with its reason, and the
    claim proceeds unless the user passed ``--respect-ai``.
    """
    client = Client(ctx.cfg.control_socket, ai_timeout(ctx))
    req = protocol.AiRecommendClaim(
        work_type=work_type,
        description=description,
        priority=cast(Any, priority),
        team=team,
        provider=_provider(ctx, None),
    )
    try:
        r = client.call(req)
    except (Unreachable, Refused) as e:
        click.echo(f"coordctl: no AI recommendation ({e}); claiming as asked", err=True)
        return None
    finally:
        client.close()
    if not r["ok"]:
        err = r.get("error") or {}
        click.echo(
            f"coordctl: no AI recommendation ({err.get('code')}: {err.get('message')});"
            " claiming as asked",
            err=True,
        )
        return None
    return {
        **r["result"],
        "provider": r["provider"],
        "model": r["model"],
        "cached": r["cached"],
        "fallbacks": r["fallbacks"],
    }


def apply_claim_recommendation(
    rec: dict[str, Any] | None, priority: str, respect_ai: bool
) -> tuple[str, bool]:
    """The priority to claim with and whether to claim at all; says why on stderr."""
    if rec is None:
        return priority, True
    new_priority = rec["suggested_priority"]
    if new_priority != priority:
        click.echo(
            f"AI ({rec['provider']}) suggests priority {new_priority} (was {priority})", err=True
        )
    if rec["should_claim"]:
        return new_priority, True
    click.echo(f"AI ({rec['provider']}) advises not to claim: {rec['reasoning']}", err=True)
    if respect_ai:
        click.echo("not claimed (--respect-ai)", err=True)
        return new_priority, False
    return new_priority, True


COMMANDS = [ollama_priorities, ollama_optimize, ai_analyze, ai_status]
