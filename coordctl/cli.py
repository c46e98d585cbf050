"""coordctl: the operator's command line. This module only assembles it.

The group, its context and the shared helpers are in ``coordctl.base``; the commands
live in ``coordctl.commands``, one module per topic. Each module lists its commands
in ``COMMANDS``; ``COMMAND_MODULES`` below says which module holds which command, so a
command imports its own module and nothing else (``coordctl status`` never pays for
the heartbeater's logging, rich, the agent SDK or the key tools): shell agents call
coordctl in loops. ``tests/cli/test_structure.py`` checks the table against the
modules and the README.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

from coordctl.base import main

# Command name -> module of coordctl.commands that defines it.
COMMAND_MODULES: dict[str, str] = {
    **dict.fromkeys(
        (
            "add",
            "claim",
            "claim-next",
            "progress",
            "complete",
            "release",
            "register",
            "list",
            "show",
            "agents",
            "status",
            "snapshot",
        ),
        "items",
    ),
    **dict.fromkeys(
        ("check-stale", "recover-stale", "freshness-dashboard", "claim-enhanced", "retry"),
        "freshness",
    ),
    **dict.fromkeys(("heartbeat", "heartbeat-start", "heartbeat-stop"), "heartbeat"),
    "run": "run",
    "events": "events",
    **dict.fromkeys(("ollama-priorities", "ollama-optimize", "ai-analyze", "ai-status"), "ai"),
    "keys": "keys",
    "mcp": "mcp",
    "schema": "schema",
    "web-token": "web",
}
MODULE_NAMES = tuple(dict.fromkeys(COMMAND_MODULES.values()))


def load(name: str) -> ModuleType:
    """Import one command module and put its commands on the group."""
    module = importlib.import_module(f"coordctl.commands.{name}")
    for command in module.COMMANDS:
        if command.name not in main.commands:
            main.add_command(command)
    return module


def modules() -> list[ModuleType]:
    """Every command module, loaded (for tests, ``--help`` and completion)."""
    return [load(name) for name in MODULE_NAMES]


main.lazy = {name: functools.partial(load, module) for name, module in COMMAND_MODULES.items()}

__all__ = ["main"]
