"""What ``coordctl mcp`` offers a model: each tool's typed input, typed output and the
text that tells the model when to call it and what a refusal means.

Plain data, no MCP and no sockets: ``coordctl.mcp_server`` serves these. The inputs
reuse the protocol's field types (``Id``, ``Text``, ``Percent``...) and the outputs
the daemon's own structs, so the JSON schemas a client sees carry the same limits and
vocabularies the daemon enforces. The output shapes live in the "Shapes" section only:
when a view type moves (the JSON views of ``coordd.views``), one edit there follows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from coordd import views
from coordd.kinds import Priority, Status
from coordd.protocol import Checkpoint, Id, Percent, Seconds, Text, Velocity


def doc(text: str) -> msgspec.Meta:
    return msgspec.Meta(description=text)


# --- Shapes: what the tools answer -----------------------------------------------

# The JSON views of coordd.views: what `coordctl --json` prints is what a model reads.
Item = views.ItemView


def item(data: Any) -> Item:
    """An item as the daemon sends it (plain data), as its view."""
    return views.item_view(data)


def items(data: Any) -> list[Item]:
    """A ``list`` reply (a bare list, or ``{"items": [...], ...}`` where it pages)."""
    return views.item_list(data).items


class Revoked(msgspec.Struct, kw_only=True):
    """A lease this session held and lost: the item is no longer yours."""

    work_item_id: str
    lease: int
    reason: str
    strategy: Annotated[str | None, doc("the recovery applied: reassign, retry, fail")] = None
    new_holder: Annotated[str | None, doc("the agent that holds the item now, if any")] = None


class Held(msgspec.Struct, kw_only=True):
    """A lease this session holds and heartbeats."""

    work_item_id: str
    lease: int


class Out(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Every answer may carry leases revoked since the previous call."""

    revoked: Annotated[
        list[Revoked],
        doc(
            "Leases you held that were revoked since your last call (the item was recovered"
            " and may already be with another agent). Stop all work on these items."
        ),
    ] = []


class ItemOut(Out):
    item: Item


class ItemsOut(Out):
    items: list[Item]
    truncated: Annotated[bool, doc("true when more items matched than `limit`")] = False


class StaleOut(Out):
    stale: views.StaleReport


def stale_out(data: Any) -> StaleOut:
    """A ``check_stale`` reply as its view."""
    return StaleOut(stale=views.stale_report(data))


class StatusOut(Out):
    agent_id: Annotated[str, doc("the agent id this server acts as")]
    held: Annotated[list[Held], doc("the leases this session holds and heartbeats")]
    heartbeat_interval: float
    daemon: Annotated[views.StatusView, doc("coordd's status: health, counts, thresholds")]


class AnalysisOut(Out):
    analysis: Annotated[views.AiResultView, doc("who answered, and `result`: the analysis")]


class ErrorOut(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The structured part of a tool error."""

    code: str
    message: str
    advice: str
    revoked: list[Revoked] = []


# --- Inputs -------------------------------------------------------------------------


class Params(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A tool's arguments; an unknown argument is refused, naming it."""


WorkId = Annotated[Id, doc("the work item id, e.g. work_1732600000000")]


class ClaimParams(Params):
    work_type: Annotated[Id, doc("kind of work, e.g. build, review, docs")]
    description: Annotated[Text, doc("what the work is, in a sentence")]
    priority: Priority = Priority.MEDIUM
    team: Id = ""
    work_item_id: Annotated[Id | None, doc("an id of your choice; default work_<ns>")] = None
    stale_after: Annotated[
        Seconds | None, doc("seconds of silence before this item counts as stale")
    ] = None


class ClaimNextParams(Params):
    work_type: Annotated[Id | None, doc("only items of this work type")] = None
    team: Annotated[Id | None, doc("only items of this team")] = None
    work_item_id: Annotated[Id | None, doc("claim exactly this pending item")] = None


class ProgressParams(Params):
    work_item_id: WorkId
    percent: Annotated[Percent, doc("how far along, 0-100")]
    status: Annotated[Id | None, doc("a short stage name, e.g. testing")] = None
    checkpoint: Annotated[
        Checkpoint | None,
        doc(
            "where you are, for whoever takes the item over if you stop: branch, last step"
            " done, what is left (kept with the item, replaced by the next checkpoint)"
        ),
    ] = None


class CompleteParams(Params):
    work_item_id: WorkId
    result: Annotated[Text, doc("outcome: success, failed, or a short summary")] = "success"
    velocity: Annotated[Velocity, doc("velocity points earned for the team")] = 0


class ReleaseParams(Params):
    work_item_id: WorkId


class ListParams(Params):
    status: Annotated[Status | None, doc("pending is the backlog; default: every status")] = None
    team: Id | None = None
    agent_id: Annotated[Id | None, doc("only items held by this agent")] = None
    work_type: Id | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 50


class ShowParams(Params):
    work_item_id: WorkId


class NoParams(Params):
    pass


Model = Annotated[Id | None, doc("AI model to use; default: the daemon's configured one")]


class AiRankParams(Params):
    model: Model = None
    fresh: Annotated[bool, doc("ignore a cached answer")] = False


class AiAnalyzeParams(Params):
    prompt: Annotated[Text, doc("the question to ask about the work")]
    data: Annotated[Any, doc("extra JSON data for the question")] = None
    model: Model = None
    fresh: bool = False


class AiRecommendParams(Params):
    work_type: Id
    description: Text
    priority: Priority = Priority.MEDIUM
    team: Id = ""
    model: Model = None
    fresh: bool = False


# --- The tools ------------------------------------------------------------------------


@dataclass(frozen=True)
class Tool:
    name: str
    title: str
    description: str
    params: type[Params]
    result: type[Out]
    read_only: bool = False
    operator: bool = False  # needs the local control socket (AI analyses)


LOST = (
    " If refused with lease_lost: stop working on the item at once; it was recovered"
    " (you were silent too long, or an operator took it back) and may be with another"
    " agent now. Do not retry; call claim_next for other work."
)

TOOLS: tuple[Tool, ...] = (
    Tool(
        "claim_next",
        "Take the next work item",
        "Take the most urgent pending work item from the backlog and hold it (optionally"
        " only of a work_type or team, or exactly the pending item work_item_id). Call this"
        " when you are ready for new work. The item stays yours while this server runs:"
        " it heartbeats for you; you need not call anything to keep it. If the item has a"
        " `checkpoint`, an earlier holder stopped part way: read it and resume from there."
        " When done, call complete; if you cannot finish, call release. Refused with"
        " nothing_pending when no pending item matches: there is no work for you now"
        " (stop, or try again later).",
        ClaimNextParams,
        ItemOut,
    ),
    Tool(
        "claim",
        "Create and claim a work item",
        "Create a NEW work item describing work you are about to do yourself, and hold it at"
        " once, so other agents see it is taken. Use claim_next instead to take work from"
        " the backlog. Refused with conflict if work_item_id already exists.",
        ClaimParams,
        ItemOut,
    ),
    Tool(
        "progress",
        "Report progress",
        "Report how far along you are (0-100) on an item you hold, with an optional short"
        " stage name and a checkpoint: a note saying where you are, so that if you stop,"
        " whoever takes the item over resumes instead of starting again. Call it at"
        " milestones: others see it in list/show. Refused with not_owner if another agent"
        " holds the item." + LOST,
        ProgressParams,
        ItemOut,
    ),
    Tool(
        "complete",
        "Finish a work item",
        "Mark an item you hold as done, with a result (success, failed, or a short summary)"
        " and optional velocity points. The lease ends; the item will not be handed out"
        " again. Use release instead if the work should be done by someone else." + LOST,
        CompleteParams,
        ItemOut,
    ),
    Tool(
        "release",
        "Give a work item back",
        "Give an item you hold back to the backlog unfinished (it becomes pending for any"
        " agent). Call it when you cannot or should not finish the work." + LOST,
        ReleaseParams,
        ItemOut,
    ),
    Tool(
        "list",
        "List work items",
        "List work items, filtered by status (pending = the backlog, active = held),"
        " team, agent_id or work_type; at most `limit` (default 50) in id order. Read only.",
        ListParams,
        ItemsOut,
        read_only=True,
    ),
    Tool(
        "show",
        "Show one work item",
        "Everything about one work item: status, holder, lease, progress, recovery history."
        " Refused with unknown_work if no item has that id. Read only.",
        ShowParams,
        ItemOut,
        read_only=True,
    ),
    Tool(
        "check_stale",
        "List stale work",
        "Items whose holder has been silent past the threshold, with how long and what"
        " recovery will do, and the items recovered in the last hour (from whom, to whom)."
        " Useful before claiming work someone may have abandoned. Read only.",
        NoParams,
        StaleOut,
        read_only=True,
    ),
    Tool(
        "status",
        "Who am I, what do I hold",
        "Your agent id, the leases this session holds (and heartbeats), and the daemon's"
        " health and counts. Call it when unsure what you hold. Read only.",
        NoParams,
        StatusOut,
        read_only=True,
    ),
    Tool(
        "ai_priorities",
        "AI: rank the open work",
        "Ask coordd's AI provider to rank the open work and name bottlenecks. Slow (up to"
        " a minute); the answer says which provider answered. Read only.",
        AiRankParams,
        AnalysisOut,
        read_only=True,
        operator=True,
    ),
    Tool(
        "ai_optimize",
        "AI: suggest reassignments",
        "Ask coordd's AI provider for reassignments and team suggestions. Slow; read only:"
        " it changes nothing by itself.",
        AiRankParams,
        AnalysisOut,
        read_only=True,
        operator=True,
    ),
    Tool(
        "ai_analyze",
        "AI: a free question",
        "Ask coordd's AI provider a free question about the work (with optional JSON data)."
        " Slow; read only.",
        AiAnalyzeParams,
        AnalysisOut,
        read_only=True,
        operator=True,
    ),
    Tool(
        "ai_recommend_claim",
        "AI: should this be claimed",
        "Ask coordd's AI provider whether a proposed item should be claimed, and at which"
        " priority. Slow; read only: call claim yourself if you agree.",
        AiRecommendParams,
        AnalysisOut,
        read_only=True,
        operator=True,
    ),
)

BY_NAME = {t.name: t for t in TOOLS}

# What a model should do next, per refusal code (the daemon's stable codes, plus
# ``unreachable`` for a daemon that does not answer).
ADVICE: dict[str, str] = {
    "lease_lost": "Stop working on this item now: your lease was revoked and the item"
    " recovered (it may be with another agent). Do not retry it; call claim_next for other"
    " work.",
    "not_owner": "Another agent holds this item. Leave it alone; pick other work (claim_next).",
    "unknown_work": "No item has that id. Check it with list or show.",
    "nothing_pending": "There is no pending work matching your filters right now. Stop, or"
    " try again later or with other filters.",
    "conflict": "The item is not in a state that allows this (e.g. it exists already, or"
    " is not pending). Look at it with show before trying anything else.",
    "bad_request": "An argument is invalid (the message names it). Fix it and call again.",
    "limit_reached": "coordd is at a configured limit. Tell the operator; do not retry in a loop.",
    "not_allowed": "This agent may not do that. Tell the operator.",
    "unavailable": "coordd cannot do this right now (e.g. the AI provider is down). Carry"
    " on without it or try later.",
    "unreachable": "coordd is not answering. This server keeps running and reconnects by"
    " itself: try the same call again in a little while. Keep your work; if the daemon"
    " stays down past the stale threshold your items may be recovered when it returns.",
    "internal": "Something failed inside coordd or this server (a bug). Tell the operator.",
}


def advice(code: str) -> str:
    return ADVICE.get(code, ADVICE["internal"])


def json_schema(t: type) -> dict[str, Any]:
    """The JSON schema of a struct with the struct itself at the root (MCP wants an
    object schema there, not a bare ``$ref``); what it refers to goes under ``$defs``."""
    (root,), defs = msgspec.json.schema_components([t], ref_template="#/$defs/{name}")
    name = root["$ref"].rsplit("/", 1)[-1]
    body = dict(defs.pop(name))
    if defs:
        body["$defs"] = defs
    return body


INSTRUCTIONS = (
    "coordd coordinates work among many agents; you are one of them. Take work with"
    " claim_next (or claim for new work you start yourself), report progress at"
    " milestones, and finish with complete (or release to give it back). While this"
    " server runs it keeps your items alive; if you stop, they go back to the backlog"
    " after the stale threshold. If any answer lists `revoked` leases, or a call is"
    " refused with lease_lost, stop working on those items at once: they were recovered"
    " and may be with another agent."
)
