"""An MCP client process (the MCP SDK's own stdio client), for the test that kills it.

    mcp_client.py COORDCTL AGENT_ID [WORK_TYPE]

Starts ``COORDCTL mcp --agent AGENT_ID`` as its stdio server, claims the next pending
item (of WORK_TYPE), prints one JSON line with the item, then waits to be killed.
"""

from __future__ import annotations

import json
import os
import sys

import anyio
from mcp import Client, StdioServerParameters


async def main(coordctl: str, agent_id: str, work_type: str | None = None) -> None:
    params = StdioServerParameters(
        command=coordctl, args=["mcp", "--agent", agent_id], env=dict(os.environ)
    )
    async with Client(params, mode="legacy") as client:
        result = await client.call_tool("claim_next", {"work_type": work_type})
        print(json.dumps(result.structured_content), flush=True)
        await anyio.sleep(120)


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:4])
