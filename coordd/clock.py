"""The two clocks coordd reads, in one object: wall time for what people read and files
keep, monotonic time for every duration.

Silence, deadlines, the tick, the snapshot schedule and uptime are measured on the
monotonic clock, which never steps: an NTP correction or a resumed VM moves the wall
clock by minutes and, measured on it, once recovered every live item at once (issue
14, finding 9). The pure core is handed the monotonic ``now`` and the wall-minus-
monotonic offset of the moment, so it measures on one and stamps with the other.
Across a restart the monotonic clock starts anew; the restart grace covers the gap.

Only the daemon's edges read a clock; tests inject a ``FakeClock`` that can step the
wall clock without moving the monotonic one.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def wall(self) -> float:
        """Seconds since the epoch (may step)."""
        ...

    def mono(self) -> float:
        """Seconds on a clock that never steps (only differences mean anything)."""
        ...


class SystemClock:
    """The machine's clocks."""

    def wall(self) -> float:
        return time.time()

    def mono(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock for tests: ``advance`` moves both, ``step_wall`` only the wall clock
    (what an NTP step or a resumed VM does)."""

    def __init__(self, wall: float = 1_750_000_000.0, mono: float = 1000.0) -> None:
        self._wall = wall
        self._mono = mono

    def wall(self) -> float:
        return self._wall

    def mono(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._mono += seconds

    def step_wall(self, seconds: float) -> None:
        self._wall += seconds
