"""Downtime is never counted against agents: after a restart, one threshold of grace.

The rule is tested in-process with an injected clock (tests/core/test_handlers.py,
test_recovery.py and test_rules.py); here the daemon is the subject: a real restart
starts the grace."""

from __future__ import annotations

import signal
import time
from typing import Any

from coordd import protocol
from tests.conftest import CoorddProcess
from tests.helpers import wait_for

THRESHOLD = 1.0


def test_a_restarted_daemon_judges_an_item_only_a_threshold_after_it_started(
    coordd_factory: Any,
) -> None:
    d: CoorddProcess = coordd_factory(
        {"stale_threshold": THRESHOLD, "tick_interval": 0.05, "recovery": "reassign"}
    )
    item = d.call(protocol.Claim(agent_id="a1", work_type="t", description="survives"))
    wid = item["work_item_id"]
    assert d.stop(signal.SIGTERM) == 0
    # Down for longer than the threshold: without the grace the item would be recovered
    # as soon as the daemon is back.
    wait_for(lambda: time.time() > item["claimed_at"] + THRESHOLD)

    # The grace starts while the daemon starts, so it is measured from before the start
    # (start() returns once the daemon answers, which takes long on a loaded machine).
    restarted = time.time()
    d.start()
    shown = d.call(protocol.Show(work_item_id=wid))
    assert shown["status"] == "active" and shown["agent_id"] == "a1"
    assert shown["stale_since"] is None

    # Still silent: recovered, but only once a whole threshold has passed since the
    # restart (without the grace it would be a threshold after the claim, before that).
    recovered_at = wait_for(
        lambda: d.call(protocol.Show(work_item_id=wid))["recovered_at"], timeout=10
    )
    assert recovered_at - restarted >= THRESHOLD * 0.95
    assert d.call(protocol.Show(work_item_id=wid))["status"] == "pending"
