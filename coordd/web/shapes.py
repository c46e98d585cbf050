"""The JSON the page receives, in one module. Not coordd/views.py's views (what
``coordctl --json`` and the MCP tools print): the page is sent every change, to every
browser, several times a second, so its rows are compact (short keys, a description
cut to 300 characters) and its times are epoch seconds, from which the page computes
"silent for" with ``last_heard`` and the server's ``now`` sent with every view.
"""

from __future__ import annotations

from typing import Any

from coordd.core import rules
from coordd.core.model import WorkItem


def item_row(item: WorkItem, threshold: float) -> dict[str, Any]:
    """One row of the items table."""
    return {
        "id": item.work_item_id,
        "type": item.work_type,
        "description": item.description[:300],
        "team": item.team,
        "agent": item.agent_id,
        "priority": item.priority,
        "status": item.status,
        "progress": item.progress,
        "stage": item.stage,
        "last_heard": rules.last_heard(item),
        "threshold": threshold,
        "stale": item.stale_since is not None,
        "lease": item.lease,
        "retries": item.retry_count,
        "result": item.result,
    }


def agent_row(agent: dict[str, Any], held: int, first_held: list[str]) -> dict[str, Any]:
    """One row of the agents table (``agent`` as the daemon's ``agents`` reply has it)."""
    return {
        "id": agent.get("agent_id"),
        "team": agent.get("team", ""),
        "last_heartbeat": agent.get("last_heartbeat"),
        "held": held,
        "held_ids": first_held,
        "completed": agent.get("tasks_completed", 0),
    }


def event_row(
    name: str, at: float, work_item_id: str | None, agent_id: str | None, detail: str | None
) -> dict[str, Any]:
    """One line of the recent events."""
    return {"event": name, "at": at, "item": work_item_id, "agent": agent_id, "detail": detail}
