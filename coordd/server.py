"""The event loop: sockets, draining, dispatch, replies, the tick, signals.

One thread owns all state (like Redis). Per wake-up the loop drains every message
waiting on each socket (bounded by ``max_batch``), applies them to ``State``, writes
the batch's journal records with one fsync (group commit), and only then sends the
replies, so an acknowledged transition is on disk. Heartbeats are one-way: no reply
unless the agent asks for an ack or something is wrong.

This module holds no business rules: which request does what is ``state`` and
``freshness``; here we only translate between frames and calls.
"""

from __future__ import annotations

import fcntl
import grp
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import structlog
import zmq

from coordd import __version__, freshness, protocol
from coordd.config import Config
from coordd.protocol import Error, Ok
from coordd.state import DomainError, Limits, State

log = structlog.get_logger("coordd")

Clock = Callable[[], float]

# Requests an agent on the agent endpoint may not send (operators only).
CONTROL_ONLY: frozenset[type] = frozenset()

# Plain ints, not pyzmq's enum flags: on the hot path every ``flags | SNDMORE`` and every
# ``getsockopt(RCVMORE)`` went through ``enum`` machinery (about a tenth of the loop's
# time under a heartbeat stream, measured with py-spy; see BENCHMARKS.md).
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)


class VersionProbe(msgspec.Struct):
    """Reads only ``v`` from a request we could not decode, to tell a version mismatch."""

    v: int = protocol.PROTOCOL_VERSION


class StartupError(Exception):
    """coordd cannot start; the message says why and what to do."""


class NullJournal:
    """Keeps nothing. Stands in where durability is not wanted (and in core tests)."""

    def write(self, records: list[Any]) -> None:  # noqa: D401 - interface
        pass

    def close(self) -> None:
        pass


class Daemon:
    def __init__(self, cfg: Config, clock: Clock = time.time, journal: Any = None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.state = State(cfg.policy(), Limits(max_items=cfg.max_items, max_agents=cfg.max_agents))
        self.journal = journal or NullJournal()
        self.codec = protocol.Codec()
        self.version_probe = msgspec.msgpack.Decoder(VersionProbe)
        self.started_at = clock()
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._stop = False
        self._lock_fd: int | None = None
        self.health = "ok"
        self.degraded_reason = ""
        self._replies: list[tuple[zmq.Socket[bytes], list[bytes], bytes]] = []
        self.handlers: dict[type, Callable[[Any, float, bool], Any]] = {
            protocol.Register: self.on_register,
            protocol.Heartbeat: self.on_heartbeat,
            protocol.HeartbeatBatch: self.on_heartbeat_batch,
            protocol.Add: self.on_add,
            protocol.Claim: self.on_claim,
            protocol.ClaimNext: self.on_claim_next,
            protocol.Progress: self.on_progress,
            protocol.Complete: self.on_complete,
            protocol.Release: self.on_release,
            protocol.List: self.on_list,
            protocol.Show: self.on_show,
            protocol.Agents: self.on_agents,
            protocol.Status: self.on_status,
        }

    # --- start and stop ----------------------------------------------------------

    def start(self) -> None:
        """Lock the state directory, bind every socket. Raises StartupError."""
        cfg = self.cfg
        Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)
        self._lock_state_dir()
        run_dir = Path(cfg.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(run_dir, 0o750)
        self.state.not_before = self.clock()
        self.agent_sock = self._bind(zmq.ROUTER, cfg.agent_endpoint)
        self.control_sock = self._bind(zmq.ROUTER, "ipc://" + cfg.control_socket)
        self._secure_control_socket()
        self.events_sock = self._bind(zmq.PUB, cfg.events_endpoint)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop_signal)
        log.info(
            "started",
            version=__version__,
            pid=os.getpid(),
            agent_endpoint=cfg.agent_endpoint,
            control_socket=cfg.control_socket,
            events_endpoint=cfg.events_endpoint,
            state_dir=cfg.state_dir,
            stale_threshold=cfg.stale_threshold,
            recovery=cfg.recovery,
        )

    def _lock_state_dir(self) -> None:
        # ZeroMQ's ipc bind replaces an existing socket file, so a second daemon on the
        # same directory would silently steal the first one's clients: refuse it here.
        path = Path(self.cfg.state_dir) / "coordd.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StartupError(
                f"another coordd (pid {other}) is running on {self.cfg.state_dir};"
                " stop it or use another COORDINATION_DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _bind(self, kind: int, endpoint: str) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 1000)
        if kind == zmq.ROUTER:
            sock.setsockopt(zmq.MAXMSGSIZE, self.cfg.max_message_bytes)
            # A reply to a peer that vanished is dropped, not an error.
            sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as e:
            sock.close(0)
            raise StartupError(f"cannot bind {endpoint}: {e}") from None
        return sock

    def _secure_control_socket(self) -> None:
        path = self.cfg.control_socket
        os.chmod(path, 0o660)
        if self.cfg.control_group:
            try:
                gid = grp.getgrnam(self.cfg.control_group).gr_gid
            except KeyError:
                raise StartupError(
                    f"control_group {self.cfg.control_group!r} does not exist"
                ) from None
            os.chown(path, -1, gid)
            os.chown(self.cfg.run_dir, -1, gid)

    def _on_stop_signal(self, signum: int, _frame: Any) -> None:
        self._stop = True

    def close(self) -> None:
        # Only what this process bound: a daemon refused at start must not remove
        # the socket of the one that is running.
        if getattr(self, "control_sock", None) is not None:
            try:
                os.unlink(self.cfg.control_socket)
            except FileNotFoundError:
                pass
        for name in ("agent_sock", "control_sock", "events_sock"):
            sock = getattr(self, name, None)
            if sock is not None:
                sock.close(linger=500)
                setattr(self, name, None)
        self.journal.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- the loop -----------------------------------------------------------------

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT."""
        poller = zmq.Poller()
        poller.register(self.agent_sock, zmq.POLLIN)
        poller.register(self.control_sock, zmq.POLLIN)
        poller.register(self._wake_r.fileno(), zmq.POLLIN)
        next_tick = self.clock() + self.cfg.tick_interval
        while not self._stop:
            timeout_ms = max(0, int((next_tick - self.clock()) * 1000))
            ready = dict(poller.poll(timeout_ms))
            now = self.clock()
            if self.agent_sock in ready:
                self._drain(self.agent_sock, now, from_control=False)
            if self.control_sock in ready:
                self._drain(self.control_sock, now, from_control=True)
            if self._wake_r.fileno() in ready:
                self._clear_wakeup()
            if now >= next_tick:
                self.on_tick(now)
                next_tick = now + self.cfg.tick_interval
            self._flush()
        log.info("stopping", reason="signal")

    def _clear_wakeup(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _drain(self, sock: zmq.Socket[bytes], now: float, from_control: bool) -> None:
        # Not recv_multipart: it asks getsockopt(RCVMORE) after every part, and pyzmq turns
        # each option into an enum first (measured: 2.3 us per message). A ROUTER's first
        # part is always the routing id and always has a part after it, so it is taken as
        # plain bytes; the next parts come as Frames, which say themselves whether more
        # follow (Frame.more): 0.85 us per message, same frames for _handle.
        recv = sock.recv
        decode = self.codec.request_decoder.decode
        heartbeat = self.state.heartbeat
        heartbeat_type, version = protocol.Heartbeat, protocol.PROTOCOL_VERSION
        for _ in range(self.cfg.max_batch):
            try:
                envelope = [recv(_NOBLOCK)]
            except zmq.Again:
                return
            frame = recv(_NOBLOCK, copy=False)
            while frame.more:
                envelope.append(frame.bytes)
                frame = recv(_NOBLOCK, copy=False)
            payload = frame.bytes
            try:
                req = decode(payload)
            except (msgspec.DecodeError, msgspec.ValidationError):
                req = None
            if type(req) is heartbeat_type and not req.ack and req.v == version:
                # The hot path, most of what coordd receives: a one-way heartbeat goes
                # straight to the state, what on_heartbeat does without the table, the
                # wrapper and the reply check (-0.5 us, a fifth of the ingest cost).
                # Refusals and bugs are answered exactly as in _handle.
                try:
                    heartbeat(req.agent_id, now, req.work_item_id, req.lease, req.progress)
                except Exception as e:
                    self._failed(sock, envelope, req, e)
                continue
            envelope.append(payload)
            self._handle(sock, envelope, now, from_control, req)

    def _handle(
        self,
        sock: zmq.Socket[bytes],
        frames: list[bytes],
        now: float,
        from_control: bool,
        decoded: Any = None,
    ) -> None:
        """One request: ``frames`` is the envelope then the payload (``decoded`` when the
        caller has decoded it already)."""
        envelope, payload = frames[:-1], frames[-1]
        if not envelope:
            return  # nothing to route a reply to; cannot happen on a ROUTER
        if decoded is not None:
            req = decoded
        else:
            try:
                req = self.codec.request_decoder.decode(payload)
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                self._reply(sock, envelope, self._undecodable(payload, e))
                return
        if req.v != protocol.PROTOCOL_VERSION:
            self._reply(sock, envelope, _version_error(req.v))
            return
        if not from_control and type(req) in CONTROL_ONLY:
            self._reply(
                sock,
                envelope,
                Error(
                    code="not_allowed",
                    message=(f"{type(req).__name__} is accepted only on the control socket"),
                ),
            )
            return
        try:
            data = self.handlers[type(req)](req, now, from_control)
        except Exception as e:
            self._failed(sock, envelope, req, e)
            return
        if data is not _NO_REPLY:
            self._reply(sock, envelope, Ok(data=data))

    def _failed(
        self, sock: zmq.Socket[bytes], envelope: list[bytes], req: Any, e: Exception
    ) -> None:
        """Answer a request whose handler raised: a domain error by its code, a bug as
        ``internal`` (logged with its traceback); the loop keeps serving either way."""
        if isinstance(e, DomainError):
            self._refused(req, e)
            self._reply(sock, envelope, Error(code=e.code, message=str(e)))
            return
        log.exception("handler_failed", op=type(req).__name__)
        self._reply(sock, envelope, Error(code="internal", message=f"internal error: {e}"))

    def _undecodable(self, payload: bytes, e: Exception) -> Error:
        try:
            v = self.version_probe.decode(payload).v
        except (msgspec.DecodeError, msgspec.ValidationError):
            v = protocol.PROTOCOL_VERSION
        if v != protocol.PROTOCOL_VERSION:
            return _version_error(v)
        return Error(code="bad_request", message=f"malformed request: {e}")

    def _refused(self, req: Any, e: DomainError) -> None:
        if e.code in ("lease_lost", "not_owner"):
            log.warning(
                "lease_refused",
                op=type(req).__name__,
                code=e.code,
                agent_id=getattr(req, "agent_id", None),
                work_item_id=getattr(req, "work_item_id", None),
                lease=getattr(req, "lease", None),
            )

    def _reply(self, sock: zmq.Socket[bytes], envelope: list[bytes], reply: Any) -> None:
        self._replies.append((sock, envelope, self.codec.encode(reply)))

    def _flush(self) -> None:
        """Journal the batch (one fsync), then reply, then publish events."""
        records, events = self.state.drain()
        if records:
            self.journal.write(records)
        for sock, envelope, payload in self._replies:
            try:
                for part in envelope:
                    sock.send(part, _SNDMORE_NOBLOCK)
                sock.send(payload, _NOBLOCK)
            except zmq.ZMQError:
                pass  # the peer is gone or its queue is full; nothing to do
        self._replies.clear()
        for ev in events:
            self._publish(ev)

    def _publish(self, ev: Any) -> None:
        if ev.event in ("stale_detected", "recovered", "lease_lost", "failed"):
            log.warning(
                ev.event,
                work_item_id=ev.work_item_id,
                agent_id=ev.agent_id,
                lease=ev.lease,
                detail=ev.detail,
            )
        elif ev.event != "heartbeat":
            log.info(
                ev.event,
                work_item_id=ev.work_item_id,
                agent_id=ev.agent_id,
                lease=ev.lease,
                detail=ev.detail,
            )
        try:
            self.events_sock.send(ev.event.encode(), _SNDMORE_NOBLOCK)
            self.events_sock.send(self.codec.encode(ev), _NOBLOCK)
        except zmq.ZMQError:
            pass

    def on_tick(self, now: float) -> None:
        freshness.tick(self.state, now)

    # --- handlers: translate a request into a state call ----------------------------

    def _agent(self, req: Any, from_control: bool) -> str | None:
        """The acting agent. On the agent endpoint it is required; an operator on the
        control socket may act without one (ownership is then not checked)."""
        agent_id = getattr(req, "agent_id", None)
        if not agent_id and not from_control:
            raise _bad("agent_id is required on the agent endpoint")
        return agent_id or None

    def on_register(self, req: protocol.Register, now: float, _c: bool) -> Any:
        return self.state.register(req.agent_id, now, req.team, req.capacity, req.specialization)

    def on_heartbeat(self, req: protocol.Heartbeat, now: float, _c: bool) -> Any:
        n = self.state.heartbeat(req.agent_id, now, req.work_item_id, req.lease, req.progress)
        return {"refreshed": n} if req.ack else _NO_REPLY

    def on_heartbeat_batch(self, req: protocol.HeartbeatBatch, now: float, _c: bool) -> Any:
        if len(req.items) > self.cfg.max_batch:
            raise _bad(f"batch of {len(req.items)} items; the limit is {self.cfg.max_batch}")
        refused = self.state.heartbeat_items(req.agent_id, now, req.items)
        if refused:
            errors = [
                {"work_item_id": wid, "code": e.code, "message": str(e)} for wid, e in refused
            ]
            # The agent needs to know which leases it lost; everything else was applied.
            return {"refreshed": len(req.items) - len(errors), "errors": errors}
        return {"refreshed": len(req.items)} if req.ack else _NO_REPLY

    def on_add(self, req: protocol.Add, now: float, _c: bool) -> Any:
        return self.state.add(
            req.work_type,
            req.description,
            now,
            req.priority,
            req.team,
            req.work_item_id,
            req.stale_after,
        )

    def on_claim(self, req: protocol.Claim, now: float, _c: bool) -> Any:
        return self.state.claim(
            req.agent_id,
            req.work_type,
            req.description,
            now,
            req.priority,
            req.team,
            req.work_item_id,
            req.stale_after,
        )

    def on_claim_next(self, req: protocol.ClaimNext, now: float, _c: bool) -> Any:
        return self.state.claim_next(req.agent_id, now, req.work_type, req.team, req.work_item_id)

    def on_progress(self, req: protocol.Progress, now: float, c: bool) -> Any:
        return self.state.progress(
            req.work_item_id, req.progress, now, self._agent(req, c), req.lease, req.status
        )

    def on_complete(self, req: protocol.Complete, now: float, c: bool) -> Any:
        return self.state.complete(
            req.work_item_id, now, self._agent(req, c), req.lease, req.result, req.velocity
        )

    def on_release(self, req: protocol.Release, now: float, c: bool) -> Any:
        return self.state.release(req.work_item_id, now, self._agent(req, c), req.lease)

    def on_list(self, req: protocol.List, now: float, _c: bool) -> Any:
        out = []
        for item in self.state.select(req.status, req.team, req.agent_id, req.work_type):
            out.append(item)
            if len(out) >= req.limit:
                break
        return out

    def on_show(self, req: protocol.Show, now: float, _c: bool) -> Any:
        return self.state.get(req.work_item_id)

    def on_agents(self, req: protocol.Agents, now: float, _c: bool) -> Any:
        return [
            {**msgspec.structs.asdict(a), "current_workload": self.state.workload(a.agent_id)}
            for a in self.state.agents.values()
        ]

    def on_status(self, req: protocol.Status, now: float, _c: bool) -> Any:
        cfg = self.cfg
        return {
            "version": __version__,
            "protocol": protocol.PROTOCOL_VERSION,
            "pid": os.getpid(),
            "uptime": now - self.started_at,
            "health": self.health,
            "degraded_reason": self.degraded_reason,
            "counts": self.state.counts(),
            "counters": dict(self.state.counters),
            "team_velocity": dict(self.state.team_velocity),
            "stale_threshold": self.state.policy.stale_threshold,
            "recovery": self.state.policy.recovery,
            "heartbeat_interval": cfg.heartbeat_interval,
            "agent_endpoint": cfg.agent_endpoint,
            "control_socket": cfg.control_socket,
            "events_endpoint": cfg.events_endpoint,
            "state_dir": cfg.state_dir,
            "coordination_dir": cfg.coordination_dir,
        }


_NO_REPLY: Any = object()


def _bad(message: str) -> DomainError:
    from coordd.state import BadRequest

    return BadRequest(message)


def _version_error(v: int) -> Error:
    return Error(
        code="version_mismatch",
        message=f"client speaks protocol {v}; this coordd speaks {protocol.PROTOCOL_VERSION}",
    )
