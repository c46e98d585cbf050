"""The Prometheus endpoint after a scripted scenario."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from coordd import protocol
from tests.conftest import CoorddProcess


def _port(d: CoorddProcess) -> int:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for line in d.log().splitlines():
            if '"metrics_listening"' in line:
                return int(json.loads(line)["port"])
        time.sleep(0.02)
    raise AssertionError(f"no metrics_listening line:\n{d.log()}")


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_scrape_after_a_scenario_shows_the_right_counts(coordd_factory: Any) -> None:
    d: CoorddProcess = coordd_factory(
        {
            "metrics_listen": "127.0.0.1:0",
            "log_format": "json",
            "stale_threshold": 30,
            "tick_interval": 0.05,
        }
    )
    port = _port(d)
    a = d.agent()
    claims = [
        d.request(a, protocol.Claim(agent_id="a1", work_type="t", description=f"d{n}", **kw)).data
        for n, kw in enumerate([{"stale_after": 0.3}, {}, {}])
    ]
    doomed, kept, done = claims
    for _ in range(2):
        r = d.request(
            a,
            protocol.Heartbeat(
                agent_id="a1", work_item_id=kept["work_item_id"], lease=kept["lease"], ack=True
            ),
        )
        assert isinstance(r, protocol.Ok)
    d.request(a, protocol.Complete(agent_id="a1", work_item_id=done["work_item_id"]))

    # ``doomed`` (0.3 s threshold) goes stale and is reassigned; its old holder is refused.
    deadline = time.monotonic() + 5
    while d.call(protocol.Show(work_item_id=doomed["work_item_id"]))["status"] != "pending":
        assert time.monotonic() < deadline, "the item was never recovered"
        time.sleep(0.05)
    r = d.request(
        a,
        protocol.Complete(
            agent_id="a1", work_item_id=doomed["work_item_id"], lease=doomed["lease"]
        ),
    )
    assert isinstance(r, protocol.Error) and r.code == "lease_lost"

    expected = {
        ("coordd_claims_total", ()): 3,
        ("coordd_heartbeats_total", ()): 2,
        ("coordd_completions_total", ()): 1,
        ("coordd_stale_detected_total", ()): 1,
        ("coordd_lease_refused_total", ()): 1,
        ("coordd_recoveries_total", (("strategy", "reassign"),)): 1,
        ("coordd_recoveries_total", (("strategy", "retry"),)): 0,
        ("coordd_active_items", ()): 1,
        ("coordd_pending_items", ()): 1,
        ("coordd_stale_items", ()): 0,
        ("coordd_agents", ()): 1,
        ("coordd_items", (("status", "completed"),)): 1,
    }
    # The endpoint shows the state as of the last tick (every 0.05 s here).
    deadline = time.monotonic() + 5
    while True:
        got = _scrape(port)
        seen = {k: got.get(k) for k in expected}
        if seen == expected or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert seen == expected
    assert got[("coordd_tick_duration_seconds_count", ())] > 0
    assert ("coordd_snapshot_duration_seconds_count", ()) in got
    assert ("coordd_journal_fsync_seconds_count", ()) in got
    assert d.stop() == 0


def test_metrics_off_with_an_empty_listen(coordd: CoorddProcess) -> None:
    # The shared fixture sets metrics_listen = "": nothing listens, nothing is logged.
    assert "metrics_listening" not in coordd.log()


def test_an_unusable_metrics_address_stops_the_start(coordd_factory: Any) -> None:
    d: CoorddProcess = coordd_factory({"metrics_listen": "nonsense"}, start=False)
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(15) == 1
    assert "cannot serve metrics on nonsense" in d.log()
