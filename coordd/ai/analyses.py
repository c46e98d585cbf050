"""The analyses operators ask for: prompts, one answer schema each, validation.

Every answer is checked against its ``msgspec`` schema. A reply that does not fit is
sent back once to the same provider with the validation error; a second misfit is
reported as ``invalid_answer`` with the raw text kept. Ids the model cites that are
not in the view it was shown (work items, work types, agents) are dropped and
counted: a hallucinated id must never reach an operator's screen or a saved file.

The input is a ``View``: plain data the server copied out of the state. This module
never sees the ``State`` object.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Annotated, Any

import msgspec

from coordd.ai.base import Message
from coordd.ai.router import Attempt, NoProvider, Router, digest
from coordd.kinds import Priority

Score = Annotated[int, msgspec.Meta(ge=1, le=100)]
Loose = str | float  # models write "high" or 0.8 for the same idea; both are kept


class View(msgspec.Struct, kw_only=True):
    """What an analysis may see: item and agent dicts built by the server."""

    items: list[dict[str, Any]] = []
    agents: list[dict[str, Any]] = []


# --- answer schemas --------------------------------------------------------------


class Answer(msgspec.Struct, kw_only=True):
    """Base of every answer. Unknown fields are ignored (see README, AI analysis)."""


class Recommendation(Answer, kw_only=True):
    # Keyed by work_id; the old script's Claude answers are keyed by work_type,
    # which we accept too (it then applies to every item of that type).
    work_id: str | None = None
    work_type: str | None = None
    priority_score: Score
    reasoning: str = ""

    def __post_init__(self) -> None:
        if not (self.work_id or self.work_type):
            raise ValueError("each recommendation needs a work_id (or a work_type)")


class Bottleneck(Answer, kw_only=True):
    type: str = ""
    description: str
    severity: Loose = ""


class Opportunity(Answer, kw_only=True):
    type: str = ""
    description: str
    impact: Loose = ""
    impact_score: float | None = None  # the old script's name for a numeric impact


class PriorityAnswer(Answer, kw_only=True):
    recommendations: list[Recommendation]
    bottlenecks: list[Bottleneck] = []
    optimization_opportunities: list[Opportunity] = []


class Reassignment(Answer, kw_only=True):
    work_id: str
    from_agent: str | None = None
    to_agent: str
    reason: str = ""


class TeamFormation(Answer, kw_only=True):
    team_name: str
    suggested_agents: list[str] = []
    focus_area: str = ""


class TeamAnswer(Answer, kw_only=True):
    reassignments: list[Reassignment] = []
    team_formation: list[TeamFormation] = []
    efficiency_gain: Loose = ""


class ClaimAnswer(Answer, kw_only=True):
    should_claim: bool
    reasoning: str = ""
    suggested_priority: Priority


class Finding(Answer, kw_only=True):
    title: str
    detail: str = ""
    severity: Loose = ""


class FreeAnswer(Answer, kw_only=True):
    summary: str
    findings: list[Finding] = []
    recommendations: list[str] = []


# --- the result every request gets ------------------------------------------------


class Failure(msgspec.Struct, kw_only=True):
    # no_provider | invalid_answer | timeout | busy | internal
    code: str
    message: str
    raw: str | None = None


class AiResult(msgspec.Struct, kw_only=True):
    ok: bool
    analysis: str
    provider: str | None = None
    model: str | None = None
    fallbacks: list[Attempt] = []
    cached: bool = False
    retried: bool = False
    result: Any = None
    dropped_ids: dict[str, int] = {}
    error: Failure | None = None
    elapsed: float = 0.0
    generated_at: float = 0.0
    saved_to: str | None = None


def failed(analysis: str, code: str, message: str, **kw: Any) -> AiResult:
    return AiResult(ok=False, analysis=analysis, error=Failure(code=code, message=message), **kw)


# --- validation ---------------------------------------------------------------------


class Invalid(Exception):
    """The reply is not JSON or does not fit the schema; the message says where."""


def parse(text: str, schema: type[Answer]) -> Answer:
    """The reply as ``schema``. Tolerates a Markdown code fence or words around it."""
    try:
        obj = json.loads(_json_part(text))
    except ValueError as e:
        raise Invalid(f"the reply is not valid JSON ({e})") from None
    try:
        return msgspec.convert(obj, schema, strict=False)
    except msgspec.ValidationError as e:
        raise Invalid(f"the JSON does not fit the schema: {e}") from None


def _json_part(text: str) -> str:
    start, end = text.find("{"), text.rfind("}")
    return text[start : end + 1] if 0 <= start < end else text


def json_schema(schema: type[Answer]) -> dict[str, Any]:
    """The JSON schema with every ``$ref`` inlined (Ollama's grammar wants it flat)."""
    raw = msgspec.json.schema(schema)
    defs = raw.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                return inline(defs[ref.rsplit("/", 1)[-1]])
            # "title" annotations are noise for a model; a property named title is not.
            return {
                k: inline(v) for k, v in node.items() if not (k == "title" and isinstance(v, str))
            }
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    out: dict[str, Any] = inline(raw)
    return out


# --- ids: only what the view holds --------------------------------------------------


class Dropped:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def keep(self, field: str, value: str | None, known: set[str]) -> bool:
        if value is None or value in known:
            return True
        self.counts[field] = self.counts.get(field, 0) + 1
        return False


def _ids(view: View) -> tuple[set[str], set[str], set[str]]:
    items = {i["work_item_id"] for i in view.items}
    types = {i["work_type"] for i in view.items}
    agents = {a["agent_id"] for a in view.agents} | {
        i["agent_id"] for i in view.items if i.get("agent_id")
    }
    return items, types, agents


def check_priorities(answer: Any, view: View) -> tuple[Any, dict[str, int]]:
    items, types, _ = _ids(view)
    d = Dropped()
    kept = [
        r
        for r in answer.recommendations
        if (
            d.keep("work_id", r.work_id, items)
            if r.work_id
            else d.keep("work_type", r.work_type, types)
        )
    ]
    kept.sort(key=lambda r: -r.priority_score)
    return msgspec.structs.replace(answer, recommendations=kept), d.counts


def check_team(answer: Any, view: View) -> tuple[Any, dict[str, int]]:
    items, _, agents = _ids(view)
    d = Dropped()
    moves = [
        r
        for r in answer.reassignments
        if d.keep("work_id", r.work_id, items)
        and d.keep("agent_id", r.to_agent, agents)
        and d.keep("agent_id", r.from_agent or None, agents)
    ]
    teams = []
    for t in answer.team_formation:
        members = [a for a in t.suggested_agents if d.keep("agent_id", a, agents)]
        if members:
            teams.append(msgspec.structs.replace(t, suggested_agents=members))
    return msgspec.structs.replace(answer, reassignments=moves, team_formation=teams), d.counts


def no_ids(answer: Any, view: View) -> tuple[Any, dict[str, int]]:
    return answer, {}


# --- prompts ---------------------------------------------------------------------------

SYSTEM = (
    "You are the analyst of a coordination system for a fleet of AI agents that claim"
    " work items, send heartbeats and complete them. Be concrete and brief. Cite only"
    " ids that appear in the data you are given. Reply with ONE JSON object and nothing"
    " else, matching this JSON schema:\n"
)


def _data(label: str, data: Any) -> str:
    return f"{label}:\n{json.dumps(data, sort_keys=True, default=str)}"


def about_the_work(instruction: str) -> Callable[[View, dict[str, Any]], str]:
    """A prompt: the instruction, then the open work items and the agents."""

    def prompt(view: View, params: dict[str, Any]) -> str:
        return "\n\n".join(
            [instruction, _data("Work items", view.items), _data("Agents", view.agents)]
        )

    return prompt


priorities_prompt = about_the_work(
    "Rank the open work items by urgency (priority_score 1-100, 100 = do first),"
    " name the bottlenecks (type, description, severity) and the optimization"
    " opportunities (description, impact). Use work_id from the items."
)

team_prompt = about_the_work(
    "Suggest reassignments of work items between agents to balance the load"
    " (work_id, from_agent, to_agent, reason), teams to form (team_name,"
    " suggested_agents, focus_area) and the expected efficiency_gain. Use only"
    " the work_id and agent_id values below."
)


def claim_prompt(view: View, params: dict[str, Any]) -> str:
    return "\n\n".join(
        [
            "An agent is about to claim the work item below. Say whether it should"
            " (should_claim), why (reasoning), and the priority it deserves"
            " (suggested_priority: low, medium, high or critical), given the work"
            " already open.",
            _data("Work item to claim", params["claim"]),
            _data("Open work items", view.items),
        ]
    )


def free_prompt(view: View, params: dict[str, Any]) -> str:
    """The question about the data given, or (none given) about the live state."""
    data = params.get("data")
    about = (
        [_data("Data", data)]
        if data is not None
        else [_data("Open work items", view.items), _data("Agents", view.agents)]
    )
    return "\n\n".join(
        [
            str(params["prompt"]),
            "Answer with a summary, findings (title, detail, severity) and"
            " recommendations (a list of sentences).",
            *about,
        ]
    )


class Spec(msgspec.Struct, frozen=True):
    schema: type[Answer]
    prompt: Callable[[View, dict[str, Any]], str]
    check: Callable[[Any, View], tuple[Any, dict[str, int]]]


SPECS: dict[str, Spec] = {
    "priorities": Spec(PriorityAnswer, priorities_prompt, check_priorities),
    "team_optimization": Spec(TeamAnswer, team_prompt, check_team),
    "claim_recommendation": Spec(ClaimAnswer, claim_prompt, no_ids),
    "free": Spec(FreeAnswer, free_prompt, no_ids),
}


def messages_for(kind: str, view: View, params: dict[str, Any]) -> list[Message]:
    spec = SPECS[kind]
    system = SYSTEM + json.dumps(json_schema(spec.schema))
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": spec.prompt(view, params)},
    ]


def retry_message(error: str) -> Message:
    return {
        "role": "user",
        "content": f"Your reply was rejected: {error}. Answer again with only the JSON"
        " object, matching the schema exactly.",
    }


# --- running one analysis ---------------------------------------------------------------


async def run(
    router: Router,
    kind: str,
    view: View,
    params: dict[str, Any],
    model: str | None = None,
    fresh: bool = False,
    now: float = 0.0,
    provider: str | None = None,
) -> AiResult:
    """Ask, validate (one retry), drop unknown ids; never raises for a provider's sake.
    ``provider`` (ollama, claude, auto) overrides the router's mode for this one."""
    started = time.monotonic()
    mode = provider or router.mode
    key = digest(kind, mode, model, router.models, router.analysis_models, view, params)
    hit = None if fresh else router.cache.get(key)
    if hit is not None:
        router.counters.add("cache_hits")
        return msgspec.structs.replace(hit, cached=True, elapsed=time.monotonic() - started)
    router.counters.add("cache_misses")
    result = await _ask(router, kind, view, params, model, mode)
    result = msgspec.structs.replace(result, elapsed=time.monotonic() - started, generated_at=now)
    if result.ok:
        router.cache.put(key, result)
    return result


async def _ask(
    router: Router,
    kind: str,
    view: View,
    params: dict[str, Any],
    model: str | None,
    mode: str | None = None,
) -> AiResult:
    spec = SPECS[kind]
    schema = json_schema(spec.schema)
    messages = messages_for(kind, view, params)
    try:
        done, attempts = await router.complete(messages, schema, kind, model, mode=mode)
    except NoProvider as e:
        return failed(kind, "no_provider", f"no AI provider available ({e})", fallbacks=e.attempts)
    who: dict[str, Any] = {"provider": done.provider, "model": done.model, "fallbacks": attempts}
    retried = False
    try:
        answer = parse(done.text, spec.schema)
    except Invalid as first:
        router.counters.add("invalid_answers")
        retried = True
        again = [*messages, {"role": "assistant", "content": done.text}, retry_message(str(first))]
        try:
            done, _ = await router.complete(again, schema, kind, model, only=done.provider)
            answer = parse(done.text, spec.schema)
        except NoProvider as e:
            msg = f"the answer did not fit ({first}); the retry failed: {e}"
            return _invalid(kind, msg, done.text, who)
        except Invalid as second:
            router.counters.add("invalid_answers")
            return _invalid(kind, f"the answer did not fit twice: {second}", done.text, who)
    kept, dropped = spec.check(answer, view)
    if dropped:
        router.counters.add("dropped_ids", sum(dropped.values()))
    return AiResult(
        ok=True,
        analysis=kind,
        result=msgspec.to_builtins(kept),
        dropped_ids=dropped,
        retried=retried,
        **who,
    )


def _invalid(kind: str, message: str, raw: str, who: dict[str, Any]) -> AiResult:
    return AiResult(
        ok=False,
        analysis=kind,
        retried=True,
        error=Failure(code="invalid_answer", message=message, raw=raw),
        **who,
    )
