"""structlog, configured once for the whole process.

Formats: ``console`` (people at a terminal), ``json`` (log shippers), ``journal``
(one ``key=value`` line per event with the ``<N>`` syslog priority prefix that
journald turns into a priority, and no timestamp of our own: journald stamps it).
``auto`` picks ``journal`` when ``JOURNAL_STREAM`` names the stream we write to
(systemd sets it to that stream's ``device:inode``; a child whose stderr was
redirected to a file inherits the variable but must not use the journal format),
else ``console``.

Event names are short snake_case verbs and ids are keys, never interpolated:
``log.warning("stale_detected", work_item_id=..., agent_id=...)``. Events other
modules are expected to log with their ids: ``snapshot_failed`` (error, ``path``),
``provider_fallback`` (warning, ``provider``, ``fallback``, ``analysis``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# syslog priorities as journald reads them from a "<N>" prefix.
SYSLOG_PRIORITY = {
    "debug": 7,
    "info": 6,
    "warning": 4,
    "warn": 4,
    "error": 3,
    "critical": 2,
    "exception": 3,
}


def pick_format(fmt: str, env: Mapping[str, str], stream: TextIO | None = None) -> str:
    if fmt != "auto":
        return fmt
    return "journal" if _writes_to_journal(env, stream or sys.stderr) else "console"


def _writes_to_journal(env: Mapping[str, str], stream: TextIO) -> bool:
    journal = env.get("JOURNAL_STREAM", "")
    if not journal:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return True  # no file descriptor to compare: trust the variable
    return journal == f"{st.st_dev}:{st.st_ino}"


def _journal_renderer(_: Any, method: str, event: dict[str, Any]) -> str:
    level = event.pop("level", method)
    prio = SYSLOG_PRIORITY.get(level, 6)
    name = event.pop("event", "")
    # None says nothing in a key=value line; leaving it out keeps lines short.
    rest = " ".join(f"{k}={_kv(v)}" for k, v in event.items() if v is not None)
    return f"<{prio}>{name} {rest}".rstrip()


def _kv(v: Any) -> str:
    s = str(v)
    if not s or any(c in s for c in ' ="\n'):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


def configure(fmt: str, level: str, env: Mapping[str, str], stream: TextIO | None = None) -> str:
    """Configure structlog; returns the format chosen."""
    fmt = pick_format(fmt, env, stream)
    processors: list[Any] = [structlog.processors.add_log_level]
    if fmt == "journal":
        processors += [structlog.processors.format_exc_info, _journal_renderer]
    elif fmt == "json":
        processors += [
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ]
    else:
        processors += [
            structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False),
            structlog.dev.ConsoleRenderer(colors=(stream or sys.stderr).isatty()),
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=True,
    )
    return fmt
