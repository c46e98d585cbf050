"""The old script's JSON files: import into coordd, export the same views back.

Import reads ``work_claims.json``, ``agent_status.json``, ``coordination_log.json``
and ``velocity_log.txt`` (never writing to them) and turns each row into journal
records applied to ``State``, so the import is as durable as any transition.
It is idempotent: an item, agent or completion already present (by
``work_item_id``, ``agent_id``, and ``(work_item_id, completed_at, agent_id)``) is
skipped.

Rules (also in the README, "Durability"):
- a status coordd does not know is kept as written in ``legacy_status`` and mapped:
  text containing "complet" or "done" -> completed; containing "fail" -> failed;
  otherwise active if the row names an agent, else pending. An "active" row without
  an agent becomes pending (nobody could ever heartbeat it);
- an unknown priority is kept in ``legacy_priority`` and mapped to medium;
- an item without ``last_heartbeat`` gets ``last_update``, else ``claimed_at``,
  else the import time (the old script's migration guide: the last sign of life);
- fields coordd has no use for are kept verbatim in ``legacy`` and written back;
- a completion's team is the row's ``team``, else its item's team, else the team
  of the ``velocity_log.txt`` line with the same time and points.

Export writes the three JSON files atomically in the old shape (ISO-8601 UTC
times, ``null`` where the old files had ``null``) plus coordd's own fields.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from coordd.core.model import (
    AddCompletion,
    Agent,
    Completion,
    PutAgent,
    PutItem,
    Record,
    WorkItem,
)
from coordd.core.state import State
from coordd.kinds import Priority, Status
from coordd.storage.files import write_atomic

CLAIMS = "work_claims.json"
AGENTS = "agent_status.json"
LOG = "coordination_log.json"
VELOCITY = "velocity_log.txt"
LEGACY_FILES = (CLAIMS, AGENTS, LOG, VELOCITY)

_ITEM_FIELDS = {f.name for f in msgspec.structs.fields(WorkItem)} - {"legacy"}
_AGENT_FIELDS = {f.name for f in msgspec.structs.fields(Agent)} - {"legacy"}
_COMPLETION_FIELDS = {f.name for f in msgspec.structs.fields(Completion)} - {"legacy"}
_TIME_FIELDS = {
    "claimed_at",
    "completed_at",
    "last_heartbeat",
    "recovered_at",
    "stale_since",
    "created_at",
    "registered_at",
}
# Derived on export, so never stored.
# (``heap_deadline``: index data older coordd versions wrote out; never a fact.)
_DERIVED = {"current_workload", "heap_deadline"}
_E = TypeVar("_E", Priority, Status)
_VELOCITY_LINE = re.compile(r"^(\S+): Team (\S+) \+(\d+) velocity points$")


class Summary(msgspec.Struct, kw_only=True):
    """What an import did, for a person: counts and one line per skip or mapping."""

    imported: dict[str, int] = {}
    already_present: dict[str, int] = {}
    mapped: list[str] = []
    skipped: list[str] = []
    files: list[str] = []

    def lines(self) -> list[str]:
        out = [f"read {', '.join(self.files) or 'no legacy files'}"]
        for kind in ("items", "agents", "completions"):
            out.append(
                f"{kind}: {self.imported.get(kind, 0)} imported,"
                f" {self.already_present.get(kind, 0)} already present"
            )
        out.append(f"mapped: {len(self.mapped)}")
        out += [f"  {m}" for m in self.mapped]
        out.append(f"skipped: {len(self.skipped)}")
        out += [f"  {s}" for s in self.skipped]
        return out


def has_legacy_files(directory: str | Path) -> bool:
    d = Path(directory)
    return any((d / name).is_file() for name in (CLAIMS, AGENTS, LOG))


# --- time ----------------------------------------------------------------------


def parse_time(value: Any) -> float | None:
    """ISO-8601 (the old files) or epoch seconds to epoch seconds; None if absent/bad."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        f = float(value)
        # A time must be one datetime can show back (year 1..9999): nan and inf cannot.
        return f if -62_135_596_800 <= f <= 253_402_300_799 else None
    if isinstance(value, str) and value:
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()
    return None


def format_time(value: float | None) -> str | None:
    """Epoch seconds to the old files' form, ``2025-06-16T06:38:08Z``: whole seconds,
    because users' ``jq`` scripts read these with ``fromdateiso8601``, which refuses a
    fraction. The fraction is dropped (rounded down), so a time read back from an export
    is the original less under one second, never later."""
    if value is None:
        return None
    return datetime.fromtimestamp(math.floor(value), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- import ----------------------------------------------------------------------


class _Importer:
    def __init__(self, state: State, now: float) -> None:
        self.state = state
        self.now = now
        self.summary = Summary(
            imported={"items": 0, "agents": 0, "completions": 0},
            already_present={"items": 0, "agents": 0, "completions": 0},
        )
        self.records: list[Record] = []
        self.lease_seq = state.lease_seq

    def apply(self, rec: Record) -> None:
        self.state.apply_record(rec)
        self.records.append(rec)

    def skip(self, source: str, index: int, why: str) -> None:
        self.summary.skipped.append(f"{source}[{index}]: {why}")

    def mapped(self, source: str, key: str, what: str) -> None:
        self.summary.mapped.append(f"{source} {key}: {what}")

    # --- work items ---

    def items(self, rows: list[Any]) -> None:
        self._keyed(CLAIMS, rows, "work_item_id", "items", self.state.items, self._item)

    def _keyed(
        self,
        source: str,
        rows: list[Any],
        key: str,
        kind: str,
        present: Mapping[str, Any],
        build: Callable[[dict[str, Any], str], WorkItem | Agent],
    ) -> None:
        """Import rows identified by ``key``; the ones already present are counted."""
        for n, row in enumerate(rows):
            if not isinstance(row, dict):
                self.skip(source, n, f"not an object ({type(row).__name__})")
                continue
            rid = row.get(key)
            if not isinstance(rid, str) or not rid:
                self.skip(source, n, f"no {key}")
                continue
            if rid in present:
                self.summary.already_present[kind] += 1
                continue
            built = build(row, rid)
            self.apply(PutItem(built) if isinstance(built, WorkItem) else PutAgent(built))
            self.summary.imported[kind] += 1

    def _item(self, row: dict[str, Any], wid: str) -> WorkItem:
        legacy = _extras(row, _ITEM_FIELDS)
        agent_id = _text_or_none(row.get("agent_id"))
        status = self._status(row.get("status"), agent_id, wid, legacy)
        raw_priority = row.get("priority")
        priority = _member(Priority, raw_priority)
        if priority is None:
            legacy["legacy_priority"] = raw_priority
            self.mapped(CLAIMS, wid, f"priority {raw_priority!r} -> medium")
            priority = Priority.MEDIUM
        claimed_at = parse_time(row.get("claimed_at"))
        last_heartbeat = (
            parse_time(row.get("last_heartbeat"))
            or parse_time(row.get("last_update"))
            or claimed_at
            or self.now
        )
        lease = _int(row.get("lease"), 0)
        if lease <= 0:
            self.lease_seq += 1
            lease = self.lease_seq
        self.lease_seq = max(self.lease_seq, lease)
        return WorkItem(
            work_item_id=wid,
            work_type=_text(row.get("work_type")),
            description=_text(row.get("description")),
            priority=priority,
            team=_text(row.get("team")),
            status=status,
            agent_id=agent_id,
            claimed_at=claimed_at,
            progress=min(100, max(0, _int(row.get("progress"), 0))),
            stage=_text_or_none(row.get("stage")),
            completed_at=parse_time(row.get("completed_at")),
            result=_text_or_none(row.get("result")),
            velocity_points=_int_or_none(row.get("velocity_points")),
            last_heartbeat=last_heartbeat,
            retry_count=_int(row.get("retry_count"), 0),
            recovery_reason=_text_or_none(row.get("recovery_reason")),
            recovered_at=parse_time(row.get("recovered_at")),
            recovered_from=_text_or_none(row.get("recovered_from")),
            lease=lease,
            stale_after=_float_or_none(row.get("stale_after")),
            stale_since=parse_time(row.get("stale_since")),
            created_at=parse_time(row.get("created_at")) or claimed_at or self.now,
            after=[str(d) for d in row["after"]] if isinstance(row.get("after"), list) else None,
            legacy=legacy or None,
        )

    def _status(self, raw: Any, agent_id: str | None, wid: str, legacy: dict[str, Any]) -> Status:
        known = _member(Status, raw)
        if known is not None and not (known == Status.ACTIVE and agent_id is None):
            return known
        status = map_status(raw, agent_id)
        legacy["legacy_status"] = raw
        self.mapped(CLAIMS, wid, f"status {_short(raw)!r} -> {status}")
        return status

    # --- agents ---

    def agents(self, rows: list[Any]) -> None:
        self._keyed(AGENTS, rows, "agent_id", "agents", self.state.agents, self._agent)

    def _agent(self, row: dict[str, Any], aid: str) -> Agent:
        legacy = _extras(row, _AGENT_FIELDS)
        metrics = row.get("performance_metrics")
        done = row.get("tasks_completed")
        if done is None and isinstance(metrics, dict):
            done = metrics.get("tasks_completed")
        return Agent(
            agent_id=aid,
            team=_text(row.get("team")),
            capacity=_int(row.get("capacity"), 100),
            specialization=_text(row.get("specialization")),
            status=_text(row.get("status")) or "active",
            last_heartbeat=parse_time(row.get("last_heartbeat")),
            registered_at=parse_time(row.get("registered_at")) or self.now,
            tasks_completed=_int(done, 0),
            legacy=legacy or None,
        )

    # --- completions ---

    def completions(self, rows: list[Any], velocity: dict[tuple[float, int], str]) -> None:
        seen = {(c.work_item_id, c.completed_at, c.agent_id) for c in self.state.completions}
        for n, row in enumerate(rows):
            if not isinstance(row, dict):
                self.skip(LOG, n, f"not an object ({type(row).__name__})")
                continue
            entry = self._completion(row, velocity)
            if entry is None:
                self.skip(LOG, n, "no work_item_id or no readable completed_at")
                continue
            key = (entry.work_item_id, entry.completed_at, entry.agent_id)
            if key in seen:
                self.summary.already_present["completions"] += 1
                continue
            seen.add(key)
            self.apply(AddCompletion(entry))
            self.summary.imported["completions"] += 1

    def _completion(
        self, row: dict[str, Any], velocity: dict[tuple[float, int], str]
    ) -> Completion | None:
        wid = row.get("work_item_id")
        at = parse_time(row.get("completed_at"))
        if not isinstance(wid, str) or not wid or at is None:
            return None
        points = _int(row.get("velocity_points"), 0)
        item = self.state.items.get(wid)
        team = _text(row.get("team")) or (item.team if item else "") or velocity.get((at, points))
        legacy = _extras(row, _COMPLETION_FIELDS)
        return Completion(
            work_item_id=wid,
            completed_at=at,
            agent_id=_text_or_none(row.get("agent_id")),
            result=_text(row.get("result")),
            velocity_points=points,
            team=team or "",
            legacy=legacy or None,
        )

    def velocity(self, lines: list[str], log_rows: list[Any]) -> dict[tuple[float, int], str]:
        """Team per (time, points) from velocity_log.txt; lines no completion matches
        are reported (velocity is counted from completions only)."""
        out: dict[tuple[float, int], str] = {}
        for n, line in enumerate(lines):
            m = _VELOCITY_LINE.match(line.strip())
            at = parse_time(m[1]) if m else None
            if m is None or at is None:
                if line.strip():
                    self.skip(VELOCITY, n, f"not a velocity line: {_short(line.strip())!r}")
                continue
            out[(at, int(m[3]))] = m[2]
        logged = {
            (parse_time(r.get("completed_at")), _int(r.get("velocity_points"), 0))
            for r in log_rows
            if isinstance(r, dict)
        }
        for n, line in enumerate(lines):
            m = _VELOCITY_LINE.match(line.strip())
            if m and (parse_time(m[1]), int(m[3])) not in logged:
                self.skip(
                    VELOCITY,
                    n,
                    f"+{m[3]} for {m[2]} at {m[1]} has no entry in {LOG}"
                    " (team velocity is counted from completions)",
                )
        return out


def map_status(raw: Any, agent_id: str | None) -> Status:
    """The documented rule for a status coordd does not know (see module docstring)."""
    text = str(raw).lower() if raw is not None else ""
    if "complet" in text or "done" in text:
        return Status.COMPLETED
    if "fail" in text:
        return Status.FAILED
    return Status.ACTIVE if agent_id else Status.PENDING


def _member(kind: type[_E], raw: Any) -> _E | None:
    """``raw`` as a member of ``kind`` when it is exactly one of its strings."""
    return kind(raw) if isinstance(raw, str) and raw in kind._value2member_map_ else None


def _read_json_list(path: Path, summary: Summary) -> list[Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    summary.files.append(path.name)
    try:
        data = json.loads(raw or b"[]")
    except ValueError as e:
        summary.skipped.append(f"{path.name}: not valid JSON ({e}); nothing read from it")
        return []
    if isinstance(data, dict):
        # Some old files were keyed by id; the values are the rows.
        data = list(data.values())
    if not isinstance(data, list):
        summary.skipped.append(f"{path.name}: not a JSON list; nothing read from it")
        return []
    return data


def import_dir(directory: str | Path, state: State, now: float) -> tuple[list[Record], Summary]:
    """Import the legacy files of ``directory`` into ``state``.

    Returns the records applied (for the journal) and a summary. The files are
    only read.
    """
    d = Path(directory)
    imp = _Importer(state, now)
    claims = _read_json_list(d / CLAIMS, imp.summary)
    agents = _read_json_list(d / AGENTS, imp.summary)
    log_rows = _read_json_list(d / LOG, imp.summary)
    lines: list[str] = []
    with contextlib.suppress(FileNotFoundError):
        lines = (d / VELOCITY).read_text(errors="replace").splitlines()
        imp.summary.files.append(VELOCITY)
    imp.items(claims)
    imp.agents(agents)
    imp.completions(log_rows, imp.velocity(lines, log_rows))
    state.rebuild_indexes()
    return imp.records, imp.summary


# --- export ------------------------------------------------------------------------

# The old files' keys, in the old order; the rest follows.
_OLD_ITEM_KEYS = (
    "work_item_id",
    "agent_id",
    "claimed_at",
    "work_type",
    "priority",
    "description",
    "status",
    "team",
)
_OLD_OPTIONAL = ("progress", "completed_at", "result")


def item_row(item: WorkItem) -> dict[str, Any]:
    full = _jsonable(msgspec.structs.asdict(item))
    row = {k: full[k] for k in _OLD_ITEM_KEYS}
    for k in _OLD_OPTIONAL:
        if full[k] is not None:
            row[k] = full[k]
    row.update(item.legacy or {})
    for k, v in full.items():
        if k not in row and k not in _DERIVED and k != "legacy" and v is not None:
            row[k] = v
    return row


def agent_row(agent: Agent, workload: int) -> dict[str, Any]:
    full = _jsonable(msgspec.structs.asdict(agent))
    legacy = dict(agent.legacy or {})
    metrics = legacy.pop("performance_metrics", None)
    row = {k: v for k, v in full.items() if k != "legacy" and v is not None}
    row["current_workload"] = workload
    row.update(legacy)
    if isinstance(metrics, dict):
        row["performance_metrics"] = {**metrics, "tasks_completed": agent.tasks_completed}
    elif metrics is not None:
        row["performance_metrics"] = metrics
    return row


def completion_row(entry: Completion) -> dict[str, Any]:
    full = _jsonable(msgspec.structs.asdict(entry))
    row = {k: v for k, v in full.items() if k != "legacy"}
    row.update(entry.legacy or {})
    return row


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (format_time(v) if k in _TIME_FIELDS else v) for k, v in d.items()}


def export_dir(directory: str | Path, state: State) -> None:
    """Write the three JSON views atomically in ``directory`` (old shape + new fields)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    views: Iterable[tuple[str, list[dict[str, Any]]]] = (
        (CLAIMS, [item_row(i) for i in state.items.values()]),
        (AGENTS, [agent_row(a, state.workload(a.agent_id)) for a in state.agents.values()]),
        (LOG, [completion_row(c) for c in state.completions]),
    )
    for name, rows in views:
        write_atomic(d / name, json.dumps(rows, indent=2, ensure_ascii=False).encode())


# --- small conversions ---------------------------------------------------------------


def _extras(row: dict[str, Any], known: set[str]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in known and k not in _DERIVED}


def _text(v: Any) -> str:
    return v if isinstance(v, str) else ("" if v is None else str(v))


def _text_or_none(v: Any) -> str | None:
    return None if v is None or v == "" else _text(v)


# What an imported number may be: msgpack's signed 64 bits, so every reply and the
# journal can carry it (the old files are JSON, which holds any integer, and Python's
# json reads ``Infinity`` and ``NaN``).
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


def _int(v: Any, default: int) -> int:
    if isinstance(v, bool):
        return default
    if isinstance(v, int):
        return min(_INT_MAX, max(_INT_MIN, v))
    if isinstance(v, float | str):
        try:
            return min(_INT_MAX, max(_INT_MIN, int(float(v))))
        except (ValueError, OverflowError):  # "abc", inf, nan
            return default
    return default


def _int_or_none(v: Any) -> int | None:
    return None if v is None else _int(v, 0)


def _float_or_none(v: Any) -> float | None:
    """A finite, positive number of seconds (``stale_after``), else None (the default)."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        f = float(v)
        return f if 0 < f < math.inf else None
    return None


def _short(v: Any, n: int = 60) -> str:
    text = str(v)
    return text if len(text) <= n else text[: n - 3] + "..."
