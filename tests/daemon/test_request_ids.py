"""A request id makes a resend harmless on the file store too, across a kill -9."""

from __future__ import annotations

import signal
from typing import Any

from coordd import protocol
from tests.conftest import CoorddProcess


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
