"""Talk to coordd's control socket: one request, one reply, never hang.

A DEALER socket (not REQ: a REQ socket that never hears back is stuck for good)
with a receive timeout and ``LINGER=0`` so an unreachable daemon costs at most
``client_timeout`` seconds and a clear one-line message.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec
import zmq

from coordd import protocol

# Exit statuses of coordctl, documented in the README.
EXIT_OK = 0
EXIT_REFUSED = 1  # the daemon answered with an error
EXIT_USAGE = 2  # click's own status for bad arguments
EXIT_NOTHING_PENDING = 3
EXIT_UNREACHABLE = 4
EXIT_STALE_FOUND = 5
EXIT_LEASE_LOST = 6  # `coordctl run`: the lease was lost and the command stopped
EXIT_AI_DECLINED = 7  # `claim-enhanced --respect-ai`: the AI advised not to claim


class Unreachable(Exception):
    """The daemon cannot be reached; the message names the socket and a hint."""


class Refused(Exception):
    """The daemon answered ``Error(code, message)``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Client:
    def __init__(self, control_socket: str, timeout: float = 5.0) -> None:
        self.path = control_socket
        self.timeout = timeout
        self.codec = protocol.Codec()
        self._sock: zmq.Socket[bytes] | None = None

    def _hint(self) -> str:
        return f"is `coordd run` running with the same COORDINATION_DIR (cwd {os.getcwd()})?"

    def _denied(self) -> str:
        return (
            f"permission denied on {self.path}; the control socket is for root and"
            " the coordd group (see README, Security)"
        )

    def _connect(self) -> zmq.Socket[bytes]:
        if self._sock is not None:
            return self._sock
        try:
            os.stat(self.path)
        except PermissionError:
            # The 0750 run directory keeps out anyone outside the group: say so, rather
            # than "not running", which would send the operator looking elsewhere.
            raise Unreachable(self._denied()) from None
        except FileNotFoundError:
            raise Unreachable(
                f"coordd is not running at {self.path} (no socket); {self._hint()}"
            ) from None
        if not os.access(self.path, os.R_OK | os.W_OK):
            raise Unreachable(self._denied())
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, int(self.timeout * 1000))
        sock.setsockopt(zmq.SNDTIMEO, int(self.timeout * 1000))
        sock.connect("ipc://" + self.path)
        self._sock = sock
        return sock

    def call(self, req: protocol.Request) -> Any:
        """Send one request; return the reply's data or raise Refused/Unreachable."""
        sock = self._connect()
        try:
            sock.send(self.codec.encode(req))
            raw = sock.recv()
        except zmq.Again:
            self.close()
            raise Unreachable(
                f"coordd did not answer within {self.timeout:g}s at {self.path}; {self._hint()}"
            ) from None
        reply = self.codec.reply_decoder.decode(raw)
        if isinstance(reply, protocol.Error):
            raise Refused(reply.code, reply.message)
        return reply.data

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None


def to_builtins(data: Any) -> Any:
    """Plain JSON-able data (msgspec Structs included)."""
    return msgspec.to_builtins(data)
