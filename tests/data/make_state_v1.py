"""How tests/data/state-v1/ was made: run once with the code of the release before
format 2 (main at d1c6e53, journal v1 frames + snapshot document v1), e.g.

    PYTHONPATH=/path/to/old/checkout python tests/data/make_state_v1.py tests/data/state-v1

It writes a state directory through that code's FileStore (a snapshot, then a journal
of the next generation holding ~20 records: items in every status, agents,
completions, a description with quotes and unicode, items imported from the legacy
samples with their verbatim ``legacy`` fields) and ``expected.json``: what the old
code itself loads back from it, field for field. It is kept for the record; today's
code cannot write format 1, so the test only reads the files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import msgspec

from coordd import legacy
from coordd.core.state import State
from coordd.storage.store import FileStore

T0 = 1_750_000_000.0
SAMPLES = Path(__file__).parent / "legacy-samples"


def dump(st: State) -> dict[str, object]:
    return {
        "items": msgspec.to_builtins(st.items),
        "agents": msgspec.to_builtins(st.agents),
        "completions": msgspec.to_builtins(st.completions),
        "team_velocity": st.team_velocity,
        "lease_seq": st.lease_seq,
    }


def _few_samples(out: Path) -> Path:
    """The first rows of each legacy sample (enough for the verbatim ``legacy`` fields)."""
    out.mkdir()
    for name in ("work_claims.json", "agent_status.json", "coordination_log.json"):
        rows = json.loads((SAMPLES / name).read_text())
        (out / name).write_text(json.dumps(rows[:4] if isinstance(rows, list) else rows))
    lines = (SAMPLES / "velocity_log.txt").read_text().splitlines()[:4]
    (out / "velocity_log.txt").write_text("\n".join(lines) + "\n")
    return out


def scenario(d: Path) -> None:
    st, store = State(), FileStore(d)
    store.load(st)
    records, _ = legacy.import_dir(_few_samples(d / "legacy-in"), st, T0)
    store.append(records)

    def step() -> None:
        store.append(st.drain()[0])

    st.register("ana", T0 + 1, team="core", capacity=3, specialization="büild")
    step()
    st.register("bo", T0 + 2, team="web")
    step()
    a = st.claim(
        "ana", "build", 'say "hi" — naïve ✓ 日本語', T0 + 3, team="core", work_item_id="w-quote"
    )
    step()
    st.add("test", "pending one", T0 + 4, priority="high", team="web", work_item_id="w-pend")
    step()
    # The snapshot covers what came before; the journal of the next generation the rest.
    store.snapshot(st, T0 + 5)
    st.heartbeat("ana", T0 + 6, work_item_id=a.work_item_id, lease=a.lease, progress=40)
    step()
    st.progress(a.work_item_id, 55, T0 + 7, agent_id="ana", lease=a.lease, stage="línk")
    step()
    b = st.claim(
        "bo", "deploy", "done soon", T0 + 8, team="web", work_item_id="w-done", stale_after=90.0
    )
    step()
    st.complete(b.work_item_id, T0 + 9, "bo", b.lease, result="success", velocity=5)
    step()
    c = st.claim("bo", "deploy", "will fail", T0 + 10, team="web", work_item_id="w-fail")
    step()
    st.mark_stale(c, T0 + 11)
    st.recover_fail(c, T0 + 12, "silent 600s")
    step()
    d_ = st.claim("ana", "review", "released", T0 + 13, team="core", work_item_id="w-rel")
    step()
    st.release(d_.work_item_id, T0 + 14, "ana", d_.lease)
    step()
    e = st.claim("ana", "review", "reassigned", T0 + 15, team="core", work_item_id="w-reas")
    step()
    st.recover_reassign(e, T0 + 16, "agent gone")
    step()
    f = st.claim("bo", "review", "retried", T0 + 17, team="web", work_item_id="w-retry")
    step()
    st.recover_retry(f, T0 + 18, "stuck")
    step()
    for k in range(4):
        g = st.claim("ana", "build", f"batch {k}", T0 + 20 + k, team="core", work_item_id=f"w-b{k}")
        step()
        if k % 2:
            st.complete(g.work_item_id, T0 + 20.5 + k, "ana", g.lease, velocity=k)
            step()
    st.register("cy", T0 + 30, team="ops", capacity=1)
    step()
    store.close()


def main() -> None:
    d = Path(sys.argv[1])
    d.mkdir(parents=True, exist_ok=True)
    scenario(d)
    (d / "coordd.lock").unlink(missing_ok=True)
    for f in (d / "legacy-in").iterdir():
        f.unlink()
    (d / "legacy-in").rmdir()
    st, store = State(), FileStore(d)
    report = store.load(st)
    store.close()
    (d / "coordd.lock").unlink(missing_ok=True)
    assert report.snapshot and report.records >= 20, report
    out = dump(st)
    out["journal_records_after_snapshot"] = report.records
    (d / "expected.json").write_text(
        json.dumps(out, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    )


if __name__ == "__main__":
    main()
