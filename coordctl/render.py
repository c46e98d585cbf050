"""Output for people: short tables and one-line summaries. ``--json`` bypasses this."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any


def iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def age(ts: float | None, now: float | None = None) -> str:
    """How long ago, compactly: 42s, 5m03s, 2h10m, 3d4h."""
    if ts is None:
        return "-"
    return duration((now if now is not None else time.time()) - ts)


def ago(ts: float | None, now: float | None = None) -> str:
    """``5m03s ago``, or ``never`` when there is no time at all."""
    return "never" if ts is None else f"{age(ts, now)} ago"


def duration(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def item_rows(items: Sequence[dict[str, Any]], now: float | None = None) -> str:
    rows = [
        (
            i["work_item_id"],
            i["status"] + (" (stale)" if i.get("stale_since") and i["status"] == "active" else ""),
            i.get("priority"),
            i.get("work_type"),
            i.get("team") or "-",
            i.get("agent_id"),
            f"{i.get('progress', 0)}%",
            age(i.get("last_heartbeat"), now) if i["status"] == "active" else "-",
            i.get("description"),
        )
        for i in items
    ]
    return table(
        ("ID", "STATUS", "PRIORITY", "TYPE", "TEAM", "AGENT", "PROG", "SILENT", "DESCRIPTION"),
        rows,
    )


def item_detail(i: dict[str, Any]) -> str:
    order = (
        "work_item_id",
        "status",
        "priority",
        "work_type",
        "team",
        "description",
        "agent_id",
        "lease",
        "progress",
        "stage",
        "claimed_at",
        "last_heartbeat",
        "completed_at",
        "result",
        "velocity_points",
        "retry_count",
        "recovery_reason",
        "recovered_at",
        "recovered_from",
        "stale_since",
        "stale_after",
        "created_at",
    )
    times = {
        "claimed_at",
        "last_heartbeat",
        "completed_at",
        "recovered_at",
        "stale_since",
        "created_at",
    }
    lines = []
    for key in order:
        value = i.get(key)
        if value is None:
            continue
        if key in times:
            value = f"{iso(value)} ({age(value)} ago)"
        lines.append(f"{key + ':':17} {value}")
    for key, value in (i.get("legacy") or {}).items():
        lines.append(f"{key + ':':17} {value}  (legacy)")
    return "\n".join(lines)
