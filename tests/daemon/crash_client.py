"""One client process of the crash test: claim and complete as fast as coordd answers,
and append every acknowledged transition to its own file before doing anything else.

    python -m tests.daemon.crash_client ENDPOINT NAME OUTFILE SECONDS

Stops when the daemon stops answering (it was killed) or after SECONDS.
"""

from __future__ import annotations

import os
import sys
import time

import zmq

from coordd import protocol


def main(endpoint: str, name: str, outfile: str, seconds: float) -> None:
    codec = protocol.Codec()
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 1000)
    sock.connect(endpoint)
    out = os.open(outfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def call(req: protocol.Request) -> protocol.Ok | protocol.Error | None:
        sock.send(codec.encode(req))
        try:
            return codec.reply_decoder.decode(sock.recv())  # type: ignore[no-any-return]
        except zmq.Again:
            return None  # the daemon is gone

    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        wid = f"{name}-{n}"
        n += 1
        reply = call(protocol.Claim(agent_id=name, work_type="crash", description="x",
                                    work_item_id=wid))  # fmt: skip
        if reply is None:
            return
        if not isinstance(reply, protocol.Ok):
            continue
        lease = reply.data["lease"]
        os.write(out, f"claimed {wid} {lease}\n".encode())
        if n % 3 == 0:
            continue  # leave some active
        reply = call(protocol.Complete(work_item_id=wid, agent_id=name, lease=lease, velocity=1))
        if reply is None:
            return
        if isinstance(reply, protocol.Ok):
            os.write(out, f"completed {wid}\n".encode())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
