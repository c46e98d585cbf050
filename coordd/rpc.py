"""One request, one reply, never hang: the DEALER call every client of coordd makes.

coordctl's control-socket client, the agent SDK and coordctl's heartbeater all send a
request and wait at most ``timeout`` seconds for its reply. A DEALER socket, not REQ
(a REQ socket that never hears back is stuck for good), with ``LINGER=0``. After a
timeout the socket is replaced: a late reply left on it would otherwise be read as
the answer to the next request.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import msgspec
import zmq
import zmq.auth

from coordd import protocol
from coordd.endpoints import Endpoints

if TYPE_CHECKING:
    from coordd.config import Config

# A CURVE public key in Z85 is 40 characters.
Z85_KEY_LEN = 40


class Timeout(Exception):
    """No reply within the timeout (the socket has been replaced)."""


class KeyFileError(Exception):
    """A CURVE key file cannot be used; the message names the file and the fix."""


class CurveKeys(msgspec.Struct, frozen=True):
    """What a client needs for CURVE: its own key pair and the server's public key."""

    public: bytes
    secret: bytes
    server: bytes


class Link(msgspec.Struct, frozen=True):
    """Where an agent-side client connects: one or more addresses, CURVE keys or none."""

    endpoints: tuple[str, ...]
    curve: CurveKeys | None = None

    def address(self) -> str:
        return choose_endpoint(self.endpoints)


def choose_endpoint(endpoints: Sequence[str]) -> str:
    """The address a new connection starts with: the first of ``COORDD_ENDPOINTS``.
    Which one a connection uses after that (the leader) is ``Caller.endpoints``'s call."""
    return endpoints[0]


# How long a call to several coordd keeps looking for a leader: a failover takes the
# lease (15 s by default) plus a standby's retry; a call gives up a good while after.
FOLLOW_FOR = 30.0
# Between resends to a standby that does not know the leader yet.
FOLLOW_PAUSE = 0.1
# Idempotent already: never given a request id (they are the hot path).
_NO_ID = (protocol.Heartbeat, protocol.HeartbeatBatch)


def new_request_id() -> str:
    return uuid.uuid4().hex


def follows_leader(reply: protocol.Ok | protocol.Error) -> bool:
    """A reply that says: ask another coordd (a standby, or a leader that could not
    commit and is stepping down)."""
    if not isinstance(reply, protocol.Error):
        return False
    return reply.code == "not_leader" or (
        reply.code == "unavailable" and reply.message.startswith("not acknowledged")
    )


def load_curve(curve_key: str, server_key: str) -> CurveKeys | None:
    """The client keys of ``curve_key`` (a ``NAME.key_secret`` file) and ``server_key``
    (the ``server.key`` file, or the Z85 key itself); None when neither is set."""
    if not curve_key and not server_key:
        return None
    if not curve_key or not server_key:
        raise KeyFileError("COORDD_CURVE_KEY and COORDD_SERVER_KEY go together")
    try:
        public, secret = zmq.auth.load_certificate(curve_key)
    except (OSError, ValueError) as e:
        raise KeyFileError(f"cannot read the agent key {curve_key}: {e}") from None
    if not secret:
        raise KeyFileError(
            f"{curve_key} holds no secret key: give the NAME.key_secret file made by"
            " `coordctl keys generate --agent NAME`"
        )
    if len(server_key) == Z85_KEY_LEN and not os.path.exists(server_key):
        server = server_key.encode()
    else:
        try:
            server = zmq.auth.load_certificate(server_key)[0]
        except (OSError, ValueError) as e:
            raise KeyFileError(f"cannot read the server key {server_key}: {e}") from None
    return CurveKeys(public=public, secret=secret, server=server)


def agent_link(cfg: Config) -> Link:
    """The agent-side link of a configuration: ``endpoints`` (else the local agent
    endpoint) with its CURVE keys. Raises KeyFileError."""
    endpoints = tuple(cfg.endpoints) or (cfg.agent_endpoint,)
    return Link(endpoints, load_curve(cfg.curve_key, cfg.server_key))


def as_link(target: str | Link) -> Link:
    return target if isinstance(target, Link) else Link((target,))


def dealer(
    endpoint: str | Link, ctx: zmq.Context[Any] | None = None, address: str | None = None
) -> zmq.Socket[bytes]:
    """A connected DEALER socket (with CURVE when the link has keys) that drops unsent
    messages on close; to ``address`` if given, else the link's first address."""
    link = as_link(endpoint)
    sock: zmq.Socket[bytes] = (ctx or zmq.Context.instance()).socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if link.curve is not None:
        sock.curve_publickey = link.curve.public
        sock.curve_secretkey = link.curve.secret
        sock.curve_serverkey = link.curve.server
    sock.connect(address or link.address())
    return sock


class Caller:
    """A DEALER connection that calls: send, poll with a timeout, decode the reply.

    With several endpoints (``COORDD_ENDPOINTS``, several coordd of one PostgreSQL
    cluster) it finds the leader: each request gets a ``request_id``, and one that
    times out or is answered ``not_leader`` is resent, to the next endpoint or the one
    named, for up to ``follow_for`` seconds; coordd applies an id once, so a resend
    after a failover never acts twice.

    Not thread-safe (no ZeroMQ socket is): one Caller per thread, or a lock around it.
    """

    def __init__(
        self, endpoint: str | Link, timeout: float, ctx: zmq.Context[Any] | None = None
    ) -> None:
        self.link = as_link(endpoint)
        self.timeout = timeout
        self.follow_for = FOLLOW_FOR
        self.endpoints = Endpoints(self.link.endpoints)
        self.codec = protocol.Codec()
        self._ctx = ctx
        # Messages coordd pushes unasked (``Revoked``) that arrive while a reply is
        # awaited: handed here, never taken for the reply.
        self.on_push: Callable[[protocol.Revoked], None] | None = None
        self.sock = self._socket()

    @property
    def endpoint(self) -> str:
        return self._address

    def _socket(self) -> zmq.Socket[bytes]:
        self._address = self.endpoints.current()
        sock = dealer(self.link, self._ctx, self._address)
        # A full send queue (no peer reading) counts against the same deadline.
        sock.setsockopt(zmq.SNDTIMEO, int(self.timeout * 1000))
        return sock

    def call(self, req: protocol.Request) -> protocol.Ok | protocol.Error:
        """Send ``req``; its decoded reply (``Ok`` or ``Error``), or raise Timeout."""
        if not self.endpoints.several:
            return self._call_once(req)
        if req.request_id is None and not isinstance(req, _NO_ID):
            req.request_id = new_request_id()
        give_up = time.monotonic() + self.follow_for
        while True:
            if self.endpoints.current() != self._address:
                self.sock.close(0)
                self.sock = self._socket()
            at = self._address
            try:
                reply = self._call_once(req)
            except Timeout:
                self.endpoints.timed_out(at)
                if time.monotonic() >= give_up:
                    raise
                continue
            self.endpoints.answered(at)
            if not follows_leader(reply) or time.monotonic() >= give_up:
                return reply
            leader = reply.leader if isinstance(reply, protocol.Error) else None
            if not self.endpoints.not_leader(at, leader):
                time.sleep(FOLLOW_PAUSE)

    def _call_once(self, req: protocol.Request) -> protocol.Ok | protocol.Error:
        deadline = time.monotonic() + self.timeout
        try:
            self.sock.send(self.codec.encode(req))
        except zmq.Again:
            return self._timed_out()
        while True:
            wait = max(0.0, deadline - time.monotonic())
            if not self.sock.poll(int(wait * 1000)):
                return self._timed_out()
            reply = self.codec.reply_decoder.decode(self.sock.recv())
            if not isinstance(reply, protocol.Revoked):
                return reply
            if self.on_push is not None:
                self.on_push(reply)

    def _timed_out(self) -> NoReturn:
        self.sock.close(0)
        self.sock = self._socket()
        raise Timeout(f"coordd did not answer within {self.timeout:g}s")

    def close(self) -> None:
        self.sock.close(0)
