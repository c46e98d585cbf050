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


def short_ids(ids: Sequence[str], min_tail: int = 6) -> dict[str, str]:
    """A unique short form of each id, as git abbreviates hashes: ``work_…7956633``.

    coordd's ids end in nanoseconds, so they differ at the end: the form keeps the
    prefix up to ``_`` and the shortest tail (at least ``min_tail`` characters) that
    tells the given ids apart. Every command taking an id accepts it back.
    """
    long_ids = [i for i in dict.fromkeys(ids) if len(i) > 16]
    out = {i: i for i in ids}
    tail = min_tail
    while long_ids:
        tails: dict[str, int] = {}
        for i in long_ids:
            tails[i[-tail:]] = tails.get(i[-tail:], 0) + 1
        settled = [i for i in long_ids if tails[i[-tail:]] == 1 or tail >= len(i) - 6]
        for i in settled:
            head, sep, _ = i.partition("_")
            prefix = head + sep if sep and len(head) <= 8 else ""
            out[i] = f"{prefix}…{i[-tail:]}" if len(i) - len(prefix) > tail + 1 else i
        long_ids = [i for i in long_ids if i not in set(settled)]
        tail += 1
    return out


def dependency_words(d: Any, name: str | None = None) -> str:
    """One unmet dependency in words: ``work_…12 (completed: failed)``, ``work_…9 (active)``."""
    name = name or d.work_item_id
    if d.status in ("completed", "failed"):
        return f"{name} ({d.status}: {d.result or '-'})"
    return f"{name} ({d.status or 'no longer kept'})"


def blocked_reason(i: Any) -> str:
    """Why a blocked item waits, in words: ``waits for work_…12 (completed: failed)``."""
    return "waits for " + ", ".join(dependency_words(d) for d in i.waiting_on)


def item_state(i: Any) -> str:
    """Status as people read it: blocked and stale are shown, though not stored."""
    if i.blocked:
        return "blocked"
    return i.status + (" (stale)" if i.stale else "")


def item_rows(items: Sequence[Any], now: float | None = None) -> str:
    short = short_ids([i.work_item_id for i in items])
    rows = [
        (
            short[i.work_item_id],
            item_state(i),
            i.priority,
            i.work_type,
            i.team,
            i.agent_id,
            f"{i.progress}%",
            age(_ts(i.last_heartbeat), now) if i.status == "active" else "-",
            i.description,
        )
        for i in items
    ]
    return table(
        ("ID", "STATUS", "PRIORITY", "TYPE", "TEAM", "AGENT", "PROG", "SILENT", "DESCRIPTION"),
        rows,
    )


def failed_rows(items: Sequence[Any]) -> str:
    """The dead-letter view (``list --status failed``): why each one failed."""
    short = short_ids([i.work_item_id for i in items])
    rows = [
        (
            short[i.work_item_id],
            i.work_type,
            i.result,
            i.recoveries,
            i.recovered_from or i.agent_id,
            i.recovery_reason,
            i.description,
        )
        for i in items
    ]
    return table(("ID", "TYPE", "RESULT", "RECOVERIES", "FROM", "REASON", "DESCRIPTION"), rows)


def _ts(dt: Any) -> float | None:
    return None if dt is None else float(dt.timestamp())


def item_detail(i: Any) -> str:
    fields: list[tuple[str, Any]] = [
        ("work_item_id", i.work_item_id),
        ("status", item_state(i)),
        ("blocked", blocked_reason(i) if i.blocked else None),
        ("after", ", ".join(i.after) or None),
        ("priority", i.priority),
        ("work_type", i.work_type),
        ("team", i.team),
        ("description", i.description),
        ("agent_id", i.agent_id),
        ("lease", i.lease),
        ("progress", i.progress),
        ("stage", i.stage),
        ("claimed_at", i.claimed_at),
        ("last_heartbeat", i.last_heartbeat),
        ("completed_at", i.completed_at),
        ("result", i.result),
        ("velocity_points", i.velocity_points),
        ("retry_count", i.retry_count),
        ("recovery_reason", i.recovery_reason),
        ("recovered_at", i.recovered_at),
        ("recovered_from", i.recovered_from),
        ("stale_since", i.stale_since),
        ("stale_after", None if i.stale_after_seconds is None else f"{i.stale_after_seconds:g}s"),
        ("created_at", i.created_at),
        ("recoveries", i.recoveries or None),
        ("recovery_strategy", i.recovery_strategy),
        ("checkpoint", i.checkpoint),
    ]
    lines = []
    width = max(len(key) for key, _ in fields) + 1  # the values line up
    for key, value in fields:
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            value = f"{iso(_ts(value))} ({age(_ts(value))} ago)"
        lines.append(f"{key + ':':{width}} {value}")
    return "\n".join(lines)
