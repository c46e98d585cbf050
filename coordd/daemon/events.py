"""What happened, told three ways: the events PUB socket, the log, the metrics tally.

The loop publishes a batch's events after its replies (``server._flush``)."""

from __future__ import annotations

from typing import Any

import structlog
import zmq

from coordd import protocol
from coordd.daemon.metrics import Tally

log = structlog.get_logger("coordd")

_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_NOBLOCK = int(zmq.NOBLOCK)

# The everyday life of an item, logged at debug; trouble stays at warning/error.
# How each event is logged (default info). None: not logged (heartbeats are too many;
# a refused lease was already logged as lease_refused with the request it refused).
# Routine events go at debug: one per claim/completion, rendering the line at info cost
# 9 us of the loop per claim (a tenth of the daemon's share of a claim round trip); the
# event socket and the metrics still carry every one of them.
EVENT_LOG_LEVEL: dict[str, str | None] = {
    "heartbeat": None,
    "lease_lost": None,
    "stale_detected": "warning",
    "recovered": "warning",
    "failed": "warning",
    **dict.fromkeys(("claimed", "completed", "released", "added", "fresh_again"), "debug"),
}


def publish(sock: zmq.Socket[bytes], codec: protocol.Codec, tally: Tally, ev: Any) -> None:
    """Count, log and send one event; a subscriber that cannot keep up loses it."""
    tally.count(ev.event, ev.detail)
    level = EVENT_LOG_LEVEL.get(ev.event, "info")
    if level is not None:
        getattr(log, level)(
            ev.event,
            work_item_id=ev.work_item_id,
            agent_id=ev.agent_id,
            lease=ev.lease,
            detail=ev.detail,
        )
    try:
        sock.send(ev.event.encode(), _SNDMORE_NOBLOCK)
        sock.send(codec.encode(ev), _NOBLOCK)
    except zmq.ZMQError:
        pass
