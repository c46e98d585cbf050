"""coordctl: the operator's command line. This module only assembles it.

The group, its context and the shared helpers are in ``coordctl.base``; the commands
live in ``coordctl.commands``, one module per topic. Each module lists its commands
in ``COMMANDS``; a module missing here is a command missing from coordctl (and a
failing test: ``tests/cli/test_structure.py``).
"""

from __future__ import annotations

from coordctl.base import main
from coordctl.commands import ai, events, freshness, heartbeat, items, keys, mcp, run, schema

MODULES = (items, freshness, heartbeat, run, events, ai, keys, mcp, schema)

for _module in MODULES:
    for _command in _module.COMMANDS:
        main.add_command(_command)

__all__ = ["main"]
