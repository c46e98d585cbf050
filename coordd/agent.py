"""The agent SDK: claim work, heartbeat it in the background, hear when it is lost.

    agent = Agent("ipc:///run/coordd/agents.sock", "agent_7", heartbeat_interval=60)
    with agent.lease("build", "compile the kernel", priority="high") as lease:
        for step in steps:
            if lease.lost.is_set():
                break  # recovered while we were away: stop, someone else has it
            do(step)
            lease.progress(step.percent)
        lease.complete("success", velocity=3)
    agent.close()

ZeroMQ sockets are not thread-safe, so the SDK uses two DEALER sockets: one owned by
the heartbeat thread (it alone sends heartbeats and reads their rare replies) and one
for requests, shared by the caller's threads under a lock. Every interval the thread
sends ONE ``HeartbeatBatch`` for all the leases this agent holds. Heartbeats are
one-way: coordd answers only when something is wrong, and an answer naming an item
sets that lease's ``lost`` event.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

import msgspec
import zmq

from coordd import protocol, rpc
from coordd.kinds import Priority

STOP_CHECK = 0.2  # seconds; how soon the heartbeat thread notices close()


class AgentError(Exception):
    """coordd refused a request (``code`` is the protocol's error code)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class LeaseLostError(AgentError):
    """The item is no longer ours (recovered, reassigned, released)."""


class AgentTimeout(AgentError):
    def __init__(self, message: str) -> None:
        super().__init__("timeout", message)


class Lease:
    """One held work item. ``lost`` is set when coordd says the lease is no longer ours."""

    def __init__(self, agent: Agent, item: dict[str, Any]) -> None:
        self.agent = agent
        self.item = item
        self.work_item_id: str = item["work_item_id"]
        self.lease: int = item["lease"]
        self.lost = threading.Event()
        self.lost_reason = ""
        self.done = False

    def progress(self, percent: int, status: str | None = None) -> dict[str, Any]:
        """Report progress (also a heartbeat). Raises LeaseLostError when fenced off."""
        return self._call(
            protocol.Progress(
                work_item_id=self.work_item_id,
                progress=percent,
                agent_id=self.agent.agent_id,
                lease=self.lease,
                status=status,
            )
        )

    def complete(self, result: str = "success", velocity: int = 0) -> dict[str, Any]:
        """Finish the item; stops its heartbeats."""
        data = self._call(
            protocol.Complete(
                work_item_id=self.work_item_id,
                agent_id=self.agent.agent_id,
                lease=self.lease,
                result=result,
                velocity=velocity,
            )
        )
        self._finish()
        return data

    def release(self) -> dict[str, Any]:
        """Give the item back to the backlog; stops its heartbeats."""
        data = self._call(
            protocol.Release(
                work_item_id=self.work_item_id, agent_id=self.agent.agent_id, lease=self.lease
            )
        )
        self._finish()
        return data

    def _call(self, req: protocol.Request) -> Any:
        try:
            return self.agent.request(req)
        except LeaseLostError as e:
            self.mark_lost(e.message)
            raise

    def mark_lost(self, reason: str) -> None:
        self.lost_reason = reason
        self.lost.set()
        self._finish()

    def _finish(self) -> None:
        self.done = True
        self.agent._forget(self)

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Leaving the block without finishing: an error gives the work back for someone
        # else; a normal exit means the work is done.
        if self.done or self.lost.is_set():
            return
        try:
            if exc_type is None:
                self.complete()
            else:
                self.release()
        except AgentError:
            if exc_type is None:
                raise


class Agent:
    """One agent's connection to coordd's agent endpoint."""

    def __init__(
        self,
        endpoint: str,
        agent_id: str,
        heartbeat_interval: float = 60.0,
        timeout: float = 5.0,
    ) -> None:
        self.endpoint = endpoint
        self.agent_id = agent_id
        self.heartbeat_interval = heartbeat_interval
        self.timeout = timeout
        self.codec = protocol.Codec()
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._req_lock = threading.Lock()
        self._caller = rpc.Caller(endpoint, timeout, self._ctx)
        self._leases: dict[str, Lease] = {}
        self._leases_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.heartbeats_sent = 0  # batches, for tests and the curious

    # --- requests (any thread) ----------------------------------------------------

    def request(self, req: protocol.Request) -> Any:
        """Send one request, wait for its reply; raise AgentError / LeaseLostError."""
        with self._req_lock:
            try:
                reply = self._caller.call(req)
            except rpc.Timeout as e:
                raise AgentTimeout(str(e)) from None
        if isinstance(reply, protocol.Error):
            kind = LeaseLostError if reply.code == "lease_lost" else AgentError
            raise kind(reply.code, reply.message)
        return reply.data

    def lease(
        self,
        work_type: str | None = None,
        description: str | None = None,
        *,
        priority: str = Priority.MEDIUM,
        team: str | None = None,
        work_item_id: str | None = None,
        stale_after: float | None = None,
    ) -> Lease:
        """Claim work and heartbeat it until it is finished or lost.

        With a ``description``: create the item and claim it (``Claim``). Without one:
        take the most urgent pending item matching ``work_type``/``team``, or the one
        named by ``work_item_id`` (``ClaimNext``).
        """
        req: protocol.Request
        if description is not None:
            req = protocol.Claim(
                agent_id=self.agent_id,
                work_type=work_type or "general",
                description=description,
                priority=priority,  # type: ignore[arg-type]
                team=team or "",
                work_item_id=work_item_id,
                stale_after=stale_after,
            )
        else:
            req = protocol.ClaimNext(
                agent_id=self.agent_id, work_type=work_type, team=team, work_item_id=work_item_id
            )
        held = Lease(self, self.request(req))
        with self._leases_lock:
            self._leases[held.work_item_id] = held
        self._start_heartbeats()
        return held

    def held(self) -> list[Lease]:
        with self._leases_lock:
            return list(self._leases.values())

    def _forget(self, lease: Lease) -> None:
        with self._leases_lock:
            if self._leases.get(lease.work_item_id) is lease:
                del self._leases[lease.work_item_id]

    def close(self) -> None:
        """Stop heartbeating and close the sockets (held items are left to staleness)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout)
        with self._req_lock:
            self._caller.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- the heartbeat thread --------------------------------------------------------

    def _start_heartbeats(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(
            target=self._heartbeat_loop, name=f"coordd-heartbeat-{self.agent_id}", daemon=True
        )
        self._thread.start()

    def _heartbeat_loop(self) -> None:
        # Created, used and closed by this thread only.
        sock = rpc.dealer(self.endpoint, self._ctx)
        try:
            next_beat = time.monotonic() + self.heartbeat_interval
            while not self._stop.is_set():
                # Wake at least every STOP_CHECK seconds so close() never waits an interval.
                wait = min(STOP_CHECK, max(0.0, next_beat - time.monotonic()))
                if sock.poll(int(wait * 1000) + 1):
                    self._on_heartbeat_reply(sock.recv())
                    continue
                if time.monotonic() >= next_beat:
                    self._send_batch(sock)
                    next_beat = time.monotonic() + self.heartbeat_interval
        finally:
            sock.close(0)

    def _send_batch(self, sock: zmq.Socket[bytes]) -> None:
        leases = self.held()
        if not leases:
            return
        batch = protocol.HeartbeatBatch(
            agent_id=self.agent_id,
            items=[protocol.ItemBeat(lease.work_item_id, lease.lease) for lease in leases],
        )
        sock.send(self.codec.encode(batch))
        self.heartbeats_sent += 1

    def _on_heartbeat_reply(self, raw: bytes) -> None:
        try:
            reply = self.codec.reply_decoder.decode(raw)
        except msgspec.DecodeError:
            return  # not a reply we understand; the thread must live on regardless
        if isinstance(reply, protocol.Error):
            return  # the whole batch was refused (e.g. bad request): nothing item-specific
        for err in (reply.data or {}).get("errors", []):
            # Any refusal of an item's heartbeat means the item is no longer ours.
            with self._leases_lock:
                lease = self._leases.get(err["work_item_id"])
            if lease is not None:
                lease.mark_lost(f"{err['code']}: {err['message']}")
