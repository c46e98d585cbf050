"""The closed vocabularies of coordd, defined once: item status, recovery strategy,
priority and fsync policy.

They are ``StrEnum``s so that a member *is* its wire and disk string: msgspec encodes
``Status.ACTIVE`` as ``"active"``, old files and old clients keep working, and a
comparison with a plain string still holds. This module imports nothing, so every
layer (protocol, core, storage, daemon, CLI, metrics) can use it.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """Where a work item is in its life."""

    PENDING = "pending"
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"


class Strategy(StrEnum):
    """What recovery does with a stale item; ``none`` only reports it."""

    REASSIGN = "reassign"
    RETRY = "retry"
    FAIL = "fail"
    NONE = "none"


class Priority(StrEnum):
    """How urgent an item is. Declared most urgent first: the order is the rank."""

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class FsyncPolicy(StrEnum):
    """When the journal is made durable (Redis's appendfsync, by the same names)."""

    ALWAYS = "always"
    EVERYSEC = "everysec"
    NEVER = "never"


# Rank of each priority, 0 = most urgent: the order claim-next serves pending work in.
PRIORITY_RANK: dict[str, int] = {p.value: i for i, p in enumerate(Priority)}
