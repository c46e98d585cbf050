"""Downtime is never counted against agents: after a restart, one threshold of grace."""

from __future__ import annotations

import signal
import time
from typing import Any

from coordd import protocol
from tests.conftest import CoorddProcess
from tests.helpers import wait_for

THRESHOLD = 1.0


def test_item_silent_through_a_restart_gets_one_threshold_of_grace(coordd_factory: Any) -> None:
    d: CoorddProcess = coordd_factory(
        {"stale_threshold": THRESHOLD, "tick_interval": 0.05, "recovery": "reassign"}
    )
    item = d.call(protocol.Claim(agent_id="a1", work_type="t", description="survives"))
    wid = item["work_item_id"]
    assert d.stop(signal.SIGTERM) == 0
    time.sleep(THRESHOLD * 1.5)  # the daemon is down longer than the threshold

    d.start()
    restarted = time.time()
    # Silent for longer than the threshold, yet not judged: coordd was not listening.
    shown = d.call(protocol.Show(work_item_id=wid))
    assert shown["status"] == "active" and shown["agent_id"] == "a1"
    assert shown["stale_since"] is None

    # Still silent: recovered, but only once a whole threshold has passed since the restart.
    recovered_at = wait_for(
        lambda: d.call(protocol.Show(work_item_id=wid))["recovered_at"], timeout=10
    )
    assert recovered_at - restarted >= THRESHOLD * 0.95
    assert d.call(protocol.Show(work_item_id=wid))["status"] == "pending"
