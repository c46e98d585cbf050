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
    # Our events are snake_case words; a library's free-text message gets quoted.
    name = _kv(event.pop("event", ""))
    # None says nothing in a key=value line; leaving it out keeps lines short.
    rest = " ".join(f"{k}={_kv(v)}" for k, v in event.items() if v is not None)
    return f"<{prio}>{name} {rest}".rstrip()


def _kv(v: Any) -> str:
    s = str(v)
    if not s or any(c in s for c in ' ="\n'):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


def configure(fmt: str, level: str, env: Mapping[str, str], stream: TextIO | None = None) -> str:
    """Configure structlog (and the libraries' stdlib logging); returns the format chosen."""
    out = stream or sys.stderr
    fmt = pick_format(fmt, env, out)
    render = _render_chain(fmt, out)
    structlog.configure(
        processors=[structlog.processors.add_log_level, *render],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    _route_stdlib(render, out)
    return fmt


def _render_chain(fmt: str, out: TextIO) -> list[Any]:
    if fmt == "journal":
        return [structlog.processors.format_exc_info, _journal_renderer]
    if fmt == "json":
        return [
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ]
    return [
        structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False),
        structlog.dev.ConsoleRenderer(colors=out.isatty()),
    ]


def _route_stdlib(render: list[Any], out: TextIO) -> None:
    """Libraries (httpx, anthropic, ...) log through ``logging``: same format, same
    stream, warnings and up only (httpx logs every request at info)."""
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
