"""What a store reports, shared by every store (file, PostgreSQL) without a cycle
through ``store.py``, which picks among them."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

# A callback that receives the duration of one journal sync (fsync or commit), in seconds.
ObserveFsync = Callable[[float], None]


class LoadReport(msgspec.Struct, kw_only=True):
    """What a load found: a snapshot or not, records replayed, torn bytes dropped."""

    snapshot: bool = False
    records: int = 0
    torn_bytes: int = 0
    generation: int = 1
    fallback: str = ""  # the copy of a damaged newest snapshot, when the previous was used
    upgraded_from: int = 0  # 1: format-1 files were read and written once in format 2


class Role(msgspec.Struct, kw_only=True, frozen=True):
    """Whether this process may write the store, as its store sees it now.

    A store of one process (files) always leads. A shared store (PostgreSQL) leads
    while it holds the cluster's lease; otherwise it is a standby that follows, and
    ``leader`` says where the leader serves agents. ``problem`` set on a leader: it
    must stop serving (lease refused or not renewed in time, or a write failed)."""

    leader: bool = True
    leader_address: str = ""
    term: int = 0
    problem: str = ""


LEADING = Role()
