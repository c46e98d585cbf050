"""Talk to coordd's control socket: one request, one reply, never hang.

The call itself is ``coordd.rpc`` (shared with the agent SDK and the heartbeater), so
an unreachable daemon costs at most ``client_timeout`` seconds; this module adds what
an operator needs on top: a clear one-line message and coordctl's exit statuses.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

from coordd import protocol, rpc

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
    """coordctl's connection to coordd: the control socket (a path; the socket file is
    checked first, so a missing daemon or a permission problem is named rather than
    waited out), or an agent-side ``rpc.Link`` (``COORDD_ENDPOINTS``, CURVE keys)."""

    def __init__(self, control_socket: str | rpc.Link, timeout: float = 5.0) -> None:
        self.link = control_socket if isinstance(control_socket, rpc.Link) else None
        self.path = self.link.address() if self.link else str(control_socket)
        self.timeout = timeout
        self._caller: rpc.Caller | None = None

    def _hint(self) -> str:
        if self.link is not None:
            return "is coordd listening there, and are COORDD_CURVE_KEY/COORDD_SERVER_KEY right?"
        return f"is `coordd run` running with the same COORDINATION_DIR (cwd {os.getcwd()})?"

    def _denied(self) -> str:
        return (
            f"permission denied on {self.path}; the control socket is for root and"
            " the coordd group (see README, Security)"
        )

    def _connect(self) -> rpc.Caller:
        if self._caller is not None:
            return self._caller
        if self.link is not None:
            self._caller = rpc.Caller(self.link, self.timeout)
            return self._caller
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
        self._caller = rpc.Caller("ipc://" + self.path, self.timeout)
        return self._caller

    def call(self, req: protocol.Request) -> Any:
        """Send one request; return the reply's data or raise Refused/Unreachable."""
        try:
            reply = self._connect().call(req)
        except rpc.Timeout as e:
            self.close()  # the next call checks the socket file again
            raise Unreachable(f"{e} at {self.path}; {self._hint()}") from None
        if isinstance(reply, protocol.Error):
            raise Refused(reply.code, reply.message)
        return reply.data

    def close(self) -> None:
        if self._caller is not None:
            self._caller.close()
            self._caller = None


def to_builtins(data: Any) -> Any:
    """Plain JSON-able data (msgspec Structs included)."""
    return msgspec.to_builtins(data)
