"""freshness-dashboard shows the active items themselves (issue 16): worst first (silence
against the threshold), with agent, progress and stage, fitted to the terminal."""

from __future__ import annotations

import json
from typing import Any

from coordd import protocol
from tests.conftest import CoorddProcess
from tests.helpers import wait_for


def test_the_dashboard_lists_active_items_worst_first_in_80_columns(
    coordd_factory: Any,
) -> None:
    d: CoorddProcess = coordd_factory(
        {"stale_threshold": 3600, "heartbeat_interval": 0.5, "recovery": "none"}
    )
    quiet = d.call(
        protocol.Claim(agent_id="slow_agent", work_type="t", description="q", stale_after=2)
    )
    busy = d.call(protocol.Claim(agent_id="busy_agent", work_type="t", description="b"))
    d.call(
        protocol.Progress(
            work_item_id=busy["work_item_id"], progress=40, status="review", agent_id="busy_agent"
        )
    )

    def dashboard() -> Any:
        return json.loads(d.ctl("freshness-dashboard", "--json").stdout)

    # The quiet one's short threshold makes it the worst; wait until it is past half of it.
    wait_for(lambda: dashboard()["potentially_stale"] + dashboard()["stale"], 10, 0.2)
    data = dashboard()
    assert [r["agent_id"] for r in data["items"]] == ["slow_agent", "busy_agent"]
    assert data["items"][1]["progress"] == 40 and data["items"][1]["stage"] == "review"

    out = d.ctl("freshness-dashboard", env={"COLUMNS": "80", "LINES": "24"}).stdout
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines)
    rows = [line for line in lines if "_agent" in line]
    assert "slow_agent" in rows[0] and "busy_agent" in rows[1]
    assert "40%" in rows[1] and "review" in rows[1] and "#" in rows[0]
    assert quiet["work_item_id"][-6:] in rows[0]

    # A short terminal shows what fits and says how many more there are.
    for n in range(8):
        d.call(protocol.Claim(agent_id=f"agent{n}", work_type="t", description="x"))
    short = d.ctl("freshness-dashboard", env={"COLUMNS": "80", "LINES": "10"}).stdout
    assert len(short.splitlines()) <= 10 and "more (--json for all)" in short
