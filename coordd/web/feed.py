"""The web process's one connection to coordd: a thread that keeps the mirror.

It subscribes to the events socket first, then loads a full view (every item, page by
page; the agents; the status), then applies events as they come. A gap in the events'
``seq`` (the PUB socket dropped some under load) or another daemon pid (a restart)
means the copy may be wrong: it loads a full view again.

What events do not carry (heartbeats are one-way and unpublished by default; progress
has no event) comes from a bounded sweep: once a second the daemon's ``status`` (O(1)),
its ``agents``, and the active items of the agents that hold some (``list`` by agent
and status, served from the daemon's holder index): first the agents of the rows pages
are showing, then the others round robin, until ``SWEEP_AGENTS`` agents or
``SWEEP_ITEMS`` items. What this costs the daemon does not depend on how many pages are
open; with a million held items the rows on screen stay exact and the rest catch up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec
import structlog
import zmq

from coordd import protocol, rpc
from coordd.config import Config
from coordd.core.model import Published, WorkItem
from coordd.web.mirror import Mirror

log = structlog.get_logger("coordd.web")

SWEEP_PERIOD = 1.0  # seconds between two sweeps (status, agents, held items)
SWEEP_AGENTS = 50  # agents whose held items one sweep reads, at most
SWEEP_ITEMS = 20_000  # held items one sweep reads, at most (then the next second)
FULL_VIEW_PAGE = 1000  # items per `list` page once the daemon pages (issue 14)
DRAIN_MAX = 10_000  # events applied per lock hold
EVENTS_HWM = 200_000  # events queued for us before the PUB socket drops (and we resync)


class Unavailable(Exception):
    """coordd answered with an error or not at all."""


def call(caller: rpc.Caller, req: protocol.Request) -> Any:
    """The reply's data, or Unavailable (timeout or refusal)."""
    try:
        reply = caller.call(req)
    except rpc.Timeout as e:
        raise Unavailable(str(e)) from None
    if isinstance(reply, protocol.Error):
        raise Unavailable(f"{reply.code}: {reply.message}")
    return reply.data


def _list_request(**kw: Any) -> protocol.List:
    # `list` takes a cursor once issue 14 lands; before that one reply holds them all.
    fields = {f.name for f in msgspec.structs.fields(protocol.List)}
    return protocol.List(**{k: v for k, v in kw.items() if k in fields})


def fetch_items(caller: rpc.Caller, max_items: int, **filters: Any) -> list[WorkItem]:
    """Every item matching ``filters``. A daemon whose ``list`` takes a cursor answers a
    page at a time (``{"items": [...], "next_cursor": cursor or null}``; a page may be
    empty with a cursor: follow it); an older one answers the whole list at once."""
    out: list[WorkItem] = []
    paged = "cursor" in {f.name for f in msgspec.structs.fields(protocol.List)}
    cursor: str | None = "" if paged else None
    limit = getattr(protocol, "MAX_PAGE", FULL_VIEW_PAGE) if paged else max_items
    while True:
        data = call(caller, _list_request(limit=limit, cursor=cursor, **filters))
        if isinstance(data, dict):
            # ``next_cursor`` as landed (the views' name); ``next`` as first drafted.
            rows = data.get("items", [])
            cursor = data.get("next_cursor", data.get("next"))
        else:
            rows, cursor = data, None
        out.extend(msgspec.convert(rows, list[WorkItem]))
        if cursor is None:
            return out


class Feed:
    """The thread that keeps ``mirror`` (under ``lock``) as coordd's state changes."""

    def __init__(
        self,
        cfg: Config,
        mirror: Mirror,
        lock: threading.Lock,
        clock: Callable[[], float] = time.time,
        on_screen: Callable[[], list[str]] = list,
    ) -> None:
        self.cfg = cfg
        self.on_screen = on_screen  # agents of the active rows pages show, first swept
        self.mirror = mirror
        self.lock = lock
        self.clock = clock
        self.connected = False
        self.events_seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="coordd-web-feed", daemon=True)
        self._sweep_at = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        sub: zmq.Socket[bytes] = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, EVENTS_HWM)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(self.cfg.events_endpoint)
        caller = rpc.Caller("ipc://" + self.cfg.control_socket, self.cfg.client_timeout, ctx)
        decoder = msgspec.msgpack.Decoder(Published)
        need_full, next_sweep = True, 0.0
        try:
            while not self._stop.is_set():
                if need_full:
                    need_full = not self._full_view(caller)
                    if need_full:
                        self._stop.wait(1.0)  # coordd not there (yet): try again
                        continue
                now = self.clock()
                if now >= next_sweep:
                    need_full = self._sweep(caller, now)
                    next_sweep = now + SWEEP_PERIOD
                if sub.poll(100):
                    need_full = self._drain(sub, decoder) or need_full
        finally:
            sub.close(0)
            caller.close()

    def _full_view(self, caller: rpc.Caller) -> bool:
        """Load everything; False when coordd cannot be reached (retried)."""
        started = time.perf_counter()
        try:
            status = call(caller, protocol.Status())
            items = fetch_items(caller, self.cfg.max_items)
            agents = call(caller, protocol.Agents())
        except Unavailable as e:
            if self.connected or not self.mirror.loaded:
                log.warning("web_daemon_unreachable", reason=str(e))
            self.connected = False
            return False
        with self.lock:
            self.mirror.load(items, agents)
            self.mirror.status(status, self.clock())
            self.mirror.last_seq = None  # the next event starts the count again
            self.mirror.resyncs += 1
        self.connected = True
        log.info(
            "web_full_view",
            items=len(items),
            agents=len(agents),
            seconds=round(time.perf_counter() - started, 3),
        )
        return True

    def _drain(self, sub: zmq.Socket[bytes], decoder: msgspec.msgpack.Decoder[Any]) -> bool:
        """Apply the waiting events; True when one was missed (reload a full view)."""
        missed = False
        with self.lock:
            for _ in range(DRAIN_MAX):
                try:
                    payload = sub.recv_multipart(zmq.NOBLOCK)[-1]
                except zmq.Again:
                    break
                try:
                    ev = decoder.decode(payload)
                except msgspec.DecodeError:
                    log.warning("web_event_undecodable", size=len(payload))
                    continue
                self.events_seen += 1
                in_order = self.mirror.apply(
                    ev.event, ev.at, ev.seq, ev.item, ev.work_item_id, ev.agent_id, ev.detail
                )
                if not in_order:
                    missed = True
        if missed:
            log.warning("web_events_missed", last_seq=self.mirror.last_seq)
        return missed

    def _sweep(self, caller: rpc.Caller, now: float) -> bool:
        """Status, agents and some agents' active items; True when coordd restarted.
        Applied under one lock hold, so the pages see one change, not three."""
        try:
            status = call(caller, protocol.Status())
            with self.lock:
                if self.mirror.restarted(status):
                    return True
                holders = self.mirror.holders()
            agents = call(caller, protocol.Agents())
            fresh = self._held_items(caller, holders)
        except Unavailable as e:
            if self.connected:
                log.warning("web_daemon_unreachable", reason=str(e))
            self.connected = False
            return False
        self.connected = True
        with self.lock:
            self.mirror.status(status, now)
            self.mirror.set_agents(agents)
            for items in fresh:
                for item in items:
                    self.mirror.refresh(item)
        return False

    def _held_items(self, caller: rpc.Caller, holders: list[str]) -> list[list[WorkItem]]:
        """The held items of the agents on screen, then of others in turn, within budget."""
        first = [a for a in dict.fromkeys(self.on_screen()) if a]
        others = _round_robin(holders, self._sweep_at, len(holders))
        out: list[list[WorkItem]] = []
        read = 0
        for agent in dict.fromkeys(first + others):
            if len(out) >= SWEEP_AGENTS or read >= SWEEP_ITEMS:
                break
            items = fetch_items(caller, self.cfg.max_items, agent_id=agent, status="active")
            out.append(items)
            read += len(items)
            if agent not in first:
                self._sweep_at += 1
        return out

    def ai_status(self, caller: rpc.Caller) -> None:
        """The AI providers' state, for the page (asked rarely: a probe is a network call)."""
        try:
            data = call(caller, protocol.AiStatus())
        except Unavailable as e:
            data = {"error": str(e)}
        with self.lock:
            self.mirror.ai["status"] = data
            self.mirror.version += 1


def _round_robin(names: list[str], start: int, n: int) -> list[str]:
    """``n`` names from ``start`` on, wrapping around (who is swept next)."""
    if not names:
        return []
    start %= len(names)
    return (names[start:] + names[:start])[:n]
