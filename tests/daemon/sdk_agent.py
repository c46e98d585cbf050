"""A real agent process using the SDK, driven by the end-to-end tests.

    sdk_agent.py ENDPOINT AGENT_ID INTERVAL claim TYPE DESCRIPTION   # claim, hold forever
    sdk_agent.py ENDPOINT AGENT_ID INTERVAL next                     # claim-next, complete
    sdk_agent.py ENDPOINT AGENT_ID INTERVAL checkpoint TYPE DESC NOTE  # claim, save NOTE, hold

Prints one JSON line with the item id and lease once it holds the item.
"""

from __future__ import annotations

import json
import sys
import time

from coordd.agent import Agent


def main() -> None:
    endpoint, agent_id, interval, mode, *rest = sys.argv[1:]
    agent = Agent(endpoint, agent_id, float(interval))
    lease = agent.lease(rest[0], rest[1]) if mode in ("claim", "checkpoint") else agent.lease()
    if mode == "checkpoint":
        lease.progress(40, checkpoint=rest[2])
    print(json.dumps({"work_item_id": lease.work_item_id, "lease": lease.lease}), flush=True)
    if mode in ("claim", "checkpoint"):
        # Work "forever" (the test kills us); stop if the lease is ever lost.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not lease.lost.wait(0.05):
            pass
        print(json.dumps({"lost": lease.lost_reason}), flush=True)
        return
    lease.progress(50)
    lease.complete("success", velocity=2)
    print(json.dumps({"completed": lease.work_item_id, "beats": agent.heartbeats_sent}), flush=True)
    agent.close()


if __name__ == "__main__":
    main()
