"""The dashboard's ASGI app (Starlette): the page, the login, the websocket, the actions.

Every page is pushed, never polled: a websocket gets a full view of what it looks at
once, then a new one when the mirror changed, at most ``MAX_RATE`` per second however
fast events come. One broadcaster computes what pages share once per round and each
distinct query once, so fifty pages cost one computation, not fifty. A page that reads
slowly only ever has the latest view waiting for it (older ones are dropped).

Security: a read token to view, the operator token to act (``tokens``), kept in an
HttpOnly SameSite=Strict cookie; ``Host`` is checked on every request (no DNS
rebinding) and ``Origin`` on the websocket, the login and every action (no cross-site
websocket hijacking, no cross-site request forgery).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from coordd import protocol, rpc
from coordd.config import Config
from coordd.kinds import Strategy
from coordd.web import tokens
from coordd.web.feed import Feed, Unavailable, call
from coordd.web.mirror import Mirror, Query

log = structlog.get_logger("coordd.web")

STATIC = Path(__file__).with_name("static")
COOKIE = "coordd_web"
MAX_RATE = 4.0  # views per second per page, at most
ROUND = 0.1  # seconds between two broadcaster rounds
KEEPALIVE = 5.0  # a page hears at least this often (its clock and "connected")
AGENTS_EVERY = 1.0  # the agents table is recomputed at most this often
AI_STATUS_EVERY = 60.0

SECURITY_HEADERS = {
    # Everything is served by this app: no CDN, no inline script, no framing.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: with it Chromium sends "Origin: null" on a form POST, and the
    # login's Origin check would refuse the page's own form.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@dataclass
class Site:
    """Where the app is reached: what ``Host`` and ``Origin`` may say."""

    hosts: set[str]
    origins: set[str]
    secure: bool

    @classmethod
    def of(cls, host: str, port: int, secure: bool, extra_origins: list[str]) -> Site:
        names = {host}
        if host in ("127.0.0.1", "::1", "localhost"):
            names |= {"127.0.0.1", "localhost", "[::1]"}
        hosts = {
            f"[{n}]:{port}" if ":" in n and not n.startswith("[") else f"{n}:{port}" for n in names
        }
        scheme = "https" if secure else "http"
        origins = {f"{scheme}://{h}" for h in hosts} | {o.rstrip("/") for o in extra_origins}
        hosts |= {urlsplit(o).netloc for o in extra_origins}
        return cls(hosts=hosts, origins=origins, secure=secure)

    def host_ok(self, headers: Any) -> bool:
        return headers.get("host", "") in self.hosts

    def origin_ok(self, headers: Any) -> bool:
        return headers.get("origin", "") in self.origins


@dataclass(eq=False)  # hashed by identity: a set of pages
class Page:
    """One connected websocket: what it looks at and the latest view waiting for it."""

    ws: WebSocket
    role: str
    query: Query = field(default_factory=Query)
    sent_version: int = -1
    sent_at: float = 0.0
    dirty: bool = True
    pending: str | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0
    agents: list[str] = field(default_factory=list)  # holders of its active rows


class Hub:
    """The pages, the broadcaster, the feed and the daemon connection for actions."""

    def __init__(
        self,
        cfg: Config,
        site: Site,
        token_values: dict[str, str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.site = site
        self.tokens = token_values
        self.clock = clock
        self.lock = threading.Lock()
        self.mirror = Mirror(cfg.policy())
        self.feed = Feed(cfg, self.mirror, self.lock, clock, self._agents_on_screen)
        self.pages: set[Page] = set()
        self.views_sent = 0
        self._agents: tuple[float, bytes] = (0.0, b"null")
        self._tasks: list[asyncio.Task[None]] = []

    def _agents_on_screen(self) -> list[str]:
        """Holders of the active rows the pages were last sent (the feed's thread reads
        it: a copy of each page's list, no lock needed)."""
        return [a for page in list(self.pages) for a in list(page.agents)]

    # --- life ------------------------------------------------------------------

    async def start(self) -> None:
        self.feed.start()
        self._tasks = [
            asyncio.create_task(self._broadcast()),
            asyncio.create_task(self._ai_status()),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        self.feed.stop()

    # --- the broadcaster -----------------------------------------------------------

    async def _broadcast(self) -> None:
        while True:
            await asyncio.sleep(ROUND)
            try:
                now = self.clock()
                due = self._due(now)
                if not due:
                    continue
                # Composed on a worker thread: the first answer to a query over a
                # million items takes a while, and the loop keeps serving meanwhile.
                views = await asyncio.to_thread(self._compose, due, now)
                for page, payload, version in views:
                    page.pending = payload
                    page.sent_version, page.sent_at, page.dirty = version, now, False
                    page.wake.set()
            except Exception:  # a bug must not stop every page's updates
                log.exception("web_broadcast_failed")

    def _due(self, now: float) -> list[Page]:
        """Pages owed a view: changed (or asked something new, or quiet for KEEPALIVE),
        and not sent one in the last 1/MAX_RATE seconds."""
        version = self.mirror.version
        return [
            p
            for p in self.pages
            if now - p.sent_at >= 1.0 / MAX_RATE
            and (p.dirty or p.sent_version != version or now - p.sent_at >= KEEPALIVE)
        ]

    def _compose(self, due: list[Page], now: float) -> list[tuple[Page, str, int]]:
        """One view per due page: what they share encoded once, each query once."""
        pages: dict[tuple[Any, ...], bytes] = {}
        holders: dict[tuple[Any, ...], list[str]] = {}
        with self.lock:
            shared = msgspec.json.encode(
                {**self.mirror.summary(), "options": self.mirror.options()}
            )
            agents = self._agent_rows(now)
            version = self.mirror.version
            # Each page's query read once: the loop may change it while this runs.
            keyed = [(p, p.query) for p in due]
            for _p, q in keyed:
                key = (*q.key(), q.offset, q.limit)
                if key not in pages:
                    page = self.mirror.page(q, now, time.perf_counter)
                    holders[key] = [r["agent"] for r in page["rows"] if r["status"] == "active"]
                    pages[key] = msgspec.json.encode(page)
        connected = "true" if self.feed.connected else "false"
        out = []
        for p, q in keyed:
            key = (*q.key(), q.offset, q.limit)
            p.agents = holders[key]
            head = f'{{"type":"view","now":{now},"role":"{p.role}","connected":{connected},'
            body = [head.encode(), b'"shared":', shared, b',"agents":', agents]
            body += [b',"items":', pages[key], b"}"]
            out.append((p, b"".join(body).decode(), version))
        return out

    def _agent_rows(self, now: float) -> bytes:
        at, encoded = self._agents
        if now - at >= AGENTS_EVERY:
            encoded = msgspec.json.encode(self.mirror.agent_rows())
            self._agents = (now, encoded)
        return encoded

    async def _ai_status(self) -> None:
        while True:
            await asyncio.to_thread(self._ask_ai_status)
            await asyncio.sleep(AI_STATUS_EVERY)

    def _ask_ai_status(self) -> None:
        caller = rpc.Caller("ipc://" + self.cfg.control_socket, self.cfg.ai_timeout + 5)
        try:
            self.feed.ai_status(caller)
        finally:
            caller.close()

    # --- pages -------------------------------------------------------------------

    async def serve(self, page: Page) -> None:
        """Send views to one page while reading its queries, until it goes."""
        self.pages.add(page)
        writer = asyncio.create_task(self._write(page))
        try:
            while True:
                msg = await page.ws.receive_json()
                if isinstance(msg, dict) and msg.get("type") == "query":
                    page.query = _query(msg)
                    page.dirty = True
        except (WebSocketDisconnect, RuntimeError, ValueError):
            pass
        finally:
            self.pages.discard(page)
            writer.cancel()

    async def _write(self, page: Page) -> None:
        while True:
            await page.wake.wait()
            page.wake.clear()
            payload, page.pending = page.pending, None
            if payload is None:
                continue
            try:
                await page.ws.send_text(payload)
            except (WebSocketDisconnect, RuntimeError, OSError):
                return  # the page went; its reader ends the connection
            page.sent += 1
            self.views_sent += 1

    # --- actions -----------------------------------------------------------------

    def act(self, op: str, body: dict[str, Any]) -> Any:
        """One action as the same request coordctl sends; returns the reply's data."""
        wid = str(body.get("work_item_id") or "") or None
        timeout = self.cfg.client_timeout
        req: protocol.Request
        match op:
            case "recover":
                strategy = str(body.get("strategy") or Strategy.REASSIGN)
                if strategy not in tuple(Strategy):
                    raise ValueError(f"strategy must be one of {', '.join(Strategy)}")
                req = protocol.RecoverStale(strategy=Strategy(strategy), work_item_id=wid)
            case "release":
                req = protocol.Release(work_item_id=_required(wid))
            case "retry":
                req = protocol.Retry(work_item_id=_required(wid))
            case "ai_priorities":
                req = protocol.AiPriorities(fresh=bool(body.get("fresh")))
                timeout = self.cfg.ai_timeout + 5
            case _:
                raise ValueError(f"unknown action {op!r}")
        caller = rpc.Caller("ipc://" + self.cfg.control_socket, timeout)
        try:
            data = call(caller, req)
        finally:
            caller.close()
        if op == "ai_priorities":
            with self.lock:
                self.mirror.ai["latest"] = {
                    "at": self.clock(),
                    "kind": "priorities",
                    "result": data,
                }
                self.mirror.version += 1
        return data


def _required(wid: str | None) -> str:
    if not wid:
        raise ValueError("work_item_id is required")
    return wid


def _query(msg: dict[str, Any]) -> Query:
    def text(name: str) -> str:
        return str(msg.get(name) or "")[:200]

    def number(name: str, default: int) -> int:
        try:
            return max(0, int(msg.get(name, default)))
        except (TypeError, ValueError):
            return default

    return Query(
        status=text("status"),
        team=text("team"),
        work_type=text("work_type"),
        agent=text("agent"),
        text=text("text"),
        offset=number("offset", 0),
        limit=number("limit", 50) or 50,
    )


def _with_headers(resp: Response) -> Response:
    resp.headers.update(SECURITY_HEADERS)
    return resp


def create_app(hub: Hub) -> Starlette:
    """The Starlette app around ``hub``."""
    site = hub.site

    def role_of(cookies: dict[str, str]) -> str | None:
        return tokens.role_of(hub.tokens, cookies.get(COOKIE))

    def refused(status: int, why: str) -> Response:
        return _with_headers(JSONResponse({"error": why}, status_code=status))

    async def index(request: Request) -> Response:
        if not site.host_ok(request.headers):
            return refused(400, "unexpected Host header")
        page = "index.html" if role_of(request.cookies) else "login.html"
        return _with_headers(FileResponse(STATIC / page, media_type="text/html"))

    async def login(request: Request) -> Response:
        if not site.host_ok(request.headers) or not site.origin_ok(request.headers):
            return refused(403, "cross-site login refused (Host/Origin)")
        form = parse_qs((await request.body()).decode(errors="replace")[:4096])
        token = (form.get("token") or [""])[0].strip()
        role = tokens.role_of(hub.tokens, token)
        client = request.client.host if request.client else "?"
        if role is None:
            log.warning("web_login_refused", client=client)
            return _with_headers(RedirectResponse("/?refused=1", status_code=303))
        log.info("web_login", role=role, token=tokens.fingerprint(token), client=client)
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(
            COOKIE, token, httponly=True, samesite="strict", secure=site.secure, path="/"
        )
        return _with_headers(resp)

    async def logout(request: Request) -> Response:
        if not site.host_ok(request.headers) or not site.origin_ok(request.headers):
            return refused(403, "cross-site logout refused (Host/Origin)")
        resp = RedirectResponse("/", status_code=303)
        resp.delete_cookie(COOKIE, path="/")
        return _with_headers(resp)

    async def action(request: Request) -> Response:
        op = request.path_params["op"]
        client = request.client.host if request.client else "?"
        if not site.host_ok(request.headers) or not site.origin_ok(request.headers):
            log.warning("web_action_refused", op=op, client=client, reason="host_or_origin")
            return refused(403, "cross-site request refused (Host/Origin)")
        token = request.cookies.get(COOKIE)
        role = tokens.role_of(hub.tokens, token)
        if role != tokens.OPERATOR:
            log.warning("web_action_refused", op=op, client=client, role=role or "none")
            return refused(403 if role else 401, "actions need the operator token")
        try:
            body = await request.json()
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        who = f"operator:{tokens.fingerprint(token or '')}@{client}"
        what = {k: body.get(k) for k in ("work_item_id", "strategy") if body.get(k)}
        try:
            data = await asyncio.to_thread(hub.act, op, body)
        except ValueError as e:
            log.warning("web_action", who=who, op=op, **what, outcome="bad_request", reason=str(e))
            return refused(400, str(e))
        except Unavailable as e:
            log.warning("web_action", who=who, op=op, **what, outcome="refused", reason=str(e))
            return refused(409, str(e))
        log.info("web_action", who=who, op=op, **what, outcome="ok")
        return _with_headers(JSONResponse({"ok": True, "data": msgspec.to_builtins(data)}))

    async def websocket(ws: WebSocket) -> None:
        role = role_of(ws.cookies)
        if not site.host_ok(ws.headers) or not site.origin_ok(ws.headers):
            log.warning(
                "web_socket_refused", reason="host_or_origin", origin=ws.headers.get("origin")
            )
            await ws.close(code=4403)
            return
        if role is None:
            await ws.close(code=4401)
            return
        await ws.accept()
        await hub.serve(Page(ws=ws, role=role))

    async def health(request: Request) -> Response:
        # No token needed, so nothing about the fleet: only whether coordd is reached.
        return JSONResponse({"connected": hub.feed.connected})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await hub.start()
        try:
            yield
        finally:
            await hub.stop()

    return Starlette(
        routes=[
            Route("/", index),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/api/action/{op}", action, methods=["POST"]),
            Route("/healthz", health),
            Route("/favicon.ico", lambda request: Response(status_code=204)),
            WebSocketRoute("/ws", websocket),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        lifespan=lifespan,
    )
