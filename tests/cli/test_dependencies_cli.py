"""Work that waits for other work, through coordctl against a real daemon, and the
display findings of issue 16 (short ids accepted back, stage cleared, priority words
in any case)."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.conftest import CoorddProcess


def ok(d: CoorddProcess, *args: str, **kw: Any) -> Any:
    r = d.ctl(*args, "--json", **kw)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return json.loads(r.stdout)


def test_a_chain_goes_to_three_agents_in_order_and_a_failure_blocks(
    coordd: CoorddProcess,
) -> None:
    d = coordd
    a = ok(d, "add", "build", "A: compile")["work_item_id"]
    b = ok(d, "add", "build", "B: test", "critical", "--after", a)["work_item_id"]
    c = ok(d, "add", "build", "C: ship", "critical", "--after", b)["work_item_id"]
    assert [i["description"] for i in ok(d, "list", "--ready")["items"]] == ["A: compile"]

    # Three agents ask for work: each gets the one step that can run, in order.
    assert ok(d, "claim-next", "--agent", "agent1")["work_item_id"] == a
    assert d.ctl("claim-next", "--agent", "agent2").returncode == 3  # B waits for A
    ok(d, "complete", a, "--agent", "agent1")
    assert ok(d, "claim-next", "--agent", "agent2")["work_item_id"] == b
    assert d.ctl("claim-next", "--agent", "agent3").returncode == 3  # C waits for B

    # B fails: C stays blocked, and says why.
    ok(d, "complete", b, "failed", "--agent", "agent2")
    assert d.ctl("claim-next", "--agent", "agent3").returncode == 3
    shown = ok(d, "show", c)
    assert shown["status"] == "pending" and shown["blocked"] is True
    assert shown["waiting_on"] == [
        {"work_item_id": b, "status": "completed", "result": "failed", "met": False}
    ]
    human = d.ctl("show", c).stdout
    assert re.search(r"^status: +blocked$", human, re.M), human
    assert f"waits for {b} (completed: failed)" in human
    assert "blocked" in d.ctl("list").stdout
    dash = ok(d, "freshness-dashboard")
    assert dash["blocked"] == 1
    assert dash["blocked_items"] == [{"work_item_id": c, "waiting_on": shown["waiting_on"]}]
    screen = d.ctl("freshness-dashboard").stdout
    assert "1 blocked" in screen
    assert f"blocked work_…{c[-6:]}: waits for work_…{b[-6:]} (completed: failed)" in screen

    # A restart keeps it: dependencies are journaled.
    assert d.stop() == 0
    d.start()
    assert ok(d, "show", c)["blocked"] is True
    assert ok(d, "status")["counts"]["blocked"] == 1


def test_run_type_takes_only_ready_items(coordd: CoorddProcess) -> None:
    first = ok(coordd, "add", "prep", "first")["work_item_id"]
    ok(coordd, "add", "build", "waits", "--after", first)
    r = coordd.ctl("run", "--type", "build", "--", "true", env={"AGENT_ID": "r1"})
    assert r.returncode == 3, r.stderr  # nothing ready of type build
    coordd.ctl("claim-next", "--agent", "r1", "--work", first)
    ok(coordd, "complete", first, "--agent", "r1")
    r = coordd.ctl("run", "--type", "build", "--", "true", env={"AGENT_ID": "r1"})
    assert r.returncode == 0, r.stderr


def test_claim_after_unmet_is_refused_and_cycles_and_unknown_ids_at_add(
    coordd: CoorddProcess,
) -> None:
    d = coordd
    a = ok(d, "add", "t", "first")["work_item_id"]
    r = d.ctl("claim", "t", "second", "--after", a, env={"AGENT_ID": "a1"})
    assert r.returncode == 1 and "conflict" in r.stderr and "waits for" in r.stderr
    r = d.ctl("add", "t", "x", "--id", "loop", "--after", "loop")
    assert r.returncode == 1 and "cycle" in r.stderr
    r = d.ctl("add", "t", "x", "--after", "work_nope")
    assert r.returncode == 1 and "unknown_work" in r.stderr


def test_short_ids_are_distinct_at_80_columns_and_accepted_back(
    coordd: CoorddProcess,
) -> None:
    d = coordd
    ids = [ok(d, "add", "t", f"item {n}")["work_item_id"] for n in range(5)]
    listing = d.ctl("list", env={"COLUMNS": "80"}).stdout.splitlines()[1:]
    shown = [line.split()[0] for line in listing]
    assert len(set(shown)) == 5 and all(len(s) < 16 for s in shown)
    # Every command taking an id takes the short form back.
    for short, full in zip(shown, ids, strict=True):
        assert short.startswith("work_…") and full.endswith(short.split("…")[1])
    item = ok(d, "claim-next", "--agent", "a1", "--work", shown[0])
    assert item["work_item_id"] == ids[0]
    assert ok(d, "progress", shown[0], "40", "review", "--agent", "a1")["stage"] == "review"
    done = ok(d, "complete", shown[0], "--agent", "a1")
    assert done["status"] == "completed" and done["stage"] is None  # stage cleared
    assert ok(d, "show", shown[0])["work_item_id"] == ids[0]


def test_priority_words_in_any_case(coordd: CoorddProcess) -> None:
    assert ok(coordd, "add", "t", "loud", "HIGH")["priority"] == "high"
    assert ok(coordd, "claim", "t", "mixed", "Critical", env={"AGENT_ID": "a"})["priority"] == (
        "critical"
    )


def test_a_first_heartbeat_start_logs_no_warning(coordd: CoorddProcess) -> None:
    """A new shell agent starts its heartbeater before it claims: registering it is
    the normal path, not an ``unknown_agent`` warning."""
    from tests.helpers import wait_for

    env = {"AGENT_ID": "brand_new", "HEARTBEAT_INTERVAL": "0.1"}
    started = coordd.ctl("heartbeat-start", env=env)
    try:
        assert started.returncode == 0, started.stderr
        log_file = coordd.dir / "heartbeat_daemon.brand_new.log"
        wait_for(lambda: "agent_registered" in log_file.read_text())
        wait_for(lambda: coordd.ctl("agents", "--json").stdout.count("brand_new") == 1)
        log = log_file.read_text()
        assert "unknown_agent" not in log and '"warning"' not in log
    finally:
        coordd.ctl("heartbeat-stop", env=env)


def test_help_summaries_fit_80_columns_in_users_words() -> None:
    """``coordctl --help`` at 80 columns: no summary cut short, no wire internals."""
    import subprocess

    from tests.conftest import BIN

    out = subprocess.run(
        [str(BIN / "coordctl"), "--help"],
        env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    ).stdout
    commands = out.split("Commands:")[1].strip().splitlines()
    assert len(commands) >= 25
    for line in commands:
        assert len(line) <= 80 and not line.endswith("...") and "sends" not in line, line
