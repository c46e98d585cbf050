"""A request id makes a resend harmless on the file store too, across a kill -9."""

from __future__ import annotations

import signal
from typing import Any

from coordd import protocol
from tests.conftest import CoorddProcess
from tests.helpers import wait_for


def test_a_resend_with_the_same_id_is_answered_once_applied_once(coordd: CoorddProcess) -> None:
    add = protocol.Add(work_type="t", description="x", request_id="add-1")
    first = coordd.call(add)
    assert coordd.call(add) == first  # same reply: same generated id, nothing new
    coordd.stop(signal.SIGKILL)  # the journal, not the snapshot, carries the id
    coordd.start()
    assert coordd.call(add) == first
    assert coordd.call(protocol.Status())["counts"]["items"] == 1
    other: Any = coordd.call(protocol.Add(work_type="t", description="x", request_id="add-2"))
    assert other["work_item_id"] != first["work_item_id"]


def test_a_resend_after_a_snapshot_and_a_restart_is_still_answered_once(
    coordd: CoorddProcess,
) -> None:
    add = protocol.Add(work_type="t", description="x", request_id="before-snapshot")
    first = coordd.call(add)
    # The snapshot covers the journal that carried the id: it must carry it itself.
    before = coordd.call(protocol.Status())["snapshot"].get("count", 0)
    coordd.call(protocol.Snapshot())
    wait_for(
        lambda: (
            (snap := coordd.call(protocol.Status())["snapshot"])["count"] > before and snap["ok"]
        )
    )
    coordd.stop(signal.SIGKILL)
    coordd.start()
    assert coordd.call(add) == first
    assert coordd.call(protocol.Status())["counts"]["items"] == 1
