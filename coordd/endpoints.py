"""Which coordd to talk to among several (``COORDD_ENDPOINTS``): the leader.

With the PostgreSQL store, one coordd of a cluster leads and the others stand by. A
client starts with the first endpoint it was given. A ``not_leader`` reply names the
leader: go there. A timeout means the one we talked to may be dead: try the next one
(a standby answers ``not_leader`` until it has taken over, then serves). Shared by a
client's request socket and its heartbeat socket, so both move together. Thread-safe.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence


class Endpoints:
    def __init__(self, endpoints: Sequence[str]) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint")
        self._all = list(dict.fromkeys(endpoints))
        self._at = 0
        self._silent: set[str] = set()  # timed out since they last answered
        self._lock = threading.Lock()
        self.moves = 0  # how often the client changed endpoint (tests, logs)

    @property
    def several(self) -> bool:
        return len(self._all) > 1

    def current(self) -> str:
        with self._lock:
            return self._all[self._at]

    def answered(self, endpoint: str) -> None:
        """``endpoint`` replied (anything): it is alive."""
        with self._lock:
            self._silent.discard(endpoint)

    def timed_out(self, endpoint: str) -> None:
        """No reply from ``endpoint`` in time: move on to the next one not known silent."""
        with self._lock:
            self._silent.add(endpoint)
            if self._all[self._at] != endpoint:
                return  # someone moved already
            n = len(self._all)
            order = [(self._at + k) % n for k in range(1, n + 1)]
            alive = [i for i in order if self._all[i] not in self._silent]
            self._move((alive or order)[0])

    def not_leader(self, endpoint: str, leader: str | None) -> bool:
        """``endpoint`` is a standby and says the leader is ``leader``. Go there (True:
        resend at once), unless it is unknown or just went silent on us: then stay on
        this standby, which takes over when the lease expires (False: wait a moment)."""
        with self._lock:
            if not leader or leader == endpoint or leader in self._silent:
                return False
            if leader not in self._all:
                self._all.append(leader)  # a leader we were not told of: same keys apply
            self._move(self._all.index(leader))
            return True

    def _move(self, to: int) -> None:
        if to != self._at:
            self._at = to
            self.moves += 1
