"""File helpers of the file store: atomic replace, directory fsync, the state-dir lock,
names for kept copies, and the errors every storage module raises."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

FSCK_HINT = "run `coordd fsck` to inspect and `coordd fsck --repair` to repair (it keeps a copy)"


class StoreError(Exception):
    """The store cannot be read or written; the message names file, offset and way out."""


class Corrupt(StoreError):
    """A file holds what no coordd wrote: refuse it, naming the file and the byte offset."""

    def __init__(self, path: Path, offset: int, what: str) -> None:
        super().__init__(f"{path} is corrupt at byte offset {offset}: {what}; {FSCK_HINT}")
        self.path = path
        self.offset = offset
        self.what = what


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, before_rename: Callable[[], None] | None = None) -> None:
    """Replace ``path`` with ``data``: tmp + fsync + rename + fsync dir. On failure the
    previous file is untouched and the tmp file removed. ``before_rename`` runs once
    the new data is durable, before it takes the name (to keep the old file)."""
    # The tmp name carries our pid so an orphaned writer can never share it.
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if before_rename is not None:
            before_rename()
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (a write may be short)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def lock_state_dir(state_dir: str | Path) -> int:
    """Take the state directory's lock (one coordd, or one offline tool, at a time):
    the locked fd; raises StoreError naming the pid that holds it."""
    # ZeroMQ's ipc bind replaces an existing socket file, so a second daemon on the
    # same directory would silently steal the first one's clients: refuse it here.
    path = Path(state_dir) / "coordd.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StoreError(
            f"another coordd (pid {other}) is running on {state_dir};"
            " stop it or use another COORDINATION_DIR"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def corrupt_copy_name(path: Path) -> Path:
    """Where a repair keeps a copy of ``path`` (time and pid: never overwrites one)."""
    return path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")


def os_reason(e: OSError, path: Path) -> str:
    """An OSError as one line: reason, errno name, file."""
    name = getattr(e, "filename", None) or path
    code = errno.errorcode.get(e.errno or 0, str(e.errno))
    return f"{e.strerror or e} ({code}) on {name}"
