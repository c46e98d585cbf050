"""A state directory written by the release before format 2 (tests/data/state-v1, made
by tests/data/make_state_v1.py with that release's code) loads with nothing lost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import msgspec
import pytest
from structlog.testing import capture_logs

from coordd.core.model import Agent, WorkItem
from coordd.core.state import State
from coordd.storage import snapshot, wal
from coordd.storage.fsck import fsck
from coordd.storage.store import FileStore

FIXTURE = Path(__file__).parents[1] / "data" / "state-v1"


def dump(st: State) -> dict[str, Any]:
    """The fixture's expected.json shape, through JSON (as that file went)."""
    out = {
        "items": msgspec.to_builtins(st.items),
        "agents": msgspec.to_builtins(st.agents),
        "completions": msgspec.to_builtins(st.completions),
        "team_velocity": st.team_velocity,
        "lease_seq": st.lease_seq,
    }
    result: dict[str, Any] = json.loads(json.dumps(out))
    return result


def expected() -> dict[str, Any]:
    exp: dict[str, Any] = json.loads((FIXTURE / "expected.json").read_text())
    exp.pop("journal_records_after_snapshot")
    # A field added to the model since format 1 (optional, with a default: the shared
    # rule for new fields) loads as that default from the old files.
    for kind, table in ((WorkItem, exp["items"]), (Agent, exp["agents"])):
        for row in table.values():
            for f in msgspec.structs.fields(kind):
                if f.name not in row and f.default is not msgspec.NODEFAULT:
                    row[f.name] = msgspec.to_builtins(f.default)
    return exp


@pytest.fixture
def d(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    for name in ("snapshot.json", "journal.wal"):
        shutil.copy(FIXTURE / name, d / name)
    return d


def _load(d: Path) -> tuple[State, list[dict[str, Any]]]:
    st, store = State(), FileStore(d)
    with capture_logs() as logs:
        store.load(st)
    store.close()
    return st, logs


def test_the_fixture_covers_every_status_agents_completions_and_unicode() -> None:
    exp = expected()
    statuses = {i["status"] for i in exp["items"].values()}
    assert statuses == {"pending", "active", "completed", "failed"}
    assert exp["agents"] and exp["completions"] and exp["team_velocity"]
    assert any(i["legacy"] for i in exp["items"].values())
    assert exp["items"]["w-quote"]["description"] == 'say "hi" — naïve ✓ 日本語'
    doc = json.loads((FIXTURE / "snapshot.json").read_text())
    assert doc["version"] == 1  # written by format 1
    assert (FIXTURE / "journal.wal").read_bytes()[8:12] == b"\0\0\0\1"


def test_a_format_1_directory_loads_field_for_field_and_is_written_once_in_format_2(
    d: Path,
) -> None:
    originals = {n: (d / n).read_bytes() for n in ("snapshot.json", "journal.wal")}
    st, logs = _load(d)
    assert dump(st) == expected()
    (event,) = [e for e in logs if e["event"] == "state_upgraded"]
    assert event["from_format"] == 1 and event["to_format"] == 2
    copy = Path(event["copy"])
    assert {n: (copy / n).read_bytes() for n in originals} == originals
    # now format 2 on disk, and a second start reads it without upgrading again
    assert not (d / "snapshot.json").exists()
    snap = snapshot.read_snapshot(d / snapshot.SNAPSHOT_NAME)
    assert snap is not None and snap.version == 2
    scan = wal.read_wal(d / wal.WAL_NAME)
    assert scan is not None and scan.version == 2
    again, logs = _load(d)
    assert dump(again) == expected()
    assert not [e for e in logs if e["event"] == "state_upgraded"]
    assert fsck(d, repair=False, now=0.0).clean


def test_an_upgrade_interrupted_before_its_snapshot_is_redone_with_nothing_lost(
    d: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*_a: Any, **_k: Any) -> int:
        raise OSError("power cut")

    monkeypatch.setattr("coordd.storage.store.write_snapshot", crash)
    with pytest.raises(OSError, match="power cut"):
        _load(d)
    monkeypatch.undo()
    # the journal is already format 2 (its format-1 self kept as the previous
    # generation); the snapshot still format 1
    assert (d / "snapshot.json").exists() and (d / wal.WAL_PREV_NAME).exists()
    st, logs = _load(d)
    assert dump(st) == expected()
    assert [e for e in logs if e["event"] == "state_upgraded"]
