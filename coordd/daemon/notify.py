"""Talking to systemd: readiness, status, watchdog, reload and stop (sd_notify).

Everything here is silently off when ``NOTIFY_SOCKET`` is not in the environment we
are given (a terminal, a test, a container without systemd). The event loop calls
``ready()``, ``status()``, ``ping()``, ``reloading()`` and ``stopping()``; this module
decides whether a message is due and sends it. The watchdog is fed from the loop
itself, never from a thread: a loop that is stuck stops the pings, and systemd
restarts it after ``WatchdogSec=``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

import sdnotify

Monotonic = Callable[[], float]


class Notifier:
    """sd_notify messages for one process. ``enabled`` is False outside systemd."""

    def __init__(self, env: Mapping[str, str], monotonic: Monotonic = time.monotonic) -> None:
        self.monotonic = monotonic
        self._sd: sdnotify.SystemdNotifier | None = None
        if env.get("NOTIFY_SOCKET"):
            # sdnotify reads NOTIFY_SOCKET from the process environment itself; the
            # caller hands us that same environment (cli passes os.environ).
            sd = sdnotify.SystemdNotifier()
            self._sd = sd if sd.socket is not None else None
        self.watchdog_interval = _watchdog_interval(env)
        self.next_ping = float("inf")
        self._last_status = ""

    @property
    def enabled(self) -> bool:
        return self._sd is not None

    def _send(self, message: str) -> None:
        if self._sd is not None:
            self._sd.notify(message)

    def ready(self, status: str = "") -> None:
        """Every socket is bound and the state is loaded: systemd may start dependants."""
        self._send("READY=1" + (f"\nSTATUS={status}" if status else ""))
        self._last_status = status
        self._arm()

    def status(self, text: str) -> None:
        """A one-line summary for ``systemctl status``; sent only when it changed."""
        if text != self._last_status:
            self._send(f"STATUS={text}")
            self._last_status = text

    def reloading(self) -> None:
        # MONOTONIC_USEC lets Type=notify-reload (systemd >= 253) match this reload to
        # the SIGHUP it sent; older systemd ignores the extra field.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def ping(self) -> None:
        """Feed the watchdog if a ping is due; cheap to call on every wake-up."""
        now = self.monotonic()
        if now >= self.next_ping:
            self._send("WATCHDOG=1")
            self.next_ping = now + self.watchdog_interval

    def _arm(self) -> None:
        if self.enabled and self.watchdog_interval < float("inf"):
            self._send("WATCHDOG=1")
            self.next_ping = self.monotonic() + self.watchdog_interval

    def seconds_to_ping(self) -> float:
        """How long the loop may sleep before the watchdog needs feeding."""
        return max(0.0, self.next_ping - self.monotonic())


def _watchdog_interval(env: Mapping[str, str]) -> float:
    """Half of WATCHDOG_USEC (systemd's advice), or infinity when no watchdog is set.

    WATCHDOG_PID names the process the watchdog is meant for; a child that inherited
    the variables must not feed its parent's watchdog.
    """
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return float("inf")
    if pid and pid != str(os.getpid()):
        return float("inf")
    return int(usec) / 2 / 1_000_000
