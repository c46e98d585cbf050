"""The things coordd keeps: work items, agents, completions; the journal records that
carry them; the events it publishes; its limits; and the domain errors of the core.

Plain data only: no rules, no clock, nothing of coordd but ``coordd.kinds``. Every
other module of the core imports this one, so it sits at the bottom of the graph.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from coordd.kinds import Priority, Status

# --- domain errors: the server maps each to one stable error code ----------


class DomainError(Exception):
    code = "internal"


class BadRequest(DomainError):
    code = "bad_request"


class UnknownWork(DomainError):
    code = "unknown_work"


class UnknownAgent(DomainError):
    code = "unknown_agent"


class LeaseLost(DomainError):
    code = "lease_lost"


class NotOwner(DomainError):
    code = "not_owner"


class Conflict(DomainError):
    code = "conflict"


class NothingPending(DomainError):
    code = "nothing_pending"


class LimitReached(DomainError):
    code = "limit_reached"


# The largest sum coordd keeps (a team's velocity): msgpack's signed 64 bits.
MAX_TOTAL = 2**63 - 1


# --- the model ---------------------------------------------------------------


# gc=False: these hold only scalars and plain JSON data (never a reference back to a
# struct), so they cannot be part of a cycle; untracked, a million of them no longer
# lengthen every full garbage collection (measured 27 ms -> 3 ms per 1M objects).
# Only facts are fields: index data (the deadline heap) lives in ``State``. An older
# file's ``heap_deadline`` key is an unknown field, which msgspec skips on decode.
class WorkItem(msgspec.Struct, kw_only=True, gc=False):
    """One unit of work. Field names follow the old ``work_claims.json``."""

    work_item_id: str
    work_type: str
    description: str
    priority: Priority = Priority.MEDIUM
    team: str = ""
    status: Status = Status.PENDING
    agent_id: str | None = None
    claimed_at: float | None = None
    progress: int = 0
    stage: str | None = None
    completed_at: float | None = None
    result: str | None = None
    velocity_points: int | None = None
    last_heartbeat: float | None = None
    retry_count: int = 0
    recovery_reason: str | None = None
    recovered_at: float | None = None
    recovered_from: str | None = None
    lease: int = 0
    stale_after: float | None = None
    stale_since: float | None = None
    created_at: float = 0.0
    # The items this one waits for (``--after``): it is claimable once each of them has
    # completed with result ``success``. Whether it waits is derived, never stored.
    after: list[str] | None = None
    # A note from the holder for whoever takes the item next (kept across recovery
    # and retry; journaled only when it changes).
    checkpoint: str | None = None
    # Recoveries of any strategy since the item was last put back by an operator; past
    # max_recoveries the item is dead-lettered (failed, too_many_recoveries).
    recoveries: int = 0
    recovery_strategy: str | None = None  # of the last recovery: reassign, retry, fail
    # Fields of an imported legacy item that coordd has no use for, kept verbatim
    # so an export gives them back (reactor_id, estimated_duration, telemetry, ...).
    legacy: dict[str, Any] | None = None


class Agent(msgspec.Struct, kw_only=True, gc=False):
    agent_id: str
    team: str = ""
    capacity: int = 100
    specialization: str = ""
    status: str = "active"  # an agent's, not an item's: registered agents are "active"
    last_heartbeat: float | None = None
    registered_at: float = 0.0
    tasks_completed: int = 0
    heartbeat_interval: float | None = None  # as the agent declared it at register
    legacy: dict[str, Any] | None = None


class Completion(msgspec.Struct, kw_only=True, gc=False):
    """One line of the completion log (the old ``coordination_log.json``)."""

    work_item_id: str
    completed_at: float
    agent_id: str | None
    result: str
    velocity_points: int = 0
    team: str = ""
    legacy: dict[str, Any] | None = None


# --- journal records: physical, so replay needs no clock and no rules --------


class PutItem(msgspec.Struct, tag="item", array_like=True):
    item: WorkItem


class PutAgent(msgspec.Struct, tag="agent", array_like=True):
    agent: Agent


class AddCompletion(msgspec.Struct, tag="done", array_like=True):
    entry: Completion


class Applied(msgspec.Struct, tag="req", array_like=True):
    """A request that carried an id was applied, and this was its reply's data
    (msgpack): a resend of it (after a failover, say) gets this answer again and
    changes nothing. Journaled in the same batch as the transition itself."""

    request_id: str
    at: float
    reply: bytes


class Pruned(msgspec.Struct, tag="pruned", array_like=True):
    """Retention: these finished items are gone, and the completion log's leading
    entries logged before ``log_before`` (wall time). Physical like every record, and
    idempotent: applied twice (a salvage may replay a record twice) it changes nothing
    more."""

    work_item_ids: list[str]
    log_before: float = 0.0


Record = PutItem | PutAgent | AddCompletion | Applied | Pruned


class Event(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Something an observer may care about: published on the events socket and logged."""

    event: str
    at: float
    work_item_id: str | None = None
    agent_id: str | None = None
    lease: int | None = None
    detail: str | None = None


class Published(Event, kw_only=True, omit_defaults=True):
    """An event as it goes out on the events socket: the ``Event`` (a subscriber that
    decodes ``Event`` reads it unchanged) plus ``seq``, its number (1, 2, 3... per daemon
    process: a gap says events were dropped), and ``item``, the item as it was when the
    batch was published (a subscriber keeping a copy needs no ``show``)."""

    seq: int | None = None
    item: WorkItem | None = None


class Revocation(msgspec.Struct, kw_only=True, gc=False):
    """A lease lost to a recovery: what the edge pushes to the holder's connections
    once the recovery is durable, and what its next agent-level heartbeat answers."""

    work_item_id: str
    lease: int  # the lost lease
    agent_id: str  # who lost it
    reason: str
    strategy: str
    new_holder: str | None = None


class ItemBeatLike(Protocol):
    """One item of a heartbeat batch (``protocol.ItemBeat`` on the wire)."""

    work_item_id: str
    lease: int | None


class Limits(msgspec.Struct, kw_only=True):
    max_items: int = 5_000_000
    max_agents: int = 100_000
    max_id_len: int = 200
    max_description_len: int = 10_000
