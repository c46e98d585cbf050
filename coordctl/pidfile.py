"""The heartbeater's pid file: who holds it, whether that process lives.

Apart from ``coordctl.heartbeater`` so the commands that only look at the pid file
(``heartbeat-stop``, the dashboard, ``claim-enhanced``) do not import the
heartbeater's logging: coordctl start-up stays small.
"""

from __future__ import annotations

import os

__all__ = ["claim_pid_file", "pid_alive", "read_pid"]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip() or "0") or None
    except (FileNotFoundError, ValueError):
        return None


def claim_pid_file(path: str) -> bool:
    """Write our pid with O_EXCL; False when a live heartbeater already holds it."""
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            other = read_pid(path)
            if other is not None and pid_alive(other):
                return False
            os.unlink(path)  # a dead one's file: take its place
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return True
    return False
