"""One request, one reply, never hang: the DEALER call every client of coordd makes.

coordctl's control-socket client, the agent SDK and coordctl's heartbeater all send a
request and wait at most ``timeout`` seconds for its reply. A DEALER socket, not REQ
(a REQ socket that never hears back is stuck for good), with ``LINGER=0``. After a
timeout the socket is replaced: a late reply left on it would otherwise be read as
the answer to the next request.
"""

from __future__ import annotations

from typing import Any

import zmq

from coordd import protocol


class Timeout(Exception):
    """No reply within the timeout (the socket has been replaced)."""


def dealer(endpoint: str, ctx: zmq.Context[Any] | None = None) -> zmq.Socket[bytes]:
    """A connected DEALER socket that drops unsent messages on close."""
    sock: zmq.Socket[bytes] = (ctx or zmq.Context.instance()).socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


class Caller:
    """A DEALER connection that calls: send, poll with a timeout, decode the reply.

    Not thread-safe (no ZeroMQ socket is): one Caller per thread, or a lock around it.
    """

    def __init__(self, endpoint: str, timeout: float, ctx: zmq.Context[Any] | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.codec = protocol.Codec()
        self._ctx = ctx
        self.sock = self._socket()

    def _socket(self) -> zmq.Socket[bytes]:
        sock = dealer(self.endpoint, self._ctx)
        # A full send queue (no peer reading) counts against the same deadline.
        sock.setsockopt(zmq.SNDTIMEO, int(self.timeout * 1000))
        return sock

    def call(self, req: protocol.Request) -> protocol.AnyReply:
        """Send ``req``; its decoded reply (``Ok`` or ``Error``), or raise Timeout."""
        try:
            self.sock.send(self.codec.encode(req))
            answered = self.sock.poll(int(self.timeout * 1000))
        except zmq.Again:
            answered = 0
        if not answered:
            self.sock.close(0)
            self.sock = self._socket()
            raise Timeout(f"coordd did not answer within {self.timeout:g}s")
        reply: protocol.AnyReply = self.codec.reply_decoder.decode(self.sock.recv())
        return reply

    def close(self) -> None:
        self.sock.close(0)
