"""`make bench-quick` as a smoke check: it completes, writes a valid results.json and the
charts under the git-ignored bench/out/, and leaves every tracked file as it was.

The figures are not asserted (a noisy CI machine would make them flaky); the bench's
own targets are read in BENCHMARKS.md from a full `make bench`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.report import validate
from bench.run import all_steps

ROOT = Path(__file__).resolve().parents[2]


def _tree_state() -> str | None:
    """`git status` of the work tree (None outside a git checkout)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return None
    run = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    return run.stdout if run.returncode == 0 else None


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_make_bench_quick_writes_valid_results_and_leaves_the_tree_alone() -> None:
    out = ROOT / "bench" / "out"
    results = out / "results.json"
    results.unlink(missing_ok=True)
    committed = [ROOT / "BENCHMARKS.md", *ROOT.glob("BENCHMARKS-*.png")]
    before = {p: p.stat().st_mtime_ns for p in committed}
    tree = _tree_state()
    run = subprocess.run(
        ["make", "--no-print-directory", "bench-quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=380,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    data = json.loads(results.read_text())
    validate(data)
    names = {r["name"] for r in data}
    assert {"ref_raw_one_way", "s1_heartbeat_ingest_unbatched", "s8_rss_per_item"} <= names
    assert "wrote" in run.stdout
    # The committed figures and charts are a full run's: a quick run draws its own
    # charts under bench/out/ and touches neither them nor anything else tracked.
    assert {p: p.stat().st_mtime_ns for p in committed} == before
    assert _tree_state() == tree
    if any(r["params"].get("chart") for r in data) and "charts: matplotlib" not in run.stdout:
        assert list(out.glob("BENCHMARKS-*.png"))


def test_a_scenario_module_is_picked_up_by_name() -> None:
    """A helper's bench/scenario_<topic>.py joins the run by its STEPS alone."""
    names = [name for name, _ in all_steps()]
    assert names[:4] == ["ref_one_way", "ref_echo", "ref_fsync", "peer"]
    assert len(names) == len(set(names)), "two steps share a name"
    for mod in sorted((ROOT / "bench").glob("scenario_*.py")):
        text = mod.read_text()
        assert "STEPS" in text, f"{mod.name} has no STEPS"
