"""Replies on their way to peers, bounded per peer (issue 14, finding 5).

ZeroMQ says nothing about what a peer has read. What it does say, on a ROUTER with
``ROUTER_MANDATORY``: a non-blocking send to a peer whose queue is full (``SNDHWM``
messages, ``PEER_HWM`` here) fails with EAGAIN instead of dropping or blocking. So a
peer's replies are handed to ZeroMQ while it takes them; past that they wait here, in
order, up to ``cap`` bytes per peer, and are handed over as the peer reads (the loop
retries every ``RETRY_SECONDS`` while anything waits). A peer over its cap is
*blocked*: its further replies are dropped, never queued (counted, logged with its
identity), and the loop refuses its requests without running them, until everything
held for it has gone to ZeroMQ. What one peer can make coordd hold is then at most
``PEER_HWM`` replies in ZeroMQ's queue plus ``cap`` bytes here, whatever it sends.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import structlog
import zmq

from coordd.daemon import metrics

log = structlog.get_logger("coordd")

# Replies ZeroMQ may queue for one peer before a send says EAGAIN. Small, because a
# reply can be large (a page of ``list``); everything past it is counted in bytes here.
PEER_HWM = 64
# How often held replies are offered again while a peer is not reading.
RETRY_SECONDS = 0.01

_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)

Peer = tuple[zmq.Socket[bytes], bytes]  # the socket and the peer's routing id


@dataclass
class Held:
    """What waits for one peer."""

    replies: deque[tuple[list[bytes], bytes]] = field(default_factory=deque)
    bytes: int = 0
    blocked: bool = False
    dropped: int = 0
    refused: int = 0


def _send(sock: zmq.Socket[bytes], envelope: list[bytes], payload: bytes) -> None:
    # With ROUTER_MANDATORY the first frame fails (EAGAIN, EHOSTUNREACH) or all go.
    for part in envelope:
        sock.send(part, _SNDMORE_NOBLOCK)
    sock.send(payload, _NOBLOCK)


class Outbox:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.held: dict[Peer, Held] = {}
        self.blocked: set[Peer] = set()

    def send(self, sock: zmq.Socket[bytes], envelope: list[bytes], payload: bytes) -> None:
        """Hand a reply to ZeroMQ, or hold it behind the peer's earlier ones."""
        peer = (sock, envelope[0])
        held = self.held.get(peer)
        if held is None:
            try:
                _send(sock, envelope, payload)
                return
            except zmq.Again:
                held = self.held[peer] = Held()
            except zmq.ZMQError:
                return  # the peer is gone (EHOSTUNREACH): nobody to answer
        self._hold(peer, held, envelope, payload)

    def _hold(self, peer: Peer, held: Held, envelope: list[bytes], payload: bytes) -> None:
        if not held.blocked and held.bytes + len(payload) <= self.cap:
            held.replies.append((envelope, payload))
            held.bytes += len(payload)
            return
        held.dropped += 1
        metrics.PEER_REPLIES_DROPPED.inc()
        if not held.blocked:
            held.blocked = True
            self.blocked.add(peer)
            log.warning(
                "peer_replies_dropped",
                peer=peer[1].hex(),
                held_bytes=held.bytes,
                cap=self.cap,
                detail="the peer does not read its replies; its requests are refused until it does",
            )

    def retry(self) -> None:
        """Offer every held reply again, oldest first, as far as each peer takes them."""
        for peer, held in list(self.held.items()):
            sock = peer[0]
            replies = held.replies
            while replies:
                envelope, payload = replies[0]
                try:
                    _send(sock, envelope, payload)
                except zmq.Again:
                    break
                except zmq.ZMQError:
                    replies.clear()  # the peer is gone
                    break
                replies.popleft()
                held.bytes -= len(payload)
            if not replies:
                self._release(peer, held)

    def _release(self, peer: Peer, held: Held) -> None:
        del self.held[peer]
        if held.blocked:
            self.blocked.discard(peer)
            log.info(
                "peer_reading_again",
                peer=peer[1].hex(),
                replies_dropped=held.dropped,
                requests_refused=held.refused,
            )

    def refuse(self, peer: Peer) -> None:
        """Count a request from a blocked peer, refused without being run."""
        metrics.PEER_REQUESTS_REFUSED.inc()
        held = self.held.get(peer)
        if held is not None:
            held.refused += 1
            if held.refused == 1:
                log.warning("peer_requests_refused", peer=peer[1].hex())

    @property
    def waiting(self) -> bool:
        return bool(self.held)

    def held_bytes(self) -> int:
        return sum(h.bytes for h in self.held.values())
