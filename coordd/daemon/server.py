"""The event loop: sockets, draining, routing, replies, the tick, signals.

One thread owns all state (like Redis). Per wake-up the loop drains every message
waiting on each socket (bounded by ``max_batch``), applies them to ``State``, writes
the batch's journal records with one fsync (group commit), and only then sends the
replies, so an acknowledged transition is on disk. Heartbeats are one-way: no reply
unless the agent asks for an ack or something is wrong.

This module holds no business rules and no handler: per request it decodes, looks up
the route (``routes``), checks the endpoint, calls the handler and queues its reply.
Its helpers by job: ``security`` (CURVE, ZAP), ``snapshots`` (when to write one),
``loading`` (start-up load and legacy import), ``reload`` (SIGHUP), ``metrics``,
``events`` (publishing what happened).
"""

from __future__ import annotations

import dataclasses
import grp
import math
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

from coordd import __version__, keys, protocol
from coordd.clock import Clock, SystemClock
from coordd.config import Config
from coordd.core import recovery
from coordd.core.model import DomainError, Limits
from coordd.core.state import State
from coordd.daemon import ai_edge, handlers, loading, metrics, routes, standby
from coordd.daemon.events import Publisher
from coordd.daemon.notify import Notifier
from coordd.daemon.outbox import PEER_HWM, RETRY_SECONDS, Outbox
from coordd.daemon.reload import reload as reload_config
from coordd.daemon.reload import warn_thresholds
from coordd.daemon.security import Curve, CurveError
from coordd.daemon.snapshots import Snapshots
from coordd.protocol import Error, Ok
from coordd.storage.store import Role, Store, StoreError, open_store

log = structlog.get_logger("coordd")

# Plain ints, not pyzmq's enum flags: on the hot path every ``flags | SNDMORE`` and every
# ``getsockopt(RCVMORE)`` went through ``enum`` machinery (about a tenth of the loop's
# time under a heartbeat stream, measured with py-spy; see BENCHMARKS.md).
_NOBLOCK = int(zmq.NOBLOCK)

# Handler time one wake-up may spend on one socket before its replies go out: a flood
# of costly requests (a page of ``list`` is the costliest) from one peer delays
# everybody's replies by at most about this much (plus one request), never by the
# whole flood. Heartbeats are not timed (they are the cheap hot path).
BATCH_SECONDS = 0.05
# Finished items one tick may prune (retention): a backlog of old items, at the first
# start after an upgrade, goes over a few ticks instead of stalling one.
PRUNE_BATCH = 10_000

# Request ids remembered at most (besides request_id_ttl): ~150 bytes each in memory.
REQUEST_IDS_KEPT = 1_000_000
# Connections remembered per agent as where its heartbeats come from (most recent
# last): where a revocation is pushed. An SDK agent has one; more is reconnect churn.
CONNS_PER_AGENT = 8


class VersionProbe(msgspec.Struct):
    """Reads only ``v`` from a request we could not decode, to tell a version mismatch."""

    v: int = protocol.PROTOCOL_VERSION


class StartupError(Exception):
    """coordd cannot start; the message says why and what to do."""


class Daemon:
    def __init__(
        self,
        cfg: Config,
        clock: Clock | None = None,
        store: Store | None = None,
        notifier: Notifier | None = None,
        load_config: Callable[[], Config] | None = None,
    ) -> None:
        self.cfg = cfg
        # Durations on clock.mono(), timestamps on clock.wall(): see coordd/clock.py.
        self.clock: Clock = clock or SystemClock()
        self.state = State(cfg.policy(), _limits(cfg))
        self.state.heartbeat_events = cfg.publish_heartbeats
        self.store = store or open_store(cfg, metrics.JOURNAL_FSYNC_SECONDS.observe)
        self.snapshots = Snapshots(cfg, self.state, self.store, self.clock)
        self.codec = protocol.Codec()
        self.version_probe = msgspec.msgpack.Decoder(VersionProbe)
        self.started_at = self.clock.mono()
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._stop = False
        # A shared store (PostgreSQL) may make this process a standby (daemon/standby.py).
        self.role = Role()
        self.leading = True
        # systemd integration (notify.py), reload (SIGHUP) and metrics (metrics.py).
        self.notifier = notifier or Notifier({})
        self.load_config = load_config
        self.metrics = metrics.Sampler()
        self._replies: list[tuple[zmq.Socket[bytes], list[bytes], bytes]] = []
        self.outbox = Outbox(cfg.max_peer_reply_bytes)
        # agent id -> {routing id: envelope} of the agent-endpoint connections that
        # heartbeated for it asking for pushes, least recent first: where revocations go.
        self.beat_conns: dict[str, dict[bytes, list[bytes]]] = {}
        self.revocations_pushed = 0
        self.curve = Curve(cfg)
        self.agent_keyed = False  # agents connect with CURVE keys, each bound to its id
        self._hup = False
        self.routes = handlers.load()
        # AI analyses run off the loop; the worker wakes us through the wake-up socket.
        self.ai = ai_edge.AiEdge(cfg, self._wake_loop, self._reply)
        # What handlers see: one context per socket (the control one may act for anyone).
        self.control_ctx = routes.Context(
            self.state, cfg, self.snapshots.request, self.facts, control=True
        )
        self.agent_ctx = dataclasses.replace(self.control_ctx, control=False)

    def facts(self) -> routes.Facts:
        """The daemon's own figures, for ``status``."""
        snaps = self.snapshots
        return routes.Facts(
            version=__version__,
            pid=os.getpid(),
            started_at=self.started_at,
            health=snaps.health,
            degraded_reason=snaps.degraded_reason,
            snapshot=snaps.last,
            ai=self.ai.counters(),
            metrics=dict(self.metrics.state),
            role="leader" if self.leading else "standby",
            leader=self.cfg.agent_endpoint if self.leading else self.role.leader_address,
        )

    # --- start and stop ----------------------------------------------------------

    def start(self) -> None:
        """Lock the state directory, bind every socket. Raises StartupError."""
        cfg = self.cfg
        # First: an address the operator chose that cannot be bound stops the start
        # before anything is imported, loaded or written.
        try:
            self.metrics.start(cfg.metrics_listen)
        except (OSError, ValueError) as e:
            raise StartupError(f"cannot serve metrics on {cfg.metrics_listen}: {e}") from None
        Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)
        # Before the lock: a standby's store threads wake the loop through it.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._lock_state_dir()
        try:
            self.role = self.store.role()
            self.leading = self.role.leader
            loading.load_state(
                cfg, self.state, self.store, self.snapshots, self.now(), self.leading
            )
        except StoreError as e:
            raise StartupError(str(e)) from None
        run_dir = Path(cfg.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(run_dir, 0o750)
        try:
            self.curve.setup(self.ctx)
        except CurveError as e:
            raise StartupError(str(e)) from None
        ring_for = self.curve.ring_for
        self.agent_keyed = ring_for(cfg.agent_endpoint) is not None
        self.agent_sock = self._bind(zmq.ROUTER, cfg.agent_endpoint, ring_for(cfg.agent_endpoint))
        self.control_sock = self._bind(zmq.ROUTER, "ipc://" + cfg.control_socket)
        self._secure_control_socket()
        self.events_sock = self._bind(zmq.PUB, cfg.events_endpoint, ring_for(cfg.events_endpoint))
        self.publisher = Publisher(
            self.events_sock, self.codec, self.metrics.tally, lambda w: self.state.items.get(w)
        )
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup_signal)
        self.ai.start()
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
            store=cfg.store,
            role="leader" if self.leading else "standby",
        )
        warn_thresholds(cfg)

    def _lock_state_dir(self) -> None:
        try:
            self.store.lock(standby=self._wake_loop)
        except StoreError as e:
            raise StartupError(str(e)) from None

    def _bind(
        self, kind: int, endpoint: str, ring: keys.KeyRing | None = None
    ) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 1000)
        if ring is not None:
            keys.secure_server(sock, ring)
        if kind == zmq.ROUTER:
            sock.setsockopt(zmq.MAXMSGSIZE, self.cfg.max_message_bytes)
            # A peer's queue in ZeroMQ is short, and a send past it says EAGAIN
            # (ROUTER_MANDATORY) instead of dropping the reply silently: the outbox then
            # holds it, counted in bytes and capped per peer (see outbox.py).
            sock.setsockopt(zmq.SNDHWM, PEER_HWM)
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
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

    def _on_hup_signal(self, signum: int, _frame: Any) -> None:
        # Only a flag: the work happens on the loop, woken by the wakeup fd.
        self._hup = True

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
        self.curve.close()
        self.store.close()  # also releases the state-dir lock
        self.ai.close()
        self.metrics.close()

    # --- the loop -----------------------------------------------------------------

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT; raises StoreError when the store fails or (a
        shared store) this leader must step down."""
        try:
            self._serve()
        except StoreError as e:
            # Wherever the loop was when it learned it (a SIGSTOP may land anywhere):
            # one log line that says why this process stops serving.
            problem = self.store.role().problem
            log.error("stepping_down" if problem else "store_failed", reason=str(e))
            raise

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.agent_sock, zmq.POLLIN)
        poller.register(self.control_sock, zmq.POLLIN)
        poller.register(self._wake_r.fileno(), zmq.POLLIN)
        zap = self.curve.zap_sock
        if zap is not None:
            poller.register(zap, zmq.POLLIN)
        # The restart grace counts from when agents can reach us again: the sockets are
        # bound and everything warmed up only now, after the load that first started it.
        self.state.start_grace(self.now())
        next_tick = self.now() + self.cfg.tick_interval
        self._sample()
        self.notifier.ready(self._status_line())
        while not self._stop:
            # Round up: a timeout truncated to 0 ms would spin until the tick is due.
            wait = min(next_tick - self.clock.mono(), self.notifier.seconds_to_ping())
            if self.outbox.waiting:  # replies held for a slow reader: offer them again soon
                wait = min(wait, RETRY_SECONDS)
            timeout_ms = max(0, math.ceil(wait * 1000))
            ready = dict(poller.poll(timeout_ms))
            now = self.now()
            self._check_role(now)
            if self.agent_sock in ready:
                self._drain(self.agent_sock, now, from_control=False)
            if self.control_sock in ready:
                self._drain(self.control_sock, now, from_control=True)
            if self._wake_r.fileno() in ready:
                self._clear_wakeup()
                self.ai.drain()
            if zap is not None and zap in ready:
                self.curve.serve_zap()
            if self._hup:
                self._hup = False
                self.reload()
                self.curve.reload_keys()
            if now >= next_tick:
                # A tick that hit its budget left expired items: the next one runs on
                # the next wake-up, after the sockets are served, not a whole interval on.
                backlog = self.on_tick(now)
                next_tick = now if backlog else now + self.cfg.tick_interval
            self._flush()
            self.on_wake(self.clock.mono())
            self.notifier.ping()
        self.notifier.stopping()
        log.info("stopping", reason="signal")
        if self.leading:
            self.snapshots.write_now()

    # --- leader or standby ---------------------------------------------------------

    def _check_role(self, now: float) -> None:
        """Before serving anything on this wake-up: a leader whose lease is gone (or was
        not renewed in time, e.g. it was paused) steps down; a standby follows its
        leader, or takes over when the lease became its own."""
        role = self.store.role()
        if self.leading:
            if role.problem:
                raise StoreError(role.problem)
            return
        if role.leader:
            self._take_over(now)
            return
        self.store.follow(self.state)
        if role != self.role:
            self.role = role
            self.notifier.status(self._status_line())

    def _take_over(self, now: float) -> None:
        """The lease is ours: apply the rest of the journal, restart grace (agents get
        one threshold to find us), then serve writes."""
        self.store.take_over(self.state)
        # Indexes from scratch, as a restart builds them: what a record does not say
        # (an item unblocked when its dependency completed) is derived here.
        self.state.rebuild_indexes()
        self.state.start_grace(now)
        self.snapshots.schedule_from(now)
        self.leading = True
        self.role = self.store.role()
        log.info("leading", agent_endpoint=self.cfg.agent_endpoint, items=len(self.state.items))
        self.notifier.status(self._status_line())

    def _status_line(self) -> str:
        return self.metrics.summary() if self.leading else standby.status_line(self.role)

    def now(self) -> float:
        """The monotonic now every handler and the tick get; the state learns what it
        is in wall time at the same moment (its timestamps follow a wall-clock step,
        its silences do not)."""
        wall, mono = self.clock.wall(), self.clock.mono()
        self.state.set_clock(wall, mono)
        return mono

    def _wake_loop(self) -> None:
        """Called from another thread (the AI worker): make the poller return."""
        try:
            self._wake_w.send(b"a")
        except OSError:
            pass  # the buffer is full: the loop is waking up anyway

    def _clear_wakeup(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _drain(self, sock: zmq.Socket[bytes], now: float, from_control: bool) -> None:
        if not self.leading:
            self._drain_standby(sock, now, from_control)
            return
        if self.agent_keyed and sock is self.agent_sock:
            self._drain_keyed(sock, now)
            return
        # Not recv_multipart: it asks getsockopt(RCVMORE) after every part, and pyzmq turns
        # each option into an enum first (measured: 2.3 us per message). A ROUTER's first
        # part is always the routing id and always has a part after it, so it is taken as
        # plain bytes; the next parts come as Frames, which say themselves whether more
        # follow (Frame.more): 0.85 us per message. The payload is decoded straight from
        # its Frame's buffer, and the envelope list and the payload's bytes are made only
        # for a request that is answered (-0.1 us per one-way heartbeat).
        recv = sock.recv
        decode = self.codec.request_decoder.decode
        heartbeat = self.state.heartbeat
        heartbeat_type, version = protocol.Heartbeat, protocol.PROTOCOL_VERSION
        blocked = self.outbox.blocked
        budget_end = time.monotonic() + BATCH_SECONDS
        lost, conns = self.state.lost.by_agent, self.beat_conns
        on_agent_sock = sock is self.agent_sock
        for _ in range(self.cfg.max_batch):
            try:
                routing_id = recv(_NOBLOCK)
            except zmq.Again:
                return
            frame = recv(_NOBLOCK, copy=False)
            envelope = None
            if frame.more:  # a REQ-style delimiter, or more: all but the last part
                envelope = [routing_id]
                while frame.more:
                    envelope.append(frame.bytes)
                    frame = recv(_NOBLOCK, copy=False)
            if blocked and (sock, routing_id) in blocked:
                self.outbox.refuse((sock, routing_id))  # it does not read: not run
                continue
            try:
                req = decode(frame)  # type: ignore[arg-type]  # a Frame is a buffer
            except Exception:  # DecodeError, UnicodeDecodeError, RecursionError...
                req = None  # _handle decodes again and answers with the reason
            if (
                type(req) is heartbeat_type
                and not req.ack
                and req.v == version
                and not (lost and req.work_item_id is None and req.agent_id in lost)
            ):
                # The hot path, most of what coordd receives: a one-way heartbeat goes
                # straight to the state, what handlers.items.heartbeat does without the
                # table, the wrapper and the reply check (-0.5 us, a fifth of the ingest
                # cost; Heartbeat is routed with agents=True, so no endpoint check is
                # skipped). Refusals and bugs are answered exactly as in _handle; an
                # agent that lost leases is answered by the handler.
                if on_agent_sock and req.push:
                    known = conns.get(req.agent_id)
                    if known is None or next(reversed(known)) != routing_id:
                        self._note_conn(req.agent_id, envelope or [routing_id])
                try:
                    heartbeat(
                        req.agent_id, now, req.work_item_id, req.lease, req.progress, req.checkpoint
                    )
                except Exception as e:
                    self._failed(sock, envelope or [routing_id], req, e)
                continue
            frames = envelope or [routing_id]
            frames.append(frame.bytes)
            self._handle_safely(sock, frames, now, from_control, req, None)
            if time.monotonic() > budget_end:
                return  # the rest waits for the next wake-up, after these replies

    def _drain_keyed(self, sock: zmq.Socket[bytes], now: float) -> None:
        """The agent endpoint under CURVE: every message goes through ``_handle`` with the
        sender's public key, so the identity check is never skipped (no heartbeat shortcut)."""
        budget_end = time.monotonic() + BATCH_SECONDS
        for _ in range(self.cfg.max_batch):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            peer = (sock, parts[0].bytes)
            if peer in self.outbox.blocked:
                self.outbox.refuse(peer)
                continue
            try:
                client_key = parts[-1].get("User-Id")
            except zmq.ZMQError:
                client_key = None
            frames = [p.bytes for p in parts]
            key = str(client_key) if client_key else None
            self._handle_safely(sock, frames, now, False, None, key)
            if time.monotonic() > budget_end:
                return

    def _drain_standby(self, sock: zmq.Socket[bytes], now: float, from_control: bool) -> None:
        """A standby: reads are served from the followed state, anything else (writes,
        heartbeats) is refused with the leader's address."""
        keyed = self.agent_keyed and sock is self.agent_sock
        for _ in range(self.cfg.max_batch):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            key = None
            if keyed:
                try:
                    key = str(parts[-1].get("User-Id")) or None
                except zmq.ZMQError:
                    key = None
            frames = [p.bytes for p in parts]
            req = self._decode(sock, frames[:-1], frames[-1]) if len(frames) > 1 else None
            if req is None:
                continue
            if type(req) in standby.READS:
                self._handle_safely(sock, frames, now, from_control, req, key)
            else:
                self._reply(sock, frames[:-1], standby.refusal(self.role))

    def _handle_safely(
        self,
        sock: zmq.Socket[bytes],
        frames: list[bytes],
        now: float,
        from_control: bool,
        decoded: Any,
        client_key: str | None,
    ) -> None:
        try:
            self._handle(sock, frames, now, from_control, decoded, client_key)
        except Exception as e:  # a bug; one bad message must not stop the loop
            log.exception("handle_failed", frames=len(frames))
            if len(frames) > 1:
                self._reply(sock, frames[:-1], Error(code="internal", message=repr(e)))

    def _handle(
        self,
        sock: zmq.Socket[bytes],
        frames: list[bytes],
        now: float,
        from_control: bool,
        decoded: Any = None,
        client_key: str | None = None,
    ) -> None:
        """One request: decode, check the version, look up the route, check the endpoint
        (and the CURVE identity), call, queue the reply. ``frames`` is the envelope then
        the payload (``decoded`` when the caller has decoded it already; ``client_key``
        the sender's CURVE key)."""
        envelope, payload = frames[:-1], frames[-1]
        if not envelope:
            return  # nothing to route a reply to; cannot happen on a ROUTER
        req = decoded if decoded is not None else self._decode(sock, envelope, payload)
        if req is None:
            return
        if req.v != protocol.PROTOCOL_VERSION:
            self._reply(sock, envelope, _version_error(req.v))
            return
        if not routes.allowed(type(req), from_control):
            self._reply(sock, envelope, routes.refusal(type(req)))
            return
        if self.agent_keyed and not from_control:
            refusal = self.curve.identity_refusal(client_key, getattr(req, "agent_id", None))
            if refusal is not None:
                self._reply(sock, envelope, Error(code="not_allowed", message=refusal))
                return
        if not from_control and type(req) in _BEATS and req.push:
            self._note_conn(req.agent_id, envelope)
        rid = req.request_id
        if rid is not None and (known := self.state.reply_for(rid)) is not None:
            # A resend (timeout, failover): the first answer again, nothing applied twice.
            self._reply(sock, envelope, Ok(data=msgspec.Raw(known)))
            return
        try:
            handler = self.routes[type(req)].handler
            if from_control:
                req = routes.expand_ids(self.state, req)
            data = handler(self.control_ctx if from_control else self.agent_ctx, req, now)
        except Exception as e:
            self._failed(sock, envelope, req, e)
            return
        if isinstance(data, ai_edge.Deferred):
            self.ai.submit(sock, envelope, data)
        elif data is not routes.NO_REPLY:
            if rid is not None and type(req) not in standby.READS:
                self.state.remember(rid, now, self.codec.encoder.encode(data))
            self._reply(sock, envelope, Ok(data=data))

    def _decode(self, sock: zmq.Socket[bytes], envelope: list[bytes], payload: bytes) -> Any:
        """The request, or None once the reason it cannot be decoded is queued."""
        try:
            return self.codec.request_decoder.decode(payload)
        except (msgspec.DecodeError, UnicodeDecodeError) as e:
            # msgspec raises UnicodeDecodeError (not DecodeError) for a str that is not UTF-8.
            self._reply(sock, envelope, self._undecodable(payload, e))
        except RecursionError:
            # Deeply nested msgpack (in an ignored field, say): refuse, do not die.
            self._reply(sock, envelope, Error(code="bad_request", message="nesting too deep"))
        return None

    def _failed(
        self, sock: zmq.Socket[bytes], envelope: list[bytes], req: Any, e: Exception
    ) -> None:
        """Answer a request whose handler raised: a domain error by its code, a bug as
        ``internal`` (logged with its traceback); the loop keeps serving either way."""
        if isinstance(e, DomainError):
            routes.log_refused(req, e)
            self._reply(sock, envelope, Error(code=e.code, message=str(e)))
            return
        log.exception("handler_failed", op=type(req).__name__)
        self._reply(sock, envelope, Error(code="internal", message=f"internal error: {e}"))

    def _undecodable(self, payload: bytes, e: Exception) -> Error:
        try:
            v = self.version_probe.decode(payload).v
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            v = protocol.PROTOCOL_VERSION
        if v != protocol.PROTOCOL_VERSION:
            return _version_error(v)
        # Cut the decoder's words: they may quote a huge value back at its sender.
        return Error(code="bad_request", message=f"malformed request: {str(e)[:300]}")

    def _note_conn(self, agent_id: str, envelope: list[bytes]) -> None:
        """Remember ``envelope``'s connection as the most recent to heartbeat for
        ``agent_id`` (at most CONNS_PER_AGENT kept: the least recent goes). Only for an
        agent coordd knows (bounded by ``max_agents``): heartbeats naming made-up agents
        are refused, and must not grow this table."""
        if agent_id not in self.state.agents:
            return
        known = self.beat_conns.setdefault(agent_id, {})
        known.pop(envelope[0], None)
        known[envelope[0]] = envelope
        if len(known) > CONNS_PER_AGENT:
            del known[next(iter(known))]

    def _push_revocations(self) -> None:
        """Tell each lost lease to the connections that heartbeated for its holder.
        Called once the batch's records are appended (fsynced under ``always``), so a
        holder is never told of a recovery that a crash could undo."""
        for rev in self.state.take_revocations():
            known = self.beat_conns.get(rev.agent_id)
            if not known:
                continue
            payload = self.codec.encode(
                protocol.Revoked(
                    work_item_id=rev.work_item_id,
                    lease=rev.lease,
                    agent_id=rev.agent_id,
                    reason=rev.reason,
                    strategy=rev.strategy,
                    new_holder=rev.new_holder,
                )
            )
            # Through the outbox like a reply: in order with the peer's replies, held
            # (bounded) for a slow reader, dropped for a connection that is gone.
            for envelope in known.values():
                self._replies.append((self.agent_sock, envelope, payload))
                self.revocations_pushed += 1

    def _reply(self, sock: zmq.Socket[bytes], envelope: list[bytes], reply: Any) -> None:
        self._replies.append((sock, envelope, self.codec.encode(reply)))

    def _flush(self) -> None:
        """Journal the batch (one fsync), then reply, then publish events."""
        records, events = self.state.drain()
        if records:
            try:
                self.store.append(records)
            except StoreError as e:
                # Nothing of this batch is acknowledged: every waiting client hears why,
                # then the daemon stops (its memory is ahead of what is stored).
                self._refuse_waiting(f"not acknowledged: {e}")
                raise
        if self.state.revocations:  # told once the recoveries are durable
            self._push_revocations()
        self._send_replies()
        publish = self.publisher.publish
        for ev in events:
            publish(ev)

    def _refuse_waiting(self, message: str) -> None:
        refusal = self.codec.encode(Error(code="unavailable", message=message))
        self._replies = [(sock, envelope, refusal) for sock, envelope, _ in self._replies]
        self._send_replies()

    def _send_replies(self) -> None:
        outbox = self.outbox
        outbox.retry()  # what waits goes first: a peer's replies stay in order
        for sock, envelope, payload in self._replies:
            outbox.send(sock, envelope, payload)
        self._replies.clear()

    def on_tick(self, now: float) -> bool:
        """Recover what expired (within the tick's budget); True if some are left."""
        left = False
        if self.leading:  # a standby judges nobody: its leader does, and journals it
            started = time.perf_counter()
            recovery.tick(self.state, now)
            if self.cfg.retention > 0 and not self.cfg.legacy_export:
                # Not with legacy_export: the old files are the users' history, rewritten
                # from what coordd holds, so it keeps everything (as the old script did).
                # The cut-off is compared with the times items were stamped with: wall.
                self.state.prune(self.state.wall(now) - self.cfg.retention, PRUNE_BATCH)
            metrics.TICK_SECONDS.observe(time.perf_counter() - started)
            left = self.state.expired_waiting(now)
        # Request ids' times are wall times (they outlive this process's monotonic clock).
        self.state.forget_applied(self.state.wall(now) - self.cfg.request_id_ttl, REQUEST_IDS_KEPT)
        self._sample()
        self.notifier.status(self._status_line())
        return left

    def _sample(self) -> None:
        """Hand the metrics thread a copy of the counts (it must not walk live dicts)."""
        self.metrics.sample(self.state.counters, self.state.counts())

    def on_wake(self, now: float) -> None:
        """Durability chores on every wake-up: everysec fsync, snapshot child, timer."""
        self.store.tick()
        if self.leading:
            self.snapshots.on_wake(now)

    def reload(self) -> None:
        """SIGHUP: re-read the configuration; thresholds, recovery policy and AI settings
        change in place, the state is kept. A bad file changes nothing."""
        self.notifier.reloading()
        new = reload_config(self.cfg, self.load_config, self.state)
        if new is not None:
            self.cfg = new
            for holder in (self.control_ctx, self.agent_ctx, self.snapshots):
                holder.cfg = new
            self.ai.reconfigure(new)
        self.notifier.ready(self._status_line())


# Requests whose connection is remembered as where its agent's revocations go.
_BEATS = (protocol.Heartbeat, protocol.HeartbeatBatch)


def _limits(cfg: Config) -> Limits:
    return Limits(
        max_items=cfg.max_items,
        max_agents=cfg.max_agents,
        max_id_len=cfg.max_id_len,
        max_description_len=cfg.max_description_len,
    )


def _version_error(v: int) -> Error:
    return Error(
        code="version_mismatch",
        message=f"client speaks protocol {v}; this coordd speaks {protocol.PROTOCOL_VERSION}",
    )
