"""The background heartbeater of ``coordctl heartbeat-start``, for shell agents.

Run as its own detached process (``python -m coordctl.heartbeater ...``). Every
interval it sends a Heartbeat for its agent (all items the agent holds) or, when
started for one item, for that item and lease. It owns the pid file: created with
O_EXCL (so two starters cannot both win), removed on the way out. It stops, with a
log line, on SIGTERM/SIGINT, when coordd no longer knows the agent, or when the
item's lease is lost.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from typing import Any

import click
import structlog
import zmq

from coordctl.pidfile import claim_pid_file, pid_alive, read_pid  # noqa: F401 (re-exported)
from coordd import logs, protocol, rpc

log = structlog.get_logger("coordctl.heartbeater")

# Answers after which heartbeating is pointless: say so and stop.
FATAL_CODES = frozenset({"unknown_agent", "lease_lost", "not_owner", "unknown_work", "conflict"})


class Heartbeater:
    def __init__(
        self,
        endpoint: str,
        agent_id: str,
        interval: float,
        timeout: float,
        work_item_id: str | None,
        lease: int | None,
    ) -> None:
        self.endpoint = endpoint
        self.agent_id = agent_id
        self.interval = interval
        self.timeout = timeout
        self.work_item_id = work_item_id
        self.lease = lease
        self.stop = False
        self.rpc = rpc.Caller(endpoint, timeout)

    def beat(self, expected: frozenset[str] = frozenset()) -> str | None:
        """One acknowledged heartbeat; the error code when coordd refused it (a code in
        ``expected`` is normal at this point and not logged as a warning)."""
        return self._ask(
            protocol.Heartbeat(
                agent_id=self.agent_id, work_item_id=self.work_item_id, lease=self.lease, ack=True
            ),
            expected,
        )

    def _ask(self, req: protocol.Request, expected: frozenset[str] = frozenset()) -> str | None:
        try:
            reply = self.rpc.call(req)
        except rpc.Timeout:
            log.warning("coordd_unreachable", endpoint=self.endpoint, timeout=self.timeout)
            return None
        if isinstance(reply, protocol.Error):
            if reply.code in expected:
                return reply.code
            log.warning(
                "heartbeat_refused", agent_id=self.agent_id, code=reply.code, message=reply.message
            )
            return reply.code
        log.debug("answered", agent_id=self.agent_id, op=type(req).__name__)
        return None

    def _sleep(self) -> None:
        """Wait one interval; a signal cuts it short (pyzmq retries a poll on EINTR,
        so the handler's flag alone would only be seen an interval later)."""
        rd, wr = socket.socketpair()
        rd.setblocking(False)
        wr.setblocking(False)
        previous = signal.set_wakeup_fd(wr.fileno(), warn_on_full_buffer=False)
        try:
            poller = zmq.Poller()
            poller.register(rd.fileno(), zmq.POLLIN)
            sock = self.rpc.sock
            poller.register(sock, zmq.POLLIN)
            deadline = time.monotonic() + self.interval
            while not self.stop and time.monotonic() < deadline:
                ready = dict(poller.poll(max(1, int((deadline - time.monotonic()) * 1000))))
                if sock in ready:
                    sock.recv()  # a stray late reply: drop it
        finally:
            signal.set_wakeup_fd(previous)
            rd.close()
            wr.close()

    def run(self) -> int:
        log.info(
            "heartbeater_started",
            agent_id=self.agent_id,
            pid=os.getpid(),
            interval=self.interval,
            work_item_id=self.work_item_id,
        )
        # The old script's order is heartbeat-start, then claim: an agent coordd does not
        # know yet is registered once. Unknown later means coordd lost it: stop.
        first = frozenset({"unknown_agent"})
        if self.work_item_id is None and self.beat(first) == "unknown_agent":
            self._ask(protocol.Register(agent_id=self.agent_id))
            log.info("agent_registered", agent_id=self.agent_id)
        while not self.stop:
            code = self.beat()
            if code in FATAL_CODES:
                log.warning("heartbeater_stopping", agent_id=self.agent_id, reason=code)
                return 1
            self._sleep()
        log.info("heartbeater_stopped", agent_id=self.agent_id, reason="signal")
        return 0


@click.command()
@click.option("--endpoint", required=True)
@click.option("--agent", "agent_id", required=True)
@click.option("--interval", type=float, required=True)
@click.option("--timeout", type=float, default=5.0)
@click.option("--pid-file", required=True)
@click.option("--work", "work_item_id")
@click.option("--lease", type=int)
@click.option("--log-format", default="json")
def main(
    endpoint: str,
    agent_id: str,
    interval: float,
    timeout: float,
    pid_file: str,
    work_item_id: str | None,
    lease: int | None,
    log_format: str,
) -> None:
    logs.configure(log_format, "info", {})
    if not claim_pid_file(pid_file):
        log.error("heartbeater_already_running", pid=read_pid(pid_file), pid_file=pid_file)
        sys.exit(1)
    hb = Heartbeater(endpoint, agent_id, interval, timeout, work_item_id, lease)

    def on_signal(_signum: int, _frame: Any) -> None:
        hb.stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        status = hb.run()
    finally:
        if read_pid(pid_file) == os.getpid():
            os.unlink(pid_file)
    sys.exit(status)


if __name__ == "__main__":
    main()
