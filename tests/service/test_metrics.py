"""The Prometheus endpoint after a scripted scenario."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from coordd import protocol
from tests.ai.standins import Ollama
from tests.conftest import CoorddProcess
from tests.helpers import wait_for


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
            "heartbeat_interval": 0.1,  # so a 0.3 s stale_after is accepted (issue 15)
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
    assert d.stop() == 0


def test_snapshot_fsync_and_ai_durations_are_observed_when_they_happen(
    coordd_factory: Any,
) -> None:
    ollama = Ollama()
    try:
        d: CoorddProcess = coordd_factory(
            {
                "metrics_listen": "127.0.0.1:0",
                "log_format": "json",
                "fsync": "always",
                "snapshot_interval": 3600,  # only the snapshot this test asks for
                "ollama_host": ollama.url,
                "ai_timeout": 5,
            }
        )
        port = _port(d)
        before = _scrape(port)
        fsyncs = ("coordd_journal_fsync_seconds_count", ())
        snaps = ("coordd_snapshot_duration_seconds_count", ())
        ai_ok = ("coordd_ai_requests_total", (("outcome", "ok"), ("provider", "ollama")))
        ai_seconds = ("coordd_ai_request_duration_seconds_count", (("provider", "ollama"),))
        assert before.get(snaps, 0) == 0 and before.get(ai_ok, 0) == 0

        # Five acknowledged transitions, each its own batch: five group commits at least.
        ids = [
            d.call(protocol.Claim(agent_id="a1", work_type="t", description=f"d{n}"))
            for n in range(3)
        ]
        for item in ids[:2]:
            d.call(protocol.Complete(agent_id="a1", work_item_id=item["work_item_id"]))
        after_commits = _scrape(port)
        assert after_commits[fsyncs] - before.get(fsyncs, 0) >= 5
        assert after_commits[("coordd_journal_fsync_seconds_sum", ())] > 0

        # One snapshot through the CLI, counted once it is written.
        assert d.ctl("snapshot").returncode == 0
        wait_for(lambda: d.call(protocol.Status())["snapshot"]["count"] >= 1)
        assert _scrape(port)[snaps] == 1

        # One analysis answered by the stand-in Ollama: one request, labelled.
        ollama.queue(("text", json.dumps({"recommendations": [], "bottlenecks": []})))
        r = d.ctl("ollama-priorities", "--json")
        assert r.returncode == 0, r.stderr
        got = _scrape(port)
        assert got[ai_ok] == 1 and got[ai_seconds] == 1
        others = [k for k, v in got.items() if k[0] == "coordd_ai_requests_total" and v]
        assert others == [ai_ok]
        assert d.stop() == 0
    finally:
        ollama.close()


def test_metrics_off_with_an_empty_listen(coordd: CoorddProcess) -> None:
    # The shared fixture sets metrics_listen = "": nothing listens, nothing is logged.
    assert "metrics_listening" not in coordd.log()


def test_an_unusable_metrics_address_stops_the_start(coordd_factory: Any) -> None:
    d: CoorddProcess = coordd_factory({"metrics_listen": "nonsense"}, start=False)
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(15) == 1
    assert "cannot serve metrics on nonsense" in d.log()
