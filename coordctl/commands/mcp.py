"""``coordctl mcp``: serve coordd to an LLM client as MCP tools over stdio.

Only the command is here; the server (and the MCP SDK it needs) is imported when the
command runs, so every other coordctl command starts as fast as before.
"""

from __future__ import annotations

import time

import click

from coordctl.base import Ctx


@click.command("mcp", short_help="Serve coordd to an LLM client as MCP tools")
@click.option("--agent", help="Agent id to act as (default: $AGENT_ID, else a new agent_<ns>).")
@click.option(
    "--ai/--no-ai",
    default=None,
    help="Offer the AI analyses (default: when the local control socket is usable).",
)
@click.pass_obj
def mcp(ctx: Ctx, agent: str | None, ai: bool | None) -> None:
    """MCP server over stdio acting as one agent (for Claude Code and other MCP clients).

    Tools: claim, claim_next, progress, complete, release, list, show, check_stale,
    status (and the AI analyses with the control socket). While it runs it heartbeats
    every item it holds; when the client exits, stdin closes, the server ends and the
    items are recovered after the stale threshold.
    """
    from coordctl import mcp_server

    mcp_server.main(ctx.cfg, ctx.agent_id(agent) or f"agent_{time.time_ns()}", ai)


COMMANDS = [mcp]
