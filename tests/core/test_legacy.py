"""Import of the old script's files and export back, on the real sample files."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import msgspec
import pytest

from coordd import legacy
from coordd.core.state import State
from coordd.storage.store import FileStore
from tests.core.storage_helpers import view

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "legacy-samples"
CLAIM_FILES = sorted(p.name for p in SAMPLES.glob("work_claims*.json"))
NOW = 1_760_000_000.0


def sample_dir(tmp_path: Path, claims: str) -> Path:
    """A COORDINATION_DIR as the old script left it, with one of the claims samples."""
    d = tmp_path / "old"
    d.mkdir(parents=True)
    for name in ("agent_status.json", "coordination_log.json", "velocity_log.txt"):
        shutil.copy(SAMPLES / name, d / name)
    shutil.copy(SAMPLES / claims, d / legacy.CLAIMS)
    return d


def checksums(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def rows(path: Path) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(path.read_text())
    return data


@pytest.mark.parametrize("claims", CLAIM_FILES)
def test_every_sample_imports_every_row(tmp_path: Path, claims: str) -> None:
    d = sample_dir(tmp_path, claims)
    before = checksums(d)
    st = State()
    records, summary = legacy.import_dir(d, st, NOW)
    assert checksums(d) == before  # the source files are never modified
    assert len(st.items) == len(rows(SAMPLES / claims)) == summary.imported["items"]
    assert len(st.agents) == len(rows(SAMPLES / "agent_status.json"))
    assert len(st.completions) == len(rows(SAMPLES / "coordination_log.json"))
    assert records  # the import is journal records, like any transition
    text = "\n".join(summary.lines())
    assert "items: " in text and "skipped: " in text
    # the one line of velocity_log.txt that is not a velocity line is named
    assert any("not a velocity line" in s for s in summary.skipped)
    for item in st.items.values():
        assert item.last_heartbeat is not None
        assert item.status in ("pending", "active", "completed", "failed")


def test_unexpected_statuses_are_kept_as_written_and_mapped_by_the_rule(tmp_path: Path) -> None:
    st = State()
    _, summary = legacy.import_dir(
        sample_dir(tmp_path, "work_claims_20250616_004642.json"), st, NOW
    )
    odd = [i for i in st.items.values() if i.legacy and "legacy_status" in i.legacy]
    assert {i.legacy["legacy_status"] for i in odd if i.legacy} == {"in_progress"}
    assert all(i.status == "active" and i.agent_id for i in odd)
    assert sum("'in_progress' -> active" in m for m in summary.mapped) == 2
    st2 = State()
    legacy.import_dir(sample_dir(tmp_path / "b", "work_claims_20250616_002528.json"), st2, NOW)
    free_text = [i for i in st2.items.values() if i.legacy and "legacy_status" in i.legacy]
    assert len(free_text) == 1 and free_text[0].status == "completed"
    assert free_text[0].legacy and free_text[0].legacy["legacy_status"].startswith(
        "Completed bench"
    )


@pytest.mark.parametrize(
    ("raw", "agent", "status"),
    [
        ("in_progress", "a1", "active"),
        ("in_progress", None, "pending"),
        ("Completed benchmark test cleanup", "a1", "completed"),
        ("done", None, "completed"),
        ("FAILED: timeout", "a1", "failed"),
        (None, None, "pending"),
        ("active", None, "pending"),
    ],
)
def test_status_mapping_rule(raw: Any, agent: str | None, status: str) -> None:
    assert legacy.map_status(raw, agent) == status


def test_nulls_missing_fields_and_the_last_heartbeat_rule(tmp_path: Path) -> None:
    d = tmp_path / "old"
    d.mkdir()
    (d / legacy.CLAIMS).write_text(
        json.dumps(
            [
                {"work_item_id": "w_update", "agent_id": "a", "status": "active",
                 "claimed_at": "2025-06-16T06:00:00Z", "last_update": "2025-06-16T06:30:00Z"},
                {"work_item_id": "w_claimed", "agent_id": "a", "status": "active",
                 "claimed_at": "2025-06-16T06:00:00Z"},
                {"work_item_id": "w_nothing", "agent_id": None, "claimed_at": None,
                 "status": "pending", "priority": "test"},
                {"agent_id": "no id"},
                "not an object",
            ]
        )
    )  # fmt: skip
    st = State()
    _, summary = legacy.import_dir(d, st, NOW)
    assert st.items["w_update"].last_heartbeat == legacy.parse_time("2025-06-16T06:30:00Z")
    assert st.items["w_claimed"].last_heartbeat == legacy.parse_time("2025-06-16T06:00:00Z")
    assert st.items["w_nothing"].last_heartbeat == NOW
    nothing = st.items["w_nothing"]
    assert nothing.priority == "medium" and nothing.legacy == {"legacy_priority": "test"}
    assert len(summary.skipped) == 2 and "no work_item_id" in summary.skipped[0]
    assert [i.work_item_id for i in st.select(status="pending")] == ["w_nothing"]
    assert st.workload("a") == 2


def test_importing_twice_adds_nothing_twice(tmp_path: Path) -> None:
    d = sample_dir(tmp_path, "work_claims.json")
    st = State()
    legacy.import_dir(d, st, NOW)
    first = view(st)
    records, summary = legacy.import_dir(d, st, NOW + 100)
    assert records == []
    assert summary.imported == {"items": 0, "agents": 0, "completions": 0}
    assert summary.already_present["completions"] == len(st.completions)
    assert view(st) == first


def test_an_import_through_the_store_survives_a_restart(tmp_path: Path) -> None:
    st = State()
    records, _ = legacy.import_dir(sample_dir(tmp_path, "work_claims.json"), st, NOW)
    store = FileStore(tmp_path / "state")
    (tmp_path / "state").mkdir()
    store.load(State())
    store.append(records)
    store.close()
    again = State()
    FileStore(tmp_path / "state").load(again)
    assert view(again) == view(st)


@pytest.mark.parametrize("claims", CLAIM_FILES)
def test_export_then_fresh_import_gives_the_same_state(tmp_path: Path, claims: str) -> None:
    st = State()
    legacy.import_dir(sample_dir(tmp_path, claims), st, NOW)
    out = tmp_path / "exported"
    legacy.export_dir(out, st)
    again = State()
    _, summary = legacy.import_dir(out, again, NOW + 3600)
    assert summary.skipped == [] and summary.mapped == []
    assert view(again) == view(st)


def test_export_keeps_the_old_shape_for_jq_scripts(tmp_path: Path) -> None:
    st = State()
    legacy.import_dir(sample_dir(tmp_path, "work_claims.json"), st, NOW)
    out = tmp_path / "exported"
    legacy.export_dir(out, st)
    old = {r["work_item_id"]: r for r in rows(SAMPLES / "work_claims.json")}
    new = {r["work_item_id"]: r for r in rows(out / legacy.CLAIMS)}
    assert old.keys() == new.keys()
    for wid, o in old.items():
        n = new[wid]
        # every old key is there with the old value (times in the same ISO form,
        # nulls still null); coordd's own fields come in addition. A mapped status or
        # priority shows coordd's value, the one written before is in legacy_<key>.
        for key in ("status", "priority"):
            if f"legacy_{key}" in n:
                assert n[f"legacy_{key}"] == o[key]
                n = {**n, key: o[key]}
        assert {k: n[k] for k in o} == o, wid
    agents_old = {r["agent_id"]: r for r in rows(SAMPLES / "agent_status.json")}
    for a in rows(out / legacy.AGENTS):
        o = agents_old[a["agent_id"]]
        # current_workload is live: what coordd holds for the agent now
        assert isinstance(a["current_workload"], int)
        assert {k: a[k] for k in o if k != "current_workload"} == {
            k: v for k, v in o.items() if k != "current_workload"
        }
    log_old = rows(SAMPLES / "coordination_log.json")
    log_new = rows(out / legacy.LOG)
    assert [{k: n[k] for k in o} for o, n in zip(log_old, log_new, strict=True)] == log_old
    assert msgspec.json.decode((out / legacy.CLAIMS).read_bytes())  # plain JSON


def test_times_round_trip_in_the_old_form() -> None:
    assert legacy.format_time(legacy.parse_time("2025-06-16T06:38:08Z")) == "2025-06-16T06:38:08Z"
    # Whole seconds, as the old script wrote them: jq's fromdateiso8601 refuses a fraction.
    assert legacy.format_time(1750055888.25) == "2025-06-16T06:38:08Z"
    assert legacy.format_time(1750055888.999999) == "2025-06-16T06:38:08Z"
    assert legacy.parse_time("yesterday") is None and legacy.format_time(None) is None
    assert legacy.parse_time(float("inf")) is None and legacy.parse_time(float("nan")) is None


def _times_floored(v: dict[str, Any]) -> dict[str, Any]:
    """A view with every time rounded down to the second (what the legacy files keep)."""

    def floor(d: dict[str, Any]) -> dict[str, Any]:
        return {
            k: (float(int(x)) if k in legacy._TIME_FIELDS and isinstance(x, float) else x)
            for k, x in d.items()
        }

    return {
        **v,
        "items": {k: floor(i) for k, i in v["items"].items()},
        "agents": {k: floor(a) for k, a in v["agents"].items()},
        "completions": [floor(c) for c in v["completions"]],
    }


def test_export_import_of_coordd_times_is_exact_but_below_one_second(tmp_path: Path) -> None:
    # Finding 7: coordd's own times carry fractions the legacy files do not keep.
    st = State()
    t = NOW + 0.987654321
    a = st.claim("a1", "build", "fractional", t, team="core")
    st.heartbeat("a1", t + 1.5)
    st.complete(a.work_item_id, t + 2.25, "a1", a.lease, velocity=5)
    st.claim("a2", "build", "still active", t + 3.75, stale_after=125.5)
    out = tmp_path / "exported"
    legacy.export_dir(out, st)
    for row in rows(out / legacy.CLAIMS):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row["claimed_at"])
    again = State()
    _, summary = legacy.import_dir(out, again, NOW + 3600)
    assert summary.skipped == []
    assert view(again) == _times_floored(view(st))
