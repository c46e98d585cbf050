"""The agent SDK: claim work, heartbeat it in the background, hear when it is lost.

    agent = Agent("ipc:///run/coordd/agents.sock", "agent_7", heartbeat_interval=60)
    # or, from another host: Agent.from_config() reads COORDD_ENDPOINTS,
    # COORDD_CURVE_KEY, COORDD_SERVER_KEY, AGENT_ID and HEARTBEAT_INTERVAL
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
sends ONE ``HeartbeatBatch`` for all the leases this agent holds (and one at once
when a lease is taken, so coordd knows where to tell). Heartbeats are one-way: coordd
answers only when something is wrong, and an answer naming an item sets that lease's
``lost`` event. When coordd recovers an item it pushes ``Revoked`` on the heartbeat
socket as soon as the recovery is durable: ``lost`` is set then, not an interval later.
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

KICK = b"k"  # wakes the heartbeat thread: a new lease to announce, or close()


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
        self.revoked: protocol.Revoked | None = None  # what coordd pushed, when it did
        # The previous holder's note (or ours): where to resume.
        self.checkpoint: str | None = item.get("checkpoint")
        self.done = False

    def progress(
        self, percent: int, status: str | None = None, checkpoint: str | None = None
    ) -> dict[str, Any]:
        """Report progress (also a heartbeat), with a checkpoint for whoever takes the
        item next. Raises LeaseLostError when fenced off."""
        data = self._call(
            protocol.Progress(
                work_item_id=self.work_item_id,
                progress=percent,
                agent_id=self.agent.agent_id,
                lease=self.lease,
                status=status,
                checkpoint=checkpoint,
            )
        )
        self._keep(checkpoint)
        return data

    def save_checkpoint(self, checkpoint: str) -> None:
        """Store a checkpoint now (an acknowledged item heartbeat carrying it)."""
        self._call(
            protocol.Heartbeat(
                agent_id=self.agent.agent_id,
                work_item_id=self.work_item_id,
                lease=self.lease,
                ack=True,
                checkpoint=checkpoint,
            )
        )
        self._keep(checkpoint)

    def _keep(self, checkpoint: str | None) -> None:
        if checkpoint is not None:
            self.checkpoint = checkpoint

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
    """One agent's connection to coordd's agent endpoint: an address (``ipc://...``,
    ``tcp://...``) or an ``rpc.Link`` (several addresses, CURVE keys)."""

    def __init__(
        self,
        endpoint: str | rpc.Link,
        agent_id: str,
        heartbeat_interval: float = 60.0,
        timeout: float = 5.0,
    ) -> None:
        self.link = rpc.as_link(endpoint)
        self.endpoint = self.link.address()
        self.agent_id = agent_id
        self.heartbeat_interval = heartbeat_interval
        self.timeout = timeout
        self.codec = protocol.Codec()
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._req_lock = threading.Lock()
        self._caller = rpc.Caller(self.link, timeout, self._ctx)
        self._caller.on_push = self._on_revoked
        self._leases: dict[str, Lease] = {}
        self._leases_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._registered = False
        # An inproc pair wakes the heartbeat thread (its end is that thread's alone;
        # ours is used under _leases_lock), so it needs no periodic wake-ups.
        self._kick_addr = f"inproc://coordd-agent-{id(self)}"
        self._kick_in: zmq.Socket[bytes] = self._ctx.socket(zmq.PAIR)
        self._kick_in.bind(self._kick_addr)
        self._kick_out: zmq.Socket[bytes] = self._ctx.socket(zmq.PAIR)
        self._kick_out.connect(self._kick_addr)
        self.heartbeats_sent = 0  # batches, for tests and the curious

    @classmethod
    def from_config(cls, agent_id: str | None = None, cfg: Any = None) -> Agent:
        """An agent as configured (file, environment): ``COORDD_ENDPOINTS`` (else the
        local agent endpoint), ``COORDD_CURVE_KEY``/``COORDD_SERVER_KEY``, ``AGENT_ID``,
        ``HEARTBEAT_INTERVAL``, ``client_timeout``."""
        from coordd import config

        cfg = cfg or config.load()
        name = agent_id or cfg.agent_id
        if not name:
            raise AgentError("bad_request", "name the agent (agent_id or $AGENT_ID)")
        return cls(rpc.agent_link(cfg), name, cfg.heartbeat_interval, cfg.client_timeout)

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
        self._register()
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
        self._start_heartbeats()
        with self._leases_lock:
            self._leases[held.work_item_id] = held
            # Heartbeat it at once from the heartbeat socket: that connection is where
            # coordd pushes a revocation, and it must know it before the first interval.
            self._kick_out.send(KICK)
        return held

    def _register(self) -> None:
        """Declare this agent and its heartbeat interval once: coordd refuses a claim
        whose threshold these heartbeats could not keep fresh."""
        if self._registered:
            return
        self.request(
            protocol.Register(agent_id=self.agent_id, heartbeat_interval=self.heartbeat_interval)
        )
        self._registered = True

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
        with self._leases_lock:
            self._kick_out.send(KICK)
        if self._thread is not None:
            self._thread.join(timeout=self.timeout)
        with self._req_lock:
            self._caller.close()
        with self._leases_lock:
            self._kick_out.close(0)
        if self._thread is None or not self._thread.is_alive():
            self._kick_in.close(0)

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
        poller = zmq.Poller()
        poller.register(self._kick_in, zmq.POLLIN)
        link = _BeatLink(self, poller)
        try:
            next_beat = time.monotonic() + self.heartbeat_interval
            while not self._stop.is_set():
                wait = max(0.0, min(next_beat, link.next_check()) - time.monotonic())
                ready = dict(poller.poll(int(wait * 1000) + 1))
                if link.sock in ready:
                    link.answered(self._on_heartbeat_reply(link.sock.recv()))
                if self._kick_in in ready:
                    while self._kick_in.poll(0):
                        self._kick_in.recv()
                    if not self._stop.is_set():
                        link.send(self._batch())  # a new lease: announce it now
                if link.must_resend():  # the leader moved (failover): tell the new one now
                    link.send(self._batch())
                if time.monotonic() >= next_beat:
                    link.send(self._batch())
                    next_beat = time.monotonic() + self.heartbeat_interval
        finally:
            link.close()

    def _batch(self) -> protocol.HeartbeatBatch | None:
        leases = self.held()
        if not leases:
            return None
        return protocol.HeartbeatBatch(
            push=True,  # this socket hears revocations the moment they are durable
            agent_id=self.agent_id,
            items=[protocol.ItemBeat(lease.work_item_id, lease.lease) for lease in leases],
            # With several coordd, every batch is answered: silence means a dead leader.
            ack=self._caller.endpoints.several,
        )

    def _on_heartbeat_reply(self, raw: bytes) -> protocol.Ok | protocol.Error | None:
        """Act on a reply to a batch (lost items) or a push; the reply, for the link."""
        try:
            reply = self.codec.reply_decoder.decode(raw)
        except msgspec.DecodeError:
            return None  # not a reply we understand; the thread must live on regardless
        if isinstance(reply, protocol.Revoked):
            self._on_revoked(reply)
            return None
        if isinstance(reply, protocol.Error):
            return reply  # the whole batch was refused (not_leader, bad request)
        for err in (reply.data or {}).get("errors", []):
            # Any refusal of an item's heartbeat means the item is no longer ours.
            with self._leases_lock:
                lease = self._leases.get(err["work_item_id"])
            if lease is not None:
                lease.mark_lost(f"{err['code']}: {err['message']}")
        return reply

    def _on_revoked(self, r: protocol.Revoked) -> None:
        """coordd pushed a lost lease: if it is one we hold, it is lost now."""
        with self._leases_lock:
            lease = self._leases.get(r.work_item_id)
        if lease is None or lease.lease != r.lease:
            return  # another connection's item of the same agent, or an old lease
        lease.revoked = r
        holder = f"; now held by {r.new_holder}" if r.new_holder else ""
        lease.mark_lost(f"revoked ({r.strategy}): {r.reason}{holder}")


class _BeatLink:
    """The heartbeat thread's connection, to the leader among the agent's endpoints
    (shared with its request ``Caller``, so both move together).

    With one endpoint it only sends. With several, every batch is answered: no answer
    within the timeout moves it to the next endpoint, a ``not_leader`` to the one named
    (or, leader unknown, it asks the same standby again shortly); the leases go on with
    the same numbers on the new leader."""

    def __init__(self, agent: Agent, poller: zmq.Poller) -> None:
        self.agent, self.poller = agent, poller
        self.endpoints = agent._caller.endpoints
        self.waiting_since: float | None = None  # a batch awaits its answer
        self.resend_at: float | None = None
        self.sock = self._open()

    def _open(self) -> zmq.Socket[bytes]:
        self.at = self.endpoints.current()
        sock = rpc.dealer(self.agent.link, self.agent._ctx, self.at)
        self.poller.register(sock, zmq.POLLIN)
        self.waiting_since = None
        return sock

    def _connect(self) -> None:
        self.poller.unregister(self.sock)
        self.sock.close(0)
        self.sock = self._open()

    def send(self, batch: protocol.HeartbeatBatch | None) -> None:
        self.resend_at = None
        if batch is None:
            return
        if self.endpoints.current() != self.at:
            self._connect()
        self.sock.send(self.agent.codec.encode(batch))
        self.agent.heartbeats_sent += 1
        if batch.ack and self.waiting_since is None:
            self.waiting_since = time.monotonic()

    def answered(self, reply: protocol.Ok | protocol.Error | None) -> None:
        self.waiting_since = None
        self.endpoints.answered(self.at)
        if isinstance(reply, protocol.Error) and reply.code == "not_leader":
            moved = self.endpoints.not_leader(self.at, reply.leader)
            self.resend_at = time.monotonic() + (0.0 if moved else rpc.FOLLOW_PAUSE)

    def next_check(self) -> float:
        """When ``must_resend`` may next be true (the loop wakes by then)."""
        times = [t for t in (self.resend_at,) if t is not None]
        if self.waiting_since is not None:
            times.append(self.waiting_since + self.agent.timeout)
        return min(times, default=float("inf"))

    def must_resend(self) -> bool:
        now = time.monotonic()
        if self.waiting_since is not None and now >= self.waiting_since + self.agent.timeout:
            self.endpoints.timed_out(self.at)  # silent: dead or cut off; try the next one
            self._connect()
            return True
        return self.resend_at is not None and now >= self.resend_at

    def close(self) -> None:
        self.sock.close(0)
