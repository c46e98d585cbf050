"""What a standby coordd serves: the read-only requests, from the state it follows;
everything else is refused with the leader's address, so a client can go there.

A standby is a coordd whose store is shared with a leader (PostgreSQL, same
``cluster``): it keeps the leader's state in memory by following its journal and
takes over when the leader's lease expires (``Daemon._take_over``).
"""

from __future__ import annotations

from coordd import protocol as p
from coordd.protocol import Error
from coordd.storage.store import Role

# Served by a standby: they read the state and change nothing (an allow-list: a new
# request is refused on a standby until someone decides it is a read).
READS: frozenset[type[p.Request]] = frozenset(
    {p.Status, p.List, p.Show, p.Agents, p.CheckStale, p.Freshness}
)


def refusal(role: Role) -> Error:
    """The reply to a write (or a heartbeat) sent to a standby."""
    where = role.leader_address or "unknown (no leader holds the lease)"
    return Error(
        code="not_leader",
        message=f"this coordd is a standby; the leader is at {where}",
        leader=role.leader_address or None,
    )


def status_line(role: Role) -> str:
    """systemd's STATUS= for a standby."""
    return f"standby (leader: {role.leader_address or 'unknown'})"
