"""`make bench-quick` as a smoke check: it completes and writes a valid results.json.

The figures are not asserted (a noisy CI machine would make them flaky); the bench's
own targets are read in BENCHMARKS.md from a full `make bench`.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bench.report import validate

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_make_bench_quick_writes_valid_results() -> None:
    results = ROOT / "bench" / "results.json"
    results.unlink(missing_ok=True)
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
