"""Every message on coordd's sockets, as msgspec Structs.

One ZeroMQ frame carries one msgpack-encoded message (ROUTER routing frames aside).
Requests form one tagged union on the field ``op``; replies are ``Ok`` or ``Error``
(tagged on ``reply``). Every request carries the protocol version ``v``; a daemon
that speaks another version answers ``Error(code="version_mismatch")``.

Unknown fields in a request are ignored (msgspec's default), so a newer client can
add optional fields without breaking an older daemon; a missing required field or a
wrong type is ``bad_request``.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

PROTOCOL_VERSION = 1

Priority = Literal["low", "medium", "high", "critical"]
Strategy = Literal["reassign", "retry", "fail", "none"]

# Stable error codes. Clients switch on these; never rename one.
ERROR_CODES: dict[str, str] = {
    "bad_request": "the message could not be decoded or a field is invalid",
    "version_mismatch": "the client speaks another protocol version",
    "unknown_work": "no work item has that id",
    "unknown_agent": "no agent has that id",
    "lease_lost": "the lease is no longer the caller's (item recovered or reclaimed)",
    "not_owner": "the item is held by another agent",
    "conflict": "the request contradicts the item's state (e.g. id exists, item not pending)",
    "nothing_pending": "claim-next found no pending item matching the filters",
    "not_allowed": "the operation is accepted only on the control socket",
    "limit_reached": "a configured limit (items, agents) would be exceeded",
    "unavailable": "the daemon cannot do this right now (e.g. AI provider down)",
    "internal": "an unexpected error inside coordd (a bug; see the logs)",
}


class Request(msgspec.Struct, tag_field="op", kw_only=True, omit_defaults=True):
    """Base of every request. ``v`` is the protocol version the client speaks."""

    v: int = PROTOCOL_VERSION


# --- agents ---------------------------------------------------------------


class Register(Request, tag="register"):
    """Register (or update) an agent: ``coordctl register``."""

    agent_id: str
    team: str = ""
    capacity: int = 100
    specialization: str = ""


class Heartbeat(Request, tag="heartbeat"):
    """Agent-level heartbeat (no ``work_item_id``: refreshes the agent and all its items)
    or item-level heartbeat. One-way unless ``ack`` is set or something is wrong."""

    agent_id: str
    work_item_id: str | None = None
    lease: int | None = None
    progress: int | None = None
    ack: bool = False


class ItemBeat(msgspec.Struct, array_like=True):
    """One item of a ``HeartbeatBatch``: ``[work_item_id, lease]`` (compact on the wire)."""

    work_item_id: str
    lease: int | None = None


class HeartbeatBatch(Request, tag="heartbeat_batch"):
    """Heartbeats for many items of one agent in one message."""

    agent_id: str
    items: list[ItemBeat] = []
    ack: bool = False


# --- work items -----------------------------------------------------------


class Add(Request, tag="add"):
    """Put a pending item in the backlog: ``coordctl add``."""

    work_type: str
    description: str
    priority: Priority = "medium"
    team: str = ""
    work_item_id: str | None = None
    stale_after: float | None = None


class Claim(Request, tag="claim"):
    """Create an item and claim it at once (the old script's ``claim``)."""

    agent_id: str
    work_type: str
    description: str
    priority: Priority = "medium"
    team: str = ""
    work_item_id: str | None = None
    stale_after: float | None = None


class ClaimNext(Request, tag="claim_next"):
    """Take the most urgent pending item (or the one named by ``work_item_id``)."""

    agent_id: str
    work_type: str | None = None
    team: str | None = None
    work_item_id: str | None = None


class Progress(Request, tag="progress"):
    """Report progress (0-100) on an item the caller holds."""

    work_item_id: str
    progress: int
    agent_id: str | None = None
    lease: int | None = None
    status: str | None = None


class Complete(Request, tag="complete"):
    """Finish an item with a result and velocity points."""

    work_item_id: str
    agent_id: str | None = None
    lease: int | None = None
    result: str = "success"
    velocity: int = 0


class Release(Request, tag="release"):
    """Give an item back to the backlog (status ``pending``)."""

    work_item_id: str
    agent_id: str | None = None
    lease: int | None = None


# --- reads ------------------------------------------------------------------


class List(Request, tag="list"):
    """Items, filtered; newest first is not promised, id order is."""

    status: str | None = None
    team: str | None = None
    agent_id: str | None = None
    work_type: str | None = None
    limit: int = 1000


class Show(Request, tag="show"):
    work_item_id: str


class Agents(Request, tag="agents"):
    pass


class Status(Request, tag="status"):
    """Daemon health, counts and counters."""


class Snapshot(Request, tag="snapshot"):
    """Write a snapshot now, in the background (control socket only): ``coordctl snapshot``.
    The reply carries the last snapshot's figures; ``Status.snapshot.count`` grows when
    the requested one is done."""


# --- replies ----------------------------------------------------------------


class Reply(msgspec.Struct, tag_field="reply", kw_only=True, omit_defaults=True):
    v: int = PROTOCOL_VERSION


class Ok(Reply, tag="ok"):
    data: Any = None


class Error(Reply, tag="error"):
    code: str
    message: str


AnyReply = Ok | Error

# Requests that only read or that only an operator should issue are listed in
# ``server`` (which socket accepts what is an edge decision, not a wire one).
REQUEST_TYPES: tuple[type[Request], ...] = (
    Register,
    Heartbeat,
    HeartbeatBatch,
    Add,
    Claim,
    ClaimNext,
    Progress,
    Complete,
    Release,
    List,
    Show,
    Agents,
    Status,
    Snapshot,
)


def request_union() -> Any:
    """The tagged union of every request type (a ``typing.Union``)."""
    return _union(REQUEST_TYPES)


def _union(types: tuple[type, ...]) -> Any:
    u: Any = types[0]
    for t in types[1:]:
        u = u | t
    return u


class Codec:
    """One encoder and the typed decoders, built once (msgspec caches per type)."""

    def __init__(self, request_types: tuple[type[Request], ...] = REQUEST_TYPES) -> None:
        self.encoder = msgspec.msgpack.Encoder()
        self.request_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(
            _union(request_types)
        )
        self.reply_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(AnyReply)

    def encode(self, msg: msgspec.Struct) -> bytes:
        return self.encoder.encode(msg)
