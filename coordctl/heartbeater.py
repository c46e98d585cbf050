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
        link: rpc.Link,
        agent_id: str,
        interval: float,
        timeout: float,
        work_item_id: str | None,
        lease: int | None,
    ) -> None:
        self.link = link
        self.agent_id = agent_id
        self.interval = interval
        self.timeout = timeout
        self.work_item_id = work_item_id
        self.lease = lease
        self.stop = False
        self.lost_own = False  # with --work: its item was revoked
        self.codec = protocol.Codec()
        self.rpc = rpc.Caller(link, timeout)
        self.rpc.on_push = self.on_revoked

    def on_revoked(self, r: protocol.Revoked) -> None:
        """coordd pushed that a lease of this agent is lost: say so (and stop, if it
        was the one item this heartbeater keeps)."""
        log.warning(
            "lease_revoked",
            agent_id=r.agent_id,
            work_item_id=r.work_item_id,
            lease=r.lease,
            strategy=r.strategy,
            reason=r.reason,
            new_holder=r.new_holder,
        )
        if r.work_item_id == self.work_item_id:
            self.lost_own = True
            self.stop = True

    def beat(self, expected: frozenset[str] = frozenset()) -> str | None:
        """One acknowledged heartbeat; the error code when coordd refused it (a code in
        ``expected`` is normal at this point and not logged as a warning)."""
        return self._ask(
            protocol.Heartbeat(
                agent_id=self.agent_id,
                work_item_id=self.work_item_id,
                lease=self.lease,
                ack=True,
                push=True,  # a lost lease is logged the moment coordd pushes it
            ),
            expected,
        )

    def _ask(self, req: protocol.Request, expected: frozenset[str] = frozenset()) -> str | None:
        try:
            reply = self.rpc.call(req)
        except rpc.Timeout:
            log.warning("coordd_unreachable", endpoint=self.link.address(), timeout=self.timeout)
            return None
        if isinstance(reply, protocol.Error):
            if reply.code in expected:
                return reply.code
            log.warning(
                "heartbeat_refused", agent_id=self.agent_id, code=reply.code, message=reply.message
            )
            return reply.code
        for r in (reply.data or {}).get("lost", []) if isinstance(reply.data, dict) else []:
            # Lost since the last heartbeat, while no push reached us (e.g. reconnecting).
            log.warning("lease_lost", agent_id=self.agent_id, **r)
        log.debug("answered", agent_id=self.agent_id, op=type(req).__name__)
        return None

    def _drop_or_log(self, raw: bytes) -> None:
        """A message while sleeping: a pushed revocation is logged, a late reply dropped."""
        try:
            msg = self.codec.reply_decoder.decode(raw)
        except Exception:
            return
        if isinstance(msg, protocol.Revoked):
            self.on_revoked(msg)

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
                    self._drop_or_log(sock.recv())
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
        # The old script's order is heartbeat-start, then claim: the agent is registered
        # (created if coordd does not know it yet) with its heartbeat interval, so a claim
        # whose threshold these heartbeats could not keep fresh is refused. Unknown later
        # means coordd lost it: stop.
        self._ask(protocol.Register(agent_id=self.agent_id, heartbeat_interval=self.interval))
        log.info("agent_registered", agent_id=self.agent_id, heartbeat_interval=self.interval)
        while not self.stop:
            code = self.beat()
            if code in FATAL_CODES:
                log.warning("heartbeater_stopping", agent_id=self.agent_id, reason=code)
                return 1
            self._sleep()
        if self.lost_own:
            log.warning("heartbeater_stopping", agent_id=self.agent_id, reason="lease_revoked")
            return 1
        log.info("heartbeater_stopped", agent_id=self.agent_id, reason="signal")
        return 0


@click.command()
@click.option("--endpoint", "endpoints", required=True, multiple=True)
@click.option("--curve-key", default="", help="The agent's NAME.key_secret file.")
@click.option("--server-key", default="", help="The server's public key file (or Z85).")
@click.option("--agent", "agent_id", required=True)
@click.option("--interval", type=float, required=True)
@click.option("--timeout", type=float, default=5.0)
@click.option("--pid-file", required=True)
@click.option("--work", "work_item_id")
@click.option("--lease", type=int)
@click.option("--log-format", default="json")
def main(
    endpoints: tuple[str, ...],
    curve_key: str,
    server_key: str,
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
    try:
        link = rpc.Link(endpoints, rpc.load_curve(curve_key, server_key))
    except rpc.KeyFileError as e:
        log.error("heartbeater_keys", error=str(e))
        os.unlink(pid_file)
        sys.exit(2)
    hb = Heartbeater(link, agent_id, interval, timeout, work_item_id, lease)

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
