"""The JSON face of coordd: what ``coordctl --json`` prints, what the MCP tools and the
web page will show. One msgspec type per thing shown, and the published JSON Schema
is generated from these types (``python -m coordd.views --write schema``), so the
schema and the output cannot drift apart.

Rules every view keeps (tests/cli/test_json_schema.py checks them against a daemon):
- times are RFC 3339 UTC strings (``datetime`` here); plain numbers of seconds only in
  fields whose name ends in ``_seconds`` (durations, never instants);
- the same field name has the same type in every view;
- an absent value is ``null`` (never ``""``), every field is always present;
- a list is wrapped as ``{"items": [...]}`` (with ``next_cursor`` where it pages);
- no display strings, no internal fields (``legacy``, heap data);
- a refusal is ``{"error": {"code", "message", "exit_status", ...}}``.

The daemon keeps its own structs (epoch floats) on the wire; the functions here turn a
reply into its view at the edge. This module imports only msgspec and the model, so
the CLI pays little for it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from coordd.core.model import Agent, Event, WorkItem

# --- conversions -------------------------------------------------------------------


def when(ts: float | None) -> datetime | None:
    """An epoch timestamp as a UTC datetime (RFC 3339 in JSON); None stays None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC)


def opt(text: str | None) -> str | None:
    """An unset string (``""`` in the model) as null."""
    return text or None


class View(msgspec.Struct, kw_only=True):
    """Base of every view: every field is printed, absent ones as null."""


# --- refusals ------------------------------------------------------------------------


class ErrorBody(View):
    """Why a command did not do what was asked.

    ``code`` is a daemon error code (``unknown_work``, ``lease_lost``...) or one of
    coordctl's own: ``usage``, ``unreachable``, ``nothing_pending``, ``ai_failed``,
    ``ai_declined``, ``timeout``. ``exit_status`` is coordctl's exit status for it.
    """

    code: str
    message: str
    exit_status: int
    fallbacks: list[Attempt] | None = None  # AI: each provider tried and why it failed
    raw: str | None = None  # AI: the answer that did not fit its schema


class ErrorView(View):
    error: ErrorBody


class Attempt(View):
    """One AI provider that was tried and could not answer."""

    provider: str
    reason: str
    detail: str


# --- work items ------------------------------------------------------------------------


class Dependency(View):
    """One item another waits for; ``met`` when it completed with result ``success``.
    ``status`` is null when the item is no longer kept (pruned after success)."""

    work_item_id: str
    status: str | None
    result: str | None
    met: bool


class ItemView(View):
    """A work item. ``blocked`` is derived: pending with a dependency not yet met
    (``waiting_on`` lists them with their status and result)."""

    work_item_id: str
    work_type: str
    description: str
    priority: str
    team: str | None
    status: str
    blocked: bool
    stale: bool
    agent_id: str | None
    lease: int
    progress: int
    stage: str | None
    after: list[str]
    waiting_on: list[Dependency]
    result: str | None
    velocity_points: int | None
    retry_count: int
    recoveries: int  # recoveries since an operator last put it back (dead letter past max)
    recovery_strategy: str | None  # of the last recovery: reassign, retry or fail
    recovery_reason: str | None
    recovered_from: str | None
    checkpoint: str | None  # the holder's note for whoever takes the item next
    stale_after_seconds: float | None
    created_at: datetime | None
    claimed_at: datetime | None
    last_heartbeat: datetime | None
    completed_at: datetime | None
    recovered_at: datetime | None
    stale_since: datetime | None


class ItemList(View):
    """Items; ``next_cursor`` is set when more follow (pass it back to get them)."""

    items: list[ItemView]
    next_cursor: str | None = None


def item_view(data: Any) -> ItemView:
    """The view of an item as the daemon sends it (a ``WorkItem``, as plain data or
    not, possibly with ``waiting_on``: its unmet dependencies)."""
    item = data if isinstance(data, WorkItem) else msgspec.convert(data, WorkItem)
    raw_waiting = data.get("waiting_on") if isinstance(data, dict) else None
    waiting = [msgspec.convert(w, Dependency) for w in raw_waiting or ()]
    return ItemView(
        work_item_id=item.work_item_id,
        work_type=item.work_type,
        description=item.description,
        priority=str(item.priority),
        team=opt(item.team),
        status=str(item.status),
        blocked=bool(waiting) and item.status == "pending",
        stale=item.stale_since is not None and item.status == "active",
        agent_id=item.agent_id,
        lease=item.lease,
        progress=item.progress,
        stage=item.stage,
        after=list(getattr(item, "after", None) or ()),
        waiting_on=waiting,
        result=item.result,
        velocity_points=item.velocity_points,
        retry_count=item.retry_count,
        recoveries=item.recoveries,
        recovery_strategy=item.recovery_strategy,
        recovery_reason=item.recovery_reason,
        recovered_from=item.recovered_from,
        checkpoint=opt(item.checkpoint),
        stale_after_seconds=item.stale_after,
        created_at=when(item.created_at or None),
        claimed_at=when(item.claimed_at),
        last_heartbeat=when(item.last_heartbeat),
        completed_at=when(item.completed_at),
        recovered_at=when(item.recovered_at),
        stale_since=when(item.stale_since),
    )


def item_list(data: Any) -> ItemList:
    """A ``list`` reply: a bare list of items, or ``{"items", "next_cursor"}``."""
    if isinstance(data, dict):
        return ItemList(
            items=[item_view(i) for i in data.get("items") or ()],
            next_cursor=data.get("next_cursor"),
        )
    return ItemList(items=[item_view(i) for i in data])


# --- agents ----------------------------------------------------------------------------


class AgentView(View):
    agent_id: str
    team: str | None
    specialization: str | None
    capacity: int
    status: str
    current_workload: int | None
    tasks_completed: int
    registered_at: datetime | None
    last_heartbeat: datetime | None


class AgentList(View):
    items: list[AgentView]
    next_cursor: str | None = None


def agent_view(data: Any) -> AgentView:
    agent = data if isinstance(data, Agent) else msgspec.convert(data, Agent)
    workload = data.get("current_workload") if isinstance(data, dict) else None
    return AgentView(
        agent_id=agent.agent_id,
        team=opt(agent.team),
        specialization=opt(agent.specialization),
        capacity=agent.capacity,
        status=agent.status,
        current_workload=workload,
        tasks_completed=agent.tasks_completed,
        registered_at=when(agent.registered_at or None),
        last_heartbeat=when(agent.last_heartbeat),
    )


def agent_list(data: Any) -> AgentList:
    rows = data.get("items") if isinstance(data, dict) else data
    return AgentList(items=[agent_view(a) for a in rows or ()])


# --- the daemon ------------------------------------------------------------------------


class Counts(View):
    """Items by status (``blocked`` and ``stale`` are part of pending and active)."""

    items: int
    pending: int
    blocked: int
    active: int
    stale: int
    completed: int
    failed: int
    agents: int


class SnapshotView(View):
    """The last snapshot (``count`` grows by one per snapshot written)."""

    count: int
    running: bool
    ok: bool | None
    reason: str | None
    at: datetime | None
    items: int | None
    bytes: int | None
    duration_seconds: float | None
    loop_blocked_seconds: float | None


class MetricsView(View):
    """The Prometheus endpoint: ``on``, or ``off`` with the reason (``disabled``:
    ``metrics_listen = ""``; ``address_in_use``: the default address was taken)."""

    state: Literal["on", "off"]
    listen: str | None
    reason: str | None


class StatusView(View):
    version: str
    protocol: int
    pid: int
    uptime_seconds: float
    health: str
    degraded_reason: str | None
    counts: Counts
    counters: dict[str, int]
    team_velocity: dict[str, int]
    stale_threshold_seconds: float
    recovery: str
    heartbeat_interval_seconds: float
    agent_endpoint: str
    control_socket: str
    events_endpoint: str
    state_dir: str
    coordination_dir: str
    snapshot: SnapshotView
    metrics: MetricsView
    ai: dict[str, float]
    # PostgreSQL store: "standby" while another coordd leads (its agent endpoint in
    # ``leader``); a leader names its own. The file store always leads.
    role: str = "leader"
    leader: str | None = None


def snapshot_view(d: dict[str, Any]) -> SnapshotView:
    return SnapshotView(
        count=int(d.get("count", 0)),
        running=bool(d.get("running", False)),
        ok=d.get("ok"),
        reason=opt(d.get("reason")),
        at=when(d.get("at")),
        items=d.get("items"),
        bytes=d.get("bytes"),
        duration_seconds=d.get("seconds"),
        loop_blocked_seconds=d.get("blocked"),
    )


def status_view(d: dict[str, Any]) -> StatusView:
    counts = {"blocked": 0, **d["counts"]}
    m = d.get("metrics") or {}
    return StatusView(
        version=d["version"],
        protocol=d["protocol"],
        pid=d["pid"],
        uptime_seconds=d["uptime"],
        health=d["health"],
        degraded_reason=opt(d.get("degraded_reason")),
        role=d.get("role", "leader"),
        leader=opt(d.get("leader")),
        counts=msgspec.convert(counts, Counts),
        counters=d["counters"],
        team_velocity=d["team_velocity"],
        stale_threshold_seconds=d["stale_threshold"],
        recovery=d["recovery"],
        heartbeat_interval_seconds=d["heartbeat_interval"],
        agent_endpoint=d["agent_endpoint"],
        control_socket=d["control_socket"],
        events_endpoint=d["events_endpoint"],
        state_dir=d["state_dir"],
        coordination_dir=d["coordination_dir"],
        snapshot=snapshot_view(d.get("snapshot") or {}),
        metrics=MetricsView(
            state=m.get("state", "off"), listen=opt(m.get("listen")), reason=m.get("reason")
        ),
        ai=d.get("ai") or {},
    )


class HeartbeatRefusal(View):
    work_item_id: str
    code: str
    message: str


class LostLease(View):
    """A lease the agent lost to a recovery since its last agent-level heartbeat."""

    work_item_id: str
    lease: int
    strategy: str
    reason: str
    new_holder: str | None


class HeartbeatView(View):
    """Items refreshed by one heartbeat, the ones refused (lost leases...), and for an
    agent-level heartbeat the leases lost since the last one (exit status 1 if any)."""

    refreshed: int
    errors: list[HeartbeatRefusal]
    lost: list[LostLease]


def heartbeat_view(d: dict[str, Any]) -> HeartbeatView:
    return HeartbeatView(
        refreshed=d.get("refreshed", 0),
        errors=[msgspec.convert(e, HeartbeatRefusal) for e in d.get("errors") or ()],
        lost=[
            LostLease(
                work_item_id=r["work_item_id"],
                lease=r["lease"],
                strategy=r["strategy"],
                reason=r["reason"],
                new_holder=r.get("new_holder"),
            )
            for r in d.get("lost") or ()
        ],
    )


class HeartbeaterView(View):
    """coordctl's detached heartbeater (``heartbeat-start``): its pid when running."""

    running: bool
    pid: int | None
    agent_id: str | None = None


class HeartbeaterList(View):
    """``heartbeat-stop``: the heartbeaters it stopped (none when none ran)."""

    items: list[HeartbeaterView]


# --- freshness -------------------------------------------------------------------------


class StaleEntry(View):
    work_item_id: str
    agent_id: str | None
    work_type: str
    description: str
    silent_seconds: float
    threshold_seconds: float
    strategy: str
    stale_since: datetime | None
    last_heartbeat: datetime | None


class RecoveredView(View):
    """One item recovered within the window: when, how, why, from whom, and who took it
    over since (``now_held_by``: the next holder after a reassign, even if it finished
    the item since, the same agent after a retry; null while nobody has, as after a
    fail). ``status`` is the item's status now."""

    work_item_id: str
    work_type: str
    description: str
    recovered_at: datetime
    strategy: str | None
    reason: str | None
    recovered_from: str | None
    now_held_by: str | None
    status: str
    recoveries: int


def recovered_views(d: dict[str, Any]) -> list[RecoveredView]:
    """The ``recovered`` list of a check-stale or freshness reply (none from an older
    daemon)."""
    return [
        RecoveredView(**{**r, "recovered_at": _at(r["recovered_at"])})
        for r in d.get("recovered") or ()
    ]


class StaleReport(View):
    """``check-stale``, and the file ``stale_work_report.json`` (the same JSON): the
    items stale now, and the ones recovered within ``recovered_window_seconds``."""

    generated_at: datetime
    stale_count: int
    items: list[StaleEntry]
    recovered_window_seconds: float | None  # null from a daemon that does not report them
    recovered_count: int
    recovered: list[RecoveredView]


def stale_entry(e: dict[str, Any]) -> StaleEntry:
    return StaleEntry(
        work_item_id=e["work_item_id"],
        agent_id=e.get("agent_id"),
        work_type=e["work_type"],
        description=e["description"],
        silent_seconds=e["silent_for"],
        threshold_seconds=e["threshold"],
        strategy=e["strategy"],
        stale_since=when(e.get("stale_since")),
        last_heartbeat=when(e.get("last_heartbeat")),
    )


def stale_report(d: dict[str, Any]) -> StaleReport:
    entries = [stale_entry(e) for e in d["stale"]]
    recovered = recovered_views(d)
    return StaleReport(
        generated_at=_at(d["now"]),
        stale_count=len(entries),
        items=entries,
        recovered_window_seconds=d.get("window"),
        recovered_count=len(recovered),
        recovered=recovered,
    )


class RecoveryView(View):
    """One recovery by ``recover-stale`` (``applied`` false on a dry run)."""

    work_item_id: str
    agent_id: str | None
    strategy: str
    silent_seconds: float
    threshold_seconds: float
    applied: bool


class RecoveryList(View):
    items: list[RecoveryView]


def recovery_list(rows: list[dict[str, Any]]) -> RecoveryList:
    return RecoveryList(
        items=[
            RecoveryView(
                work_item_id=r["work_item_id"],
                agent_id=r.get("agent_id"),
                strategy=r["strategy"],
                silent_seconds=r["silent_for"],
                threshold_seconds=r["threshold"],
                applied=r.get("applied", True),
            )
            for r in rows
        ]
    )


class DashboardRow(View):
    """One active item on the dashboard. ``freshness`` is ``fresh``,
    ``potentially_stale`` (silent past ``warn_ratio`` of its threshold) or ``stale``."""

    work_item_id: str
    agent_id: str | None
    work_type: str
    freshness: Literal["fresh", "potentially_stale", "stale"]
    silent_seconds: float
    threshold_seconds: float
    progress: int
    stage: str | None


class BlockedRow(View):
    """A blocked item on the dashboard and what it waits for (a failed dependency shows
    its status and result: the reason)."""

    work_item_id: str
    waiting_on: list[Dependency]


class DashboardView(View):
    """``freshness-dashboard``: counts, the active items worst first (silence over
    threshold), the blocked count, the heartbeater and the AI provider in use."""

    generated_at: datetime
    active: int
    fresh: int
    potentially_stale: int
    stale: int
    blocked: int
    warn_ratio: float
    stale_threshold_seconds: float
    recovery: str
    heartbeat_interval_seconds: float
    tick_interval_seconds: float
    items: list[DashboardRow]
    blocked_items: list[BlockedRow]
    recovered_window_seconds: float | None
    recovered_count: int
    recovered: list[RecoveredView]
    heartbeater: HeartbeaterView
    ai_provider: str | None


def dashboard_view(d: dict[str, Any], heartbeater: HeartbeaterView) -> DashboardView:
    dash = d["dashboard"]
    recovered = recovered_views(d)
    rows = dash.get("rows")
    if rows is None:  # an older daemon: only its stale items
        rows = [{**e, "freshness": "stale", "progress": 0} for e in dash["stale_items"]]
    return DashboardView(
        generated_at=_at(d["now"]),
        active=dash["active"],
        fresh=dash["fresh"],
        potentially_stale=dash["potentially_stale"],
        stale=dash["stale"],
        blocked=dash.get("blocked", 0),
        warn_ratio=dash["warn_ratio"],
        stale_threshold_seconds=d["stale_threshold"],
        recovery=d["recovery"],
        heartbeat_interval_seconds=d["heartbeat_interval"],
        tick_interval_seconds=d["tick_interval"],
        items=[
            DashboardRow(
                work_item_id=r["work_item_id"],
                agent_id=r.get("agent_id"),
                work_type=r["work_type"],
                freshness=r["freshness"],
                silent_seconds=r["silent_for"],
                threshold_seconds=r["threshold"],
                progress=r.get("progress", 0),
                stage=r.get("stage"),
            )
            for r in rows
        ],
        blocked_items=[msgspec.convert(b, BlockedRow) for b in dash.get("blocked_items") or ()],
        recovered_window_seconds=d.get("window"),
        recovered_count=len(recovered),
        recovered=recovered,
        heartbeater=heartbeater,
        ai_provider=d.get("ai_provider"),
    )


# --- AI --------------------------------------------------------------------------------


class AiResultView(View):
    """An AI analysis that answered. ``result`` has the analysis' own shape (see
    coordd/ai/analyses.py: ``PriorityAnswer``, ``TeamAnswer``, ``FreeAnswer``...)."""

    analysis: str
    provider: str | None
    model: str | None
    cached: bool
    retried: bool
    fallbacks: list[Attempt]
    dropped_ids: dict[str, int]
    elapsed_seconds: float
    generated_at: datetime | None
    saved_to: str | None
    result: dict[str, Any]


def ai_result_view(r: dict[str, Any]) -> AiResultView:
    return AiResultView(
        analysis=r["analysis"],
        provider=r.get("provider"),
        model=r.get("model"),
        cached=r.get("cached", False),
        retried=r.get("retried", False),
        fallbacks=[msgspec.convert(a, Attempt) for a in r.get("fallbacks") or ()],
        dropped_ids=r.get("dropped_ids") or {},
        elapsed_seconds=r.get("elapsed", 0.0),
        generated_at=when(r.get("generated_at") or None),
        saved_to=r.get("saved_to"),
        result=r.get("result") or {},
    )


class ClaimAdvice(View):
    """The AI's advice before ``claim-enhanced`` claims."""

    should_claim: bool
    suggested_priority: str
    reasoning: str
    provider: str | None
    model: str | None
    cached: bool


class ClaimEnhancedView(View):
    item: ItemView
    stale_count: int
    heartbeater: HeartbeaterView
    ai_recommendation: ClaimAdvice | None


class ProviderStatus(View):
    used: bool
    reachable: bool
    model: str | None
    model_installed: bool | None
    models: list[str] | None
    error: str | None
    detail: str | None


class CacheView(View):
    entries: int
    ttl_seconds: float


class AiStatusView(View):
    provider: str
    timeout_seconds: float
    providers: dict[str, ProviderStatus]
    analysis_models: dict[str, str]
    cache: CacheView
    counters: dict[str, float]
    checked_at: datetime | None


def ai_status_view(s: dict[str, Any]) -> AiStatusView:
    providers = {
        name: ProviderStatus(
            used=bool(p.get("used")),
            reachable=bool(p.get("reachable")),
            model=p.get("model"),
            model_installed=p.get("model_installed"),
            models=p.get("models"),
            error=opt(p.get("error")),
            detail=opt(p.get("detail")),
        )
        for name, p in (s.get("providers") or {}).items()
    }
    cache = s.get("cache") or {}
    return AiStatusView(
        provider=s["provider"],
        timeout_seconds=s["timeout"],
        providers=providers,
        analysis_models=s.get("analysis_models") or {},
        cache=CacheView(entries=cache.get("entries", 0), ttl_seconds=cache.get("ttl", 0.0)),
        counters=s.get("counters") or {},
        checked_at=when(s.get("checked_at")),
    )


# --- events and keys ---------------------------------------------------------------------


class EventView(View):
    """One published event (``coordctl events --json`` prints one per line)."""

    event: str
    at: datetime
    work_item_id: str | None
    agent_id: str | None
    lease: int | None
    detail: str | None


def event_view(ev: Event) -> EventView:
    return EventView(
        event=ev.event,
        at=_at(ev.at),
        work_item_id=ev.work_item_id,
        agent_id=ev.agent_id,
        lease=ev.lease,
        detail=ev.detail,
    )


class KeysView(View):
    """``keys list``: the server's public key and each allowed agent's key."""

    server: str
    allowed: dict[str, str]


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


# --- the schema ------------------------------------------------------------------------

# What each coordctl command prints under --json. A refusal is ``ErrorView`` for all.
OUTPUTS: dict[str, type[View]] = {
    "add": ItemView,
    "claim": ItemView,
    "claim-next": ItemView,
    "progress": ItemView,
    "complete": ItemView,
    "release": ItemView,
    "show": ItemView,
    "list": ItemList,
    "register": AgentView,
    "agents": AgentList,
    "status": StatusView,
    "snapshot": SnapshotView,
    "heartbeat": HeartbeatView,
    "heartbeat-start": HeartbeaterView,
    "heartbeat-stop": HeartbeaterList,
    "check-stale": StaleReport,
    "recover-stale": RecoveryList,
    "retry": ItemView,
    "freshness-dashboard": DashboardView,
    "claim-enhanced": ClaimEnhancedView,
    "ollama-priorities": AiResultView,
    "ollama-optimize": AiResultView,
    "ai-analyze": AiResultView,
    "ai-status": AiStatusView,
    "events": EventView,
    "keys list": KeysView,
}
# (``coordctl schema`` prints a JSON Schema document itself, not a view.)

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _strict(node: Any) -> Any:
    """Every field of a view is always printed: mark them all required and closed, so
    the schema catches a field that goes missing or one that is not declared."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if out.get("type") == "object" and "properties" in out:
            out["required"] = sorted(out["properties"])
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def schema_document() -> dict[str, Any]:
    """The whole published schema: every view under ``$defs``, and for each command
    the view its ``--json`` output is (``commands``) and the refusal (``error``)."""
    types = [ErrorView, *dict.fromkeys(OUTPUTS.values())]
    _, components = msgspec.json.schema_components(types, ref_template="#/$defs/{name}")
    commands = {
        name: {"$ref": f"#/$defs/{view.__name__}"} for name, view in sorted(OUTPUTS.items())
    }
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": "https://coordd.invalid/schema/coordctl.json",
        "title": "coordctl --json",
        "$defs": _strict(components),
        "commands": commands,
        "error": {"$ref": "#/$defs/ErrorView"},
    }


def command_schema(command: str) -> dict[str, Any]:
    """A standalone schema for one command's output: its view, or a refusal."""
    doc = schema_document()
    return {
        "$schema": SCHEMA_DIALECT,
        "title": f"coordctl {command} --json",
        "oneOf": [doc["commands"][command], doc["error"]],
        "$defs": doc["$defs"],
    }


def encode(view: msgspec.Struct) -> bytes:
    """A view as printed: indented JSON, keys in declaration order."""
    return msgspec.json.format(msgspec.json.encode(view), indent=2)


def _main(argv: list[str]) -> int:
    """``python -m coordd.views --write DIR``: (re)write the published schema files."""
    import json
    from pathlib import Path

    if len(argv) != 2 or argv[0] != "--write":
        print("usage: python -m coordd.views --write DIR")
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(schema_document(), indent=2, sort_keys=True) + "\n"
    (out / "coordctl.json").write_text(text)
    print(f"wrote {out / 'coordctl.json'}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
