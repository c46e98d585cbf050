"""What happened, told three ways: the events PUB socket, the log, the metrics tally.

The loop publishes a batch's events after its replies (``server._flush``).

On the socket each event is two frames: its name (the subscription topic) and a
``model.Published`` message: the event's fields plus two optional ones that old
subscribers ignore (msgspec skips unknown fields):

- ``seq``: 1, 2, 3... per daemon process. A PUB socket drops what a slow subscriber
  cannot take; a subscriber that sees a gap (or ``seq`` going back: a restart) knows it
  missed something and reloads a full view (``coordd web`` does).
- ``item``: the item as it is when the batch is published, for events about one item,
  so a subscriber that keeps a copy (``coordd web``) needs no ``show`` per event. Not
  for ``heartbeat`` and ``lease_lost``: those change nothing a copy keeps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
import zmq

from coordd import protocol
from coordd.core.model import Published, WorkItem
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

# Events that change nothing of the item: published without it.
WITHOUT_ITEM = frozenset({"heartbeat", "lease_lost"})


class Publisher:
    """Counts, logs and sends events, numbering them on the way out."""

    def __init__(
        self,
        sock: zmq.Socket[bytes],
        codec: protocol.Codec,
        tally: Tally,
        find: Callable[[str], WorkItem | None] = lambda _wid: None,
    ) -> None:
        self.sock = sock
        self.codec = codec
        self.tally = tally
        self.find = find  # the item by id, as it is now (the state's dict may be replaced)
        self.seq = 0

    def publish(self, ev: Any) -> None:
        """Count, log and send one event; a subscriber that cannot keep up loses it
        (and sees the gap in ``seq``)."""
        self.tally.count(ev.event, ev.detail)
        level = EVENT_LOG_LEVEL.get(ev.event, "info")
        if level is not None:
            getattr(log, level)(
                ev.event,
                work_item_id=ev.work_item_id,
                agent_id=ev.agent_id,
                lease=ev.lease,
                detail=ev.detail,
            )
        self.seq += 1
        item = None
        if ev.work_item_id is not None and ev.event not in WITHOUT_ITEM:
            item = self.find(ev.work_item_id)
        out = Published(
            event=ev.event,
            at=ev.at,
            work_item_id=ev.work_item_id,
            agent_id=ev.agent_id,
            lease=ev.lease,
            detail=ev.detail,
            seq=self.seq,
            item=item,
        )
        try:
            self.sock.send(ev.event.encode(), _SNDMORE_NOBLOCK)
            self.sock.send(self.codec.encode(out), _NOBLOCK)
        except zmq.ZMQError:
            pass
