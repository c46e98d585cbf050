"""Every message on coordd's sockets, as msgspec Structs.

One ZeroMQ frame carries one msgpack-encoded message (ROUTER routing frames aside).
Requests form one tagged union on the field ``op``; replies are ``Ok`` or ``Error``
(tagged on ``reply``). Every request carries the protocol version ``v``; a daemon
that speaks another version answers ``Error(code="version_mismatch")``.

Unknown fields in a request are ignored (msgspec's default), so a newer client can
add optional fields without breaking an older daemon; a missing required field or a
wrong type is ``bad_request``.

Every string field has a length limit and every number a range, declared on the
field (``Id``, ``Text``, ``Percent``...) so the decoder refuses an oversized or
out-of-range request at the edge, before any handler runs, with a message naming
the field and the limit (``Expected `str` of length <= 200 - at `$.agent_id```).
Every float range is closed on both sides, which also refuses ``inf``, ``-inf`` and
``nan`` (no comparison with ``nan`` holds), so nothing the state keeps, a snapshot
writes or a reply encodes can be non-finite or too large for msgpack's 64 bits.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

import msgspec

from coordd import kinds

PROTOCOL_VERSION = 1

# Wire limits. They bound what one request can make coordd hold (an id is copied into
# indexes, a description is kept and journaled), so a client cannot grow memory or the
# journal with one field. The operator's tighter limits (max_id_len,
# max_description_len, max_batch) are configured and checked past the edge.
MAX_ID_LEN = 200  # ids and short names: agent_id, work_item_id, work_type, team, stage
MAX_TEXT_LEN = 10_000  # free text: description, result
MAX_BATCH_ITEMS = 100_000  # items of one HeartbeatBatch (config max_batch may be lower)
# Numbers. A velocity is a handful of points; a million per completion, summed over
# every item coordd can hold (max_items 5M), stays far below 2**63, so a team's total
# can always be encoded (two completes of 2**64-1 once broke every later ``status``).
MAX_VELOCITY = 1_000_000
MAX_CAPACITY = 1_000_000  # items one agent may be declared able to hold
# Leases only grow, one per claim/release/recovery: 2**53 is beyond any run's reach and
# exact in every JSON reader (a lease shown by ``jq`` must compare equal to the one sent).
MAX_LEASE = 2**53
# A threshold longer than ten years is a mistake; a finite bound keeps deadlines finite.
MAX_SECONDS = 10 * 365 * 24 * 3600.0
# ``list`` answers at most this many items, and about this many bytes, per page (see
# ``List``); more is served as pages, never as one reply a slow reader would make coordd
# hold. At most MAX_SCAN items are looked at per page, so a filter that matches little
# among millions costs one bounded step per request, not one long stall of the loop.
MAX_PAGE = 1000
MAX_PAGE_BYTES = 512 * 1024
MAX_SCAN = 100_000
MAX_CURSOR_LEN = MAX_ID_LEN + 48
# An old client's ``limit`` may be any count: it is clamped to MAX_PAGE, not refused.
MAX_LIMIT = 2**63 - 1
# A checkpoint is a note for the next holder (a branch, a last step, a file list), kept
# with the item and journaled when it changes: small, so a heartbeat stays cheap.
MAX_CHECKPOINT_LEN = 4096

Id = Annotated[str, msgspec.Meta(max_length=MAX_ID_LEN)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT_LEN)]
Percent = Annotated[int, msgspec.Meta(ge=0, le=100)]
Capacity = Annotated[int, msgspec.Meta(ge=0, le=MAX_CAPACITY)]
Velocity = Annotated[int, msgspec.Meta(ge=0, le=MAX_VELOCITY)]
Lease = Annotated[int, msgspec.Meta(ge=0, le=MAX_LEASE)]
Limit = Annotated[int, msgspec.Meta(ge=0, le=MAX_LIMIT)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=MAX_SECONDS)]
# The items a new one waits for (``--after``); a handful in practice.
MAX_AFTER = 100
After = Annotated[list[Id], msgspec.Meta(max_length=MAX_AFTER)]
Checkpoint = Annotated[str, msgspec.Meta(max_length=MAX_CHECKPOINT_LEN)]

# The closed vocabularies are the enums of ``coordd.kinds``: the decoder refuses any
# other string with "Invalid enum value", as it did when they were Literals here.
Priority = kinds.Priority
Strategy = kinds.Strategy

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
    "not_allowed": "not for this caller: an operator-only request on the agent endpoint,"
    " or an agent id the client's CURVE key was not allowed for",
    "limit_reached": "a configured limit (items, agents) would be exceeded",
    "unavailable": "the daemon cannot do this right now (e.g. AI provider down, or the"
    " store could not commit: nothing of the request was acknowledged)",
    "not_leader": "this coordd is a standby: only reads are served; ``leader`` is where"
    " the leader serves agents",
    "internal": "an unexpected error inside coordd (a bug; see the logs)",
}


class Request(msgspec.Struct, tag_field="op", kw_only=True, omit_defaults=True):
    """Base of every request. ``v`` is the protocol version the client speaks.

    ``request_id`` (optional, chosen by the client, unique per request): a request
    that changes something is applied once per id; a resend with the same id (after a
    timeout, or to the new leader after a failover) gets the first reply again. The
    daemon remembers ids for ``request_id_ttl`` seconds, journaled with the change."""

    v: int = PROTOCOL_VERSION
    request_id: Id | None = None


# --- agents ---------------------------------------------------------------


class Register(Request, tag="register"):
    """Register (or update) an agent: ``coordctl register``."""

    agent_id: Id
    team: Id = ""
    capacity: Capacity | None = None  # None: keep the agent's (100 for a new one)
    specialization: Id = ""
    # Seconds between this agent's heartbeats, declared by the SDK and the heartbeater:
    # a claim whose threshold it could not keep fresh is refused.
    heartbeat_interval: Seconds | None = None


class Heartbeat(Request, tag="heartbeat"):
    """Agent-level heartbeat (no ``work_item_id``: refreshes the agent and all its items)
    or item-level heartbeat. One-way unless ``ack`` is set or something is wrong."""

    agent_id: Id
    work_item_id: Id | None = None
    lease: Lease | None = None
    progress: Percent | None = None
    ack: bool = False
    checkpoint: Checkpoint | None = None  # with work_item_id: kept for the next holder
    # This connection takes pushed ``Revoked`` messages: coordd tells it at once when
    # the agent loses a lease. Off by default, so a client that reads only replies (one
    # socket for requests and heartbeats) never meets a message it did not ask for.
    push: bool = False


class ItemBeat(msgspec.Struct, array_like=True):
    """One item of a ``HeartbeatBatch``: ``[work_item_id, lease]`` (compact on the wire)."""

    work_item_id: Id
    lease: Lease | None = None


Beats = Annotated[list[ItemBeat], msgspec.Meta(max_length=MAX_BATCH_ITEMS)]


class HeartbeatBatch(Request, tag="heartbeat_batch"):
    """Heartbeats for many items of one agent in one message."""

    agent_id: Id
    items: Beats = []
    ack: bool = False
    push: bool = False  # as in Heartbeat


# --- work items -----------------------------------------------------------


class Add(Request, tag="add"):
    """Put a pending item in the backlog: ``coordctl add``. With ``after`` it is
    blocked until each of those items completes with result ``success``."""

    work_type: Id
    description: Text
    priority: Priority = Priority.MEDIUM
    team: Id = ""
    work_item_id: Id | None = None
    stale_after: Seconds | None = None
    after: After | None = None


class Claim(Request, tag="claim"):
    """Create an item and claim it at once (the old script's ``claim``); refused
    (``conflict``) while an item named in ``after`` has not completed with success."""

    agent_id: Id
    work_type: Id
    description: Text
    priority: Priority = Priority.MEDIUM
    team: Id = ""
    work_item_id: Id | None = None
    stale_after: Seconds | None = None
    after: After | None = None


class ClaimNext(Request, tag="claim_next"):
    """Take the most urgent pending item (or the one named by ``work_item_id``)."""

    agent_id: Id
    work_type: Id | None = None
    team: Id | None = None
    work_item_id: Id | None = None


class Progress(Request, tag="progress"):
    """Report progress (0-100) on an item the caller holds."""

    work_item_id: Id
    progress: Percent
    agent_id: Id | None = None
    lease: Lease | None = None
    status: Id | None = None
    checkpoint: Checkpoint | None = None


class Complete(Request, tag="complete"):
    """Finish an item with a result and velocity points."""

    work_item_id: Id
    agent_id: Id | None = None
    lease: Lease | None = None
    result: Text = "success"
    velocity: Velocity = 0


class Release(Request, tag="release"):
    """Give an item back to the backlog (status ``pending``)."""

    work_item_id: Id
    agent_id: Id | None = None
    lease: Lease | None = None


class Retry(Request, tag="retry"):
    """Put a failed item (the dead-letter view: ``list --status failed``) back to
    pending: progress and recovery counts reset, the checkpoint kept. Operators only."""

    work_item_id: Id


# --- reads ------------------------------------------------------------------


class List(Request, tag="list"):
    """Items, filtered, in the order they were created; one page per request.

    ``cursor`` asks for pages: ``""`` for the first, then the ``next_cursor`` of the previous
    reply. The reply is then ``{"items": [...], "next_cursor": cursor or null}`` (null: no
    more). A page holds at most ``min(limit, MAX_PAGE)`` items and about
    ``MAX_PAGE_BYTES``, and may hold fewer (even none) with a ``next_cursor``: follow it.
    Without ``cursor`` (older clients) the reply is the plain list of the first page.
    The cursor is opaque; a page may repeat an item of the previous one if items were
    pruned meanwhile, never skip one."""

    status: Id | None = None
    team: Id | None = None
    agent_id: Id | None = None
    work_type: Id | None = None
    limit: Limit = MAX_PAGE
    ready: bool = False  # only pending items no dependency blocks (claimable now)
    cursor: Annotated[str, msgspec.Meta(max_length=MAX_CURSOR_LEN)] | None = None


class Show(Request, tag="show"):
    work_item_id: Id


class Agents(Request, tag="agents"):
    pass


class Status(Request, tag="status"):
    """Daemon health, counts and counters."""


# --- freshness -------------------------------------------------------------


# What ``check-stale`` and the dashboard list of past recoveries: the last hour.
RECOVERED_WINDOW = 3600.0


class CheckStale(Request, tag="check_stale"):
    """The stale items with silence, threshold and owner, and the items recovered
    within the last ``window`` seconds: ``coordctl check-stale``."""

    window: Seconds = RECOVERED_WINDOW


class RecoverStale(Request, tag="recover_stale"):
    """Recover every stale item, or the one named (stale or not): ``coordctl recover-stale``.
    Operators only. ``dry_run`` reports what would happen and changes nothing."""

    strategy: Strategy
    work_item_id: Id | None = None
    dry_run: bool = False


class Freshness(Request, tag="freshness"):
    """Fresh / potentially stale / stale counts, the stale items, the ``limit``
    active items worst first (silence over threshold), and the items recovered within
    ``window`` seconds: the dashboard."""

    limit: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 0
    window: Seconds = RECOVERED_WINDOW


# --- AI analyses (control socket only; answered when the provider is done) -----


# ``provider`` and ``model`` on an analysis override the daemon's defaults for that
# one analysis (``AI_PROVIDER=auto coordctl claim-enhanced ...``); None keeps them.
AiProvider = Literal["ollama", "claude", "auto"]


class AiPriorities(Request, tag="ai_priorities"):
    """Rank open work, name bottlenecks: ``coordctl ollama-priorities``."""

    model: Id | None = None
    fresh: bool = False
    provider: AiProvider | None = None


class AiOptimize(Request, tag="ai_optimize"):
    """Reassignments and teams: ``coordctl ollama-optimize``."""

    model: Id | None = None
    fresh: bool = False
    provider: AiProvider | None = None


class AiAnalyze(Request, tag="ai_analyze"):
    """A free question about ``data`` (None: the live open work and agents):
    ``coordctl ai-analyze PROMPT [MODEL]``."""

    prompt: Text
    data: Any = None
    model: Id | None = None
    fresh: bool = False
    provider: AiProvider | None = None


class AiRecommendClaim(Request, tag="ai_recommend_claim"):
    """Should this item be claimed, at which priority (``claim-enhanced``)."""

    work_type: Id
    description: Text
    priority: Priority = Priority.MEDIUM
    team: Id = ""
    model: Id | None = None
    fresh: bool = False
    provider: AiProvider | None = None


class AiStatus(Request, tag="ai_status"):
    """Providers, reachability, models, cache: ``coordctl ai-status``."""


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
    leader: str | None = None  # with not_leader: the leader's agent endpoint, if known


class Revoked(Reply, tag="revoked"):
    """Pushed, unasked, to the connections that heartbeated for the item's holder with
    ``push`` set, as soon as its recovery is durable: ``agent_id`` lost ``lease``."""

    work_item_id: str
    lease: int
    agent_id: str
    reason: str
    strategy: str
    new_holder: str | None = None


AnyReply = Ok | Error | Revoked

# Every request, in the order defined above: the codec's tagged union. Derived, not
# listed, so a new request is one Struct here; which socket may send it is decided
# where it is routed (``coordd/daemon/routes.py``), an edge decision, not a wire one.
REQUEST_TYPES: tuple[type[Request], ...] = tuple(Request.__subclasses__())


def _union(types: tuple[type, ...]) -> Any:
    u: Any = types[0]
    for t in types[1:]:
        u = u | t
    return u


class Codec:
    """One encoder and the typed decoders, built once (msgspec caches per type).

    The request decoder is built on first use: only the daemon decodes requests, and
    compiling the union of every request costs a client (each coordctl call) ~8 ms."""

    def __init__(self, request_types: tuple[type[Request], ...] = REQUEST_TYPES) -> None:
        self.encoder = msgspec.msgpack.Encoder()
        self._request_types = request_types
        self.reply_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(AnyReply)

    @functools.cached_property
    def request_decoder(self) -> msgspec.msgpack.Decoder[Any]:
        return msgspec.msgpack.Decoder(_union(self._request_types))

    def encode(self, msg: msgspec.Struct) -> bytes:
        return self.encoder.encode(msg)
