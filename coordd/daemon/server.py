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

from coordd import __version__, keys, legacy, protocol
from coordd.config import Config, ConfigError
from coordd.core import freshness
from coordd.core.state import DomainError, Limits, State
from coordd.daemon import ai_edge, metrics
from coordd.daemon.notify import Notifier
from coordd.daemon.reload import merge as merge_reload
from coordd.protocol import Error, Ok
from coordd.storage import journal as journal_mod

log = structlog.get_logger("coordd")

Clock = Callable[[], float]

# Requests an agent on the agent endpoint may not send (operators only): add the
# request's Struct class here when you add an admin request (Snapshot, RecoverStale,
# Import, Reload, the AI analyses...). ``_handle`` checks it after decoding and before
# any handler, so a handler never needs its own check; tests/daemon/test_security.py
# asserts that every listed type is refused on the agent endpoint.
CONTROL_ONLY: frozenset[type] = frozenset(
    {protocol.RecoverStale, protocol.Snapshot, *ai_edge.REQUESTS}
)

# Plain ints, not pyzmq's enum flags: on the hot path every ``flags | SNDMORE`` and every
# ``getsockopt(RCVMORE)`` went through ``enum`` machinery (about a tenth of the loop's
# time under a heartbeat stream, measured with py-spy; see BENCHMARKS.md).
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)


# Replies that may wait in ZeroMQ's queue for one peer that is slow to read them.
REPLY_HWM = 100_000


class VersionProbe(msgspec.Struct):
    """Reads only ``v`` from a request we could not decode, to tell a version mismatch."""

    v: int = protocol.PROTOCOL_VERSION


class StartupError(Exception):
    """coordd cannot start; the message says why and what to do."""


class Daemon:
    def __init__(
        self,
        cfg: Config,
        clock: Clock = time.time,
        journal: journal_mod.Journal | None = None,
        notifier: Notifier | None = None,
        load_config: Callable[[], Config] | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.state = State(cfg.policy(), _limits(cfg))
        self.state.heartbeat_events = cfg.publish_heartbeats
        self.journal = journal or journal_mod.Journal(cfg.state_dir, cfg.fsync)
        self._next_snapshot = 0.0
        self._snapshot_requested = False
        self.last_snapshot: dict[str, Any] = {"count": 0, "running": False}
        self.codec = protocol.Codec()
        self.version_probe = msgspec.msgpack.Decoder(VersionProbe)
        self.started_at = clock()
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._stop = False
        # systemd integration (notify.py), reload (SIGHUP) and metrics (metrics.py).
        self.notifier = notifier or Notifier({})
        self.load_config = load_config
        self.reload_hooks: list[Callable[[Config], None]] = []
        self.tally = metrics.Tally()
        self.collector = metrics.StateCollector()
        self.exporter = metrics.Exporter(self.collector)
        self._counts = self.state.counts()
        self._lock_fd: int | None = None
        self.health = "ok"
        self.degraded_reason = ""
        self._replies: list[tuple[zmq.Socket[bytes], list[bytes], bytes]] = []
        self.keyring: keys.KeyRing | None = None  # set when a tcp endpoint uses CURVE
        self.agent_keyed = False  # agents connect with CURVE keys, each bound to its id
        self.zap_sock: zmq.Socket[bytes] | None = None
        self._hup = False
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
            protocol.CheckStale: self.on_check_stale,
            protocol.RecoverStale: self.on_recover_stale,
            protocol.Freshness: self.on_freshness,
            protocol.Snapshot: self.on_snapshot,
        }
        # AI analyses run off the loop; the worker wakes us through the wake-up socket.
        self.ai = ai_edge.AiEdge(cfg, self.state, self._wake_loop, self._reply)
        self.handlers.update(self.ai.handlers())
        self.reload_hooks.append(self.ai.reconfigure)

    # --- start and stop ----------------------------------------------------------

    def start(self) -> None:
        """Lock the state directory, bind every socket. Raises StartupError."""
        cfg = self.cfg
        self._check_control_only()
        Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)
        self._lock_state_dir()
        self._load_state()
        run_dir = Path(cfg.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(run_dir, 0o750)
        self.state.not_before = self.clock()
        self._setup_curve()
        self.agent_keyed = self._ring_for(cfg.agent_endpoint) is not None
        self.agent_sock = self._bind(
            zmq.ROUTER, cfg.agent_endpoint, self._ring_for(cfg.agent_endpoint)
        )
        self.control_sock = self._bind(zmq.ROUTER, "ipc://" + cfg.control_socket)
        self._secure_control_socket()
        self.events_sock = self._bind(
            zmq.PUB, cfg.events_endpoint, self._ring_for(cfg.events_endpoint)
        )
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup_signal)
        self._start_metrics()
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

    def _check_control_only(self) -> None:
        # A CONTROL_ONLY entry that is not a served request protects nothing: most
        # likely a typo or a request added to one list and not the other.
        unknown = [t.__name__ for t in CONTROL_ONLY if t not in self.handlers]
        if unknown:
            raise StartupError(f"CONTROL_ONLY lists requests with no handler: {unknown}")

    def _lock_state_dir(self) -> None:
        try:
            self._lock_fd = journal_mod.lock_state_dir(self.cfg.state_dir)
        except journal_mod.JournalError as e:
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
            # ZeroMQ's default of 1,000 queued messages per peer would silently drop the
            # replies of a client that pipelines more than that; replies are small.
            sock.setsockopt(zmq.SNDHWM, REPLY_HWM)
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

    def _setup_curve(self) -> None:
        """Load the CURVE keys and answer ZAP when a tcp:// endpoint needs them."""
        cfg = self.cfg
        wanted = [
            f"{key} {endpoint}"
            for key, endpoint in (
                ("agent_endpoint", cfg.agent_endpoint),
                ("events_endpoint", cfg.events_endpoint),
            )
            if keys.curve_wanted(endpoint, cfg.require_curve)
        ]
        if not wanted:
            return
        if not cfg.curve_dir:
            raise StartupError(
                f"{' and '.join(wanted)}: tcp:// beyond loopback (or require_curve) needs"
                " CURVE: set curve_dir to a key directory made by `coordctl keys generate`"
                " (see README, Security)"
            )
        try:
            self.keyring = keys.load(cfg.curve_dir)
        except keys.KeysError as e:
            raise StartupError(str(e)) from None
        # The ZAP handler must exist before the CURVE socket accepts a connection.
        zap: zmq.Socket[bytes] = self.ctx.socket(zmq.REP)
        zap.setsockopt(zmq.LINGER, 0)
        zap.bind(keys.ZAP_ENDPOINT)
        self.zap_sock = zap
        log.info("curve_enabled", curve_dir=cfg.curve_dir, allowed=len(self.keyring.allowed))

    def _ring_for(self, endpoint: str) -> keys.KeyRing | None:
        if keys.curve_wanted(endpoint, self.cfg.require_curve):
            return self.keyring
        return None

    def _on_stop_signal(self, signum: int, _frame: Any) -> None:
        self._stop = True

    def _on_hup_signal(self, signum: int, _frame: Any) -> None:
        # Only a flag: the work happens on the loop, woken by the wakeup fd.
        self._hup = True

    def _on_hup(self) -> None:
        """SIGHUP: reload what can change without a restart."""
        self._hup = False
        self.reload()
        self.reload_keys()

    def reload_keys(self) -> None:
        """Re-read ``allowed/``; on error keep the old list (a typo must not lock all out)."""
        if self.keyring is None:
            return
        try:
            allowed = keys.load_allowed(self.cfg.curve_dir)
        except keys.KeysError as e:
            log.error("keys_reload_failed", error=str(e))
            return
        self.keyring = msgspec.structs.replace(self.keyring, allowed=allowed)
        log.info("keys_reloaded", allowed=len(allowed))

    def _serve_zap(self) -> None:
        """Answer the ZAP requests waiting (one CURVE handshake each)."""
        assert self.zap_sock is not None and self.keyring is not None
        while True:
            try:
                frames = self.zap_sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            decision = keys.zap_decide(self.keyring, frames)
            if not decision.allowed:
                log.warning(
                    "curve_refused",
                    address=decision.address,
                    client_key=decision.client_key,
                    reason=decision.reason,
                )
            self.zap_sock.send_multipart(decision.reply or [b"1.0", b"", b"500", b"", b"", b""])

    def _start_metrics(self) -> None:
        if not self.cfg.metrics_listen:
            return
        try:
            host, port = self.exporter.start(self.cfg.metrics_listen)
        except (OSError, ValueError) as e:
            raise StartupError(f"cannot serve metrics on {self.cfg.metrics_listen}: {e}") from None
        log.info("metrics_listening", host=host, port=port)

    def close(self) -> None:
        # Only what this process bound: a daemon refused at start must not remove
        # the socket of the one that is running.
        if getattr(self, "control_sock", None) is not None:
            try:
                os.unlink(self.cfg.control_socket)
            except FileNotFoundError:
                pass
        for name in ("agent_sock", "control_sock", "events_sock", "zap_sock"):
            sock = getattr(self, name, None)
            if sock is not None:
                sock.close(linger=500)
                setattr(self, name, None)
        self.journal.close()
        self.ai.close()
        self.exporter.close()
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
        if self.zap_sock is not None:
            poller.register(self.zap_sock, zmq.POLLIN)
        next_tick = self.clock() + self.cfg.tick_interval
        self._sample()
        self.notifier.ready(self.summary())
        while not self._stop:
            # Round up: a timeout truncated to 0 ms would spin until the tick is due.
            wait = min(next_tick - self.clock(), self.notifier.seconds_to_ping())
            timeout_ms = max(0, math.ceil(wait * 1000))
            ready = dict(poller.poll(timeout_ms))
            now = self.clock()
            if self.agent_sock in ready:
                self._drain(self.agent_sock, now, from_control=False)
            if self.control_sock in ready:
                self._drain(self.control_sock, now, from_control=True)
            if self._wake_r.fileno() in ready:
                self._clear_wakeup()
                self.ai.drain()
            if self.zap_sock is not None and self.zap_sock in ready:
                self._serve_zap()
            if self._hup:
                self._on_hup()
            if now >= next_tick:
                self.on_tick(now)
                next_tick = now + self.cfg.tick_interval
            self._flush()
            self.on_wake(self.clock())
            self.notifier.ping()
        self.notifier.stopping()
        log.info("stopping", reason="signal")
        self._final_snapshot()

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
        if self.agent_keyed and sock is self.agent_sock:
            self._drain_keyed(sock, now)
            return
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
            except Exception:  # DecodeError, UnicodeDecodeError, RecursionError...
                req = None  # _handle decodes again and answers with the reason
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
            self._handle_safely(sock, envelope, now, from_control, req, None)

    def _drain_keyed(self, sock: zmq.Socket[bytes], now: float) -> None:
        """The agent endpoint under CURVE: every message goes through ``_handle`` with the
        sender's public key, so the identity check is never skipped (no heartbeat shortcut)."""
        for _ in range(self.cfg.max_batch):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                client_key = parts[-1].get("User-Id")
            except zmq.ZMQError:
                client_key = None
            frames = [p.bytes for p in parts]
            key = str(client_key) if client_key else None
            self._handle_safely(sock, frames, now, False, None, key)

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
        """One request: ``frames`` is the envelope then the payload (``decoded`` when the
        caller has decoded it already; ``client_key`` the sender's CURVE key)."""
        envelope, payload = frames[:-1], frames[-1]
        if not envelope:
            return  # nothing to route a reply to; cannot happen on a ROUTER
        if decoded is not None:
            req = decoded
        else:
            try:
                req = self.codec.request_decoder.decode(payload)
            except (msgspec.DecodeError, UnicodeDecodeError) as e:
                # msgspec raises UnicodeDecodeError (not DecodeError) for a str that is not
                # UTF-8.
                self._reply(sock, envelope, self._undecodable(payload, e))
                return
            except RecursionError:
                # Deeply nested msgpack (in an ignored field, say): refuse, do not die.
                self._reply(sock, envelope, Error(code="bad_request", message="nesting too deep"))
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
        if self.keyring is not None and self.agent_keyed and not from_control:
            refusal = keys.identity_refusal(
                self.keyring, client_key or "", getattr(req, "agent_id", None)
            )
            if refusal is not None:
                log.warning("identity_refused", agent_id=getattr(req, "agent_id", None))
                self._reply(sock, envelope, Error(code="not_allowed", message=refusal))
                return
        try:
            data = self.handlers[type(req)](req, now, from_control)
        except Exception as e:
            self._failed(sock, envelope, req, e)
            return
        if isinstance(data, ai_edge.Deferred):
            self.ai.submit(sock, envelope, data)
        elif data is not _NO_REPLY:
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
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            v = protocol.PROTOCOL_VERSION
        if v != protocol.PROTOCOL_VERSION:
            return _version_error(v)
        # Cut the decoder's words: they may quote a huge value back at its sender.
        return Error(code="bad_request", message=f"malformed request: {str(e)[:300]}")

    def _refused(
        self, req: Any, e: DomainError, work_item_id: str | None = None, lease: int | None = None
    ) -> None:
        """One log line per refused lease (the ``lease_lost`` event is not logged again)."""
        if e.code in ("lease_lost", "not_owner"):
            log.warning(
                "lease_refused",
                op=type(req).__name__,
                code=e.code,
                agent_id=getattr(req, "agent_id", None),
                work_item_id=work_item_id or getattr(req, "work_item_id", None),
                lease=lease if lease is not None else getattr(req, "lease", None),
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
        self.tally.count(ev.event, ev.detail)
        level = _EVENT_LOG_LEVEL.get(ev.event, "info")
        if level is not None:
            getattr(log, level)(
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
        started = time.perf_counter()
        freshness.tick(self.state, now)
        metrics.TICK_SECONDS.observe(time.perf_counter() - started)
        self._sample()
        self.notifier.status(self.summary())

    def _sample(self) -> None:
        """Hand the metrics thread a copy of the counts (it must not walk live dicts).
        ``State.counts()`` reads its indexes, a few ints, so this runs on every tick."""
        self._counts = self.state.counts()
        self.collector.update(self.state.counters, self._counts, self.tally)

    def summary(self) -> str:
        """One line for ``systemctl status`` (sd_notify STATUS=), as of the last tick."""
        c = self._counts
        return (
            f"{c['active']} active, {c['pending']} pending, {c['stale']} stale,"
            f" {c['agents']} agents"
        )

    def reload(self) -> None:
        """SIGHUP: re-read the configuration; thresholds, recovery policy and AI settings
        change in place, the state is kept. A bad file changes nothing."""
        self.notifier.reloading()
        try:
            new = self.load_config() if self.load_config is not None else self.cfg
        except ConfigError as e:
            log.error("reload_failed", error=str(e))
        else:
            self.cfg, needs_restart = merge_reload(self.cfg, new)
            policy = self.cfg.policy()
            if policy != self.state.policy:
                self.state.policy = policy
                # Deadlines were queued under the old thresholds: a shorter one must
                # act now, not when its old entry surfaces. (~1 s per million active.)
                self.state.requeue_deadlines()
            for hook in self.reload_hooks:
                hook(self.cfg)
            log.info(
                "reloaded",
                stale_threshold=self.cfg.stale_threshold,
                recovery=self.cfg.recovery,
                ai_provider=self.cfg.ai_provider,
                needs_restart=",".join(needs_restart) or None,
            )
        self.notifier.ready(self.summary())

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
            raise _bad(
                f"batch of {len(req.items)} items; the limit is {self.cfg.max_batch} (max_batch)"
            )
        refreshed, refused = self.state.heartbeat_batch(req.agent_id, now, req.items)
        if refused:
            # The agent needs to know which leases it lost; everything else was applied.
            leases = {b.work_item_id: b.lease for b in req.items}
            for w, e in refused:
                self._refused(req, e, w, leases.get(w))
            errors = [{"work_item_id": w, "code": e.code, "message": str(e)} for w, e in refused]
            return {"refreshed": refreshed, "errors": errors}
        return {"refreshed": refreshed} if req.ack else _NO_REPLY

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
            "snapshot": dict(self.last_snapshot),
            "ai": self.ai.counters(),
        }

    # --- freshness: the rules are in ``freshness``; here only the translation ---------

    def on_check_stale(self, req: protocol.CheckStale, now: float, _c: bool) -> Any:
        return {"now": now, "stale": freshness.stale_report(self.state, now)}

    def on_recover_stale(self, req: protocol.RecoverStale, now: float, _c: bool) -> Any:
        return freshness.recover_stale(self.state, now, req.strategy, req.work_item_id, req.dry_run)

    def on_freshness(self, req: protocol.Freshness, now: float, _c: bool) -> Any:
        return {
            "now": now,
            "dashboard": freshness.dashboard(self.state, now),
            "stale_threshold": self.state.policy.stale_threshold,
            "recovery": self.state.policy.recovery,
            "heartbeat_interval": self.cfg.heartbeat_interval,
            "tick_interval": self.cfg.tick_interval,
        }

    def on_snapshot(self, req: protocol.Snapshot, now: float, _c: bool) -> Any:
        # Started from on_wake, after this batch is journaled: a snapshot taken here
        # would hold records the journal does not have yet, and replay them twice.
        self._snapshot_requested = True
        return {"requested": True, **self.last_snapshot}

    # --- durability: load, snapshot timer, final snapshot (the files are journal's) ----

    def _load_state(self) -> None:
        """Snapshot + journal replay (+ legacy import on a first start), before binding."""
        try:
            report = self.journal.load(self.state)
        except journal_mod.JournalError as e:
            raise StartupError(str(e)) from None
        log.info(
            "state_loaded",
            snapshot=report.snapshot,
            records_replayed=report.records,
            torn_bytes_dropped=report.torn_bytes,
            items=len(self.state.items),
            generation=report.generation,
        )
        if (
            not report.snapshot
            and self.cfg.legacy_import
            and legacy.has_legacy_files(self.cfg.coordination_dir)
        ):
            self._import_legacy()
        self._next_snapshot = self.clock() + self.cfg.snapshot_interval

    def _import_legacy(self) -> None:
        directory = self.cfg.coordination_dir
        records, summary = legacy.import_dir(directory, self.state, self.clock())
        self.journal.write(records)
        self.journal.sync()
        log.info(
            "legacy_imported",
            directory=directory,
            **summary.imported,
            mapped=len(summary.mapped),
            skipped=len(summary.skipped),
        )
        for line in summary.mapped:
            log.info("legacy_mapped", detail=line)
        for line in summary.skipped:
            log.warning("legacy_skipped", detail=line)
        self._snapshot_done(self.journal.snapshot(self.state, self.clock(), self._export_hook()))

    def _export_hook(self) -> Callable[[], None] | None:
        if not self.cfg.legacy_export:
            return None
        directory, state = self.cfg.coordination_dir, self.state
        return lambda: legacy.export_dir(directory, state)

    def on_wake(self, now: float) -> None:
        """Durability chores on every wake-up: everysec fsync, snapshot child, timer."""
        self.journal.tick()
        result = self.journal.poll_snapshot()
        if result is not None:
            self._snapshot_done(result)
        due = now >= self._next_snapshot or self._snapshot_requested
        if due and not self.journal.snapshot_running:
            self._next_snapshot = now + self.cfg.snapshot_interval
            self._snapshot_requested = False
            self._snapshot_background(now)

    def _snapshot_background(self, now: float) -> None:
        fds = (self._lock_fd,) if self._lock_fd is not None else ()
        self.journal.snapshot_background(self.state, now, self._export_hook(), fds)
        self.last_snapshot["running"] = self.journal.snapshot_running

    def _final_snapshot(self) -> None:
        self._snapshot_done(self.journal.snapshot(self.state, self.clock(), self._export_hook()))

    def _snapshot_done(self, result: journal_mod.SnapshotResult) -> None:
        self.last_snapshot = {
            "count": self.last_snapshot.get("count", 0) + 1,
            "running": False,
            "at": self.clock(),
            **msgspec.structs.asdict(result),
        }
        if not result.ok:
            self.health = "degraded"
            self.degraded_reason = f"snapshot failed: {result.reason}"
            log.error("snapshot_failed", reason=result.reason)
            return
        if self.degraded_reason.startswith("snapshot failed"):
            self.health, self.degraded_reason = "ok", ""
        log.info(
            "snapshot_written",
            seconds=round(result.seconds, 4),
            blocked=round(result.blocked, 4),
            bytes=result.bytes,
            items=result.items,
        )


_NO_REPLY: Any = object()
# The everyday life of an item, logged at debug; trouble stays at warning/error.
# How each event is logged (default info). None: not logged (heartbeats are too many;
# a refused lease was already logged as lease_refused with the request it refused).
# Routine events go at debug: one per claim/completion, rendering the line at info cost
# 9 us of the loop per claim (a tenth of the daemon's share of a claim round trip); the
# event socket and the metrics still carry every one of them.
_EVENT_LOG_LEVEL: dict[str, str | None] = {
    "heartbeat": None,
    "lease_lost": None,
    "stale_detected": "warning",
    "recovered": "warning",
    "failed": "warning",
    **dict.fromkeys(("claimed", "completed", "released", "added", "fresh_again"), "debug"),
}


def _limits(cfg: Config) -> Limits:
    return Limits(
        max_items=cfg.max_items,
        max_agents=cfg.max_agents,
        max_id_len=cfg.max_id_len,
        max_description_len=cfg.max_description_len,
    )


def _bad(message: str) -> DomainError:
    from coordd.core.state import BadRequest

    return BadRequest(message)


def _version_error(v: int) -> Error:
    return Error(
        code="version_mismatch",
        message=f"client speaks protocol {v}; this coordd speaks {protocol.PROTOCOL_VERSION}",
    )
