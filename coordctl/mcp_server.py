"""``coordctl mcp``: coordd as MCP tools over stdio, for one LLM agent.

Two halves. ``Session`` is the agent's side of coordd for one MCP client: plain
synchronous code on the agent SDK (``coordd.agent``), which holds the leases and
heartbeats them (one batch per interval) from its own thread. ``serve`` puts the MCP
SDK's low-level server in front of it: tools and resources from ``coordctl.mcp_tools``,
each call run on a worker thread so a slow or absent daemon never stalls the stdio loop.

Liveness is the process's: the client owns our stdin, so when the client exits or
crashes, stdin closes, the server returns, heartbeats stop and coordd recovers the
items after the stale threshold. A lease coordd takes back is found by the SDK (the
heartbeat's refusal) or by the check every tool call makes first, and told to the
model in the next answer (``revoked``) and at once as an MCP log message.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.to_thread
import msgspec
from mcp import types
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.session import ServerSession
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError

from coordctl import mcp_tools as t
from coordctl.client import Client, Refused, Unreachable
from coordd import protocol, rpc, views
from coordd.agent import Agent, AgentError, AgentTimeout, Lease
from coordd.config import Config

# Seconds between looks for revoked leases (set by the SDK when coordd pushes one) and a
# vanished parent: a dict scan and a getppid, cheap enough to do often.
WATCH_EVERY = 0.05
BACKLOG_LIMIT = 100  # items in the backlog resource
AI_MARGIN = 5.0  # seconds beyond the daemon's own AI deadline (2 x ai_timeout)


class ToolError(Exception):
    """A refusal to hand the model: the daemon's code and message, or ``unreachable``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.revoked: list[t.Revoked] = []


class Session:
    """One agent's work with coordd for one MCP client. Thread-safe: the MCP server
    runs each call on a worker thread."""

    def __init__(self, cfg: Config, agent_id: str, ai: bool | None = None) -> None:
        self.cfg = cfg
        self.agent_id = agent_id
        # The SDK's own configuration: COORDD_ENDPOINTS and CURVE keys for a remote agent.
        link = rpc.agent_link(cfg)
        self.agent = Agent(link, agent_id, cfg.heartbeat_interval, cfg.client_timeout)
        self._ai = ai
        self._control: Client | None = None
        self._control_lock = threading.Lock()
        self._lock = threading.Lock()
        # This session's leases by item, lost ones included: a call on a lost item is
        # sent with its old lease, so coordd itself answers lease_lost.
        self._leases: dict[str, Lease] = {}
        self._told: set[tuple[str, int]] = set()  # revocations reported in an answer
        self._logged: set[tuple[str, int]] = set()  # ... and sent as a log message

    # --- what is offered ----------------------------------------------------------

    def operator(self) -> bool:
        """The AI analyses are operator requests: offered only with a usable local
        control socket (or when ``--ai`` forces them)."""
        if self._ai is not None:
            return self._ai
        path = self.cfg.control_socket
        return os.path.exists(path) and os.access(path, os.R_OK | os.W_OK)

    def tools(self) -> list[t.Tool]:
        operator = self.operator()
        return [tool for tool in t.TOOLS if operator or not tool.operator]

    # --- one tool call ----------------------------------------------------------------

    def call(self, name: str, arguments: dict[str, Any] | None) -> t.Out:
        """Run a tool; raise ToolError (with the revocations to report) when refused."""
        try:
            tool = self._tool(name)
            try:
                params = msgspec.convert(arguments or {}, tool.params)
            except msgspec.ValidationError as e:
                raise ToolError("bad_request", str(e)) from None
            self._verify()
            out: t.Out = getattr(self, "_" + name)(params)
        except ToolError as e:
            e.revoked = self.take_revoked(self._told)
            raise
        out.revoked = self.take_revoked(self._told)
        return out

    def _tool(self, name: str) -> t.Tool:
        if name not in {tool.name for tool in self.tools()}:
            raise ToolError("bad_request", f"no tool {name!r} here")
        return t.BY_NAME[name]

    @contextmanager
    def _refusals(self) -> Iterator[None]:
        """The SDK's exceptions as the tool errors a model is shown."""
        try:
            yield
        except AgentTimeout as e:
            raise ToolError("unreachable", f"{e.message} at {self.agent.endpoint}") from None
        except AgentError as e:
            raise ToolError(e.code, e.message) from None

    def _request(self, req: protocol.Request) -> Any:
        with self._refusals():
            return self.agent.request(req)

    def _verify(self) -> None:
        """Ask coordd whether our live leases are still ours (one acknowledged batch,
        which is also a heartbeat), so a revocation is reported on this very call."""
        live = self.held()
        if not live:
            return
        beats = [protocol.ItemBeat(lease.work_item_id, lease.lease) for lease in live]
        data = self._request(protocol.HeartbeatBatch(agent_id=self.agent_id, items=beats, ack=True))
        for err in (data or {}).get("errors", []):
            lease = self._lease(err["work_item_id"])
            if lease is not None:
                lease.mark_lost(f"{err['code']}: {err['message']}")

    def held(self) -> list[Lease]:
        with self._lock:
            return [le for le in self._leases.values() if not le.lost.is_set() and not le.done]

    def take_revoked(self, seen: set[tuple[str, int]]) -> list[t.Revoked]:
        """Lost leases not yet in ``seen`` (which then holds them)."""
        out = []
        with self._lock:
            for lease in self._leases.values():
                key = (lease.work_item_id, lease.lease)
                if lease.lost.is_set() and key not in seen:
                    seen.add(key)
                    out.append(_revoked(lease))
        return out

    def take_unlogged(self) -> list[t.Revoked]:
        return self.take_revoked(self._logged)

    def _keep(self, lease: Lease) -> t.ItemOut:
        with self._lock:
            self._leases[lease.work_item_id] = lease
        return t.ItemOut(item=t.item(lease.item))

    def _lease(self, work_item_id: str) -> Lease | None:
        with self._lock:
            return self._leases.get(work_item_id)

    def _holding(
        self, work_item_id: str, act: Callable[[Lease], Any], req: protocol.Request
    ) -> Any:
        """Act through this session's lease on the item, or as the agent (an item it
        holds from before this session) when there is none."""
        lease = self._lease(work_item_id)
        if lease is None:
            return self._request(req)
        with self._refusals():
            return act(lease)

    def _forget(self, work_item_id: str) -> None:
        with self._lock:
            self._leases.pop(work_item_id, None)

    # --- the tools (one method per tool, named after it) ------------------------------

    def _claim(self, p: t.ClaimParams) -> t.Out:
        with self._refusals():
            lease = self.agent.lease(
                p.work_type,
                p.description,
                priority=p.priority,
                team=p.team,
                work_item_id=p.work_item_id,
                stale_after=p.stale_after,
            )
        return self._keep(lease)

    def _claim_next(self, p: t.ClaimNextParams) -> t.Out:
        with self._refusals():
            lease = self.agent.lease(p.work_type, team=p.team, work_item_id=p.work_item_id)
        return self._keep(lease)

    def _progress(self, p: t.ProgressParams) -> t.Out:
        req = protocol.Progress(
            work_item_id=p.work_item_id,
            progress=p.percent,
            agent_id=self.agent_id,
            status=p.status,
            checkpoint=p.checkpoint,
        )
        data = self._holding(
            p.work_item_id, lambda le: le.progress(p.percent, p.status, p.checkpoint), req
        )
        return t.ItemOut(item=t.item(data))

    def _complete(self, p: t.CompleteParams) -> t.Out:
        req = protocol.Complete(
            work_item_id=p.work_item_id,
            agent_id=self.agent_id,
            result=p.result,
            velocity=p.velocity,
        )
        data = self._holding(p.work_item_id, lambda le: le.complete(p.result, p.velocity), req)
        self._forget(p.work_item_id)
        return t.ItemOut(item=t.item(data))

    def _release(self, p: t.ReleaseParams) -> t.Out:
        req = protocol.Release(work_item_id=p.work_item_id, agent_id=self.agent_id)
        data = self._holding(p.work_item_id, lambda le: le.release(), req)
        self._forget(p.work_item_id)
        return t.ItemOut(item=t.item(data))

    def _list(self, p: t.ListParams) -> t.Out:
        items = self.list_items(p.status, p.team, p.agent_id, p.work_type, p.limit + 1)
        return t.ItemsOut(items=items[: p.limit], truncated=len(items) > p.limit)

    def list_items(
        self,
        status: str | None = None,
        team: str | None = None,
        agent_id: str | None = None,
        work_type: str | None = None,
        limit: int = 50,
    ) -> list[t.Item]:
        req = protocol.List(
            status=status, team=team, agent_id=agent_id, work_type=work_type, limit=limit
        )
        return t.items(self._request(req))

    def _show(self, p: t.ShowParams) -> t.Out:
        return t.ItemOut(item=t.item(self._request(protocol.Show(work_item_id=p.work_item_id))))

    def _check_stale(self, p: t.NoParams) -> t.Out:
        return t.stale_out(self._request(protocol.CheckStale()))

    def _status(self, p: t.NoParams) -> t.Out:
        return t.StatusOut(
            agent_id=self.agent_id,
            held=[t.Held(work_item_id=le.work_item_id, lease=le.lease) for le in self.held()],
            heartbeat_interval=self.agent.heartbeat_interval,
            daemon=views.status_view(self._request(protocol.Status())),
        )

    # --- the AI analyses: operator requests, on the control socket --------------------

    def _ai_priorities(self, p: t.AiRankParams) -> t.Out:
        return self._analysis(protocol.AiPriorities(model=p.model, fresh=p.fresh))

    def _ai_optimize(self, p: t.AiRankParams) -> t.Out:
        return self._analysis(protocol.AiOptimize(model=p.model, fresh=p.fresh))

    def _ai_analyze(self, p: t.AiAnalyzeParams) -> t.Out:
        return self._analysis(
            protocol.AiAnalyze(prompt=p.prompt, data=p.data, model=p.model, fresh=p.fresh)
        )

    def _ai_recommend_claim(self, p: t.AiRecommendParams) -> t.Out:
        req = protocol.AiRecommendClaim(
            work_type=p.work_type,
            description=p.description,
            priority=p.priority,
            team=p.team,
            model=p.model,
            fresh=p.fresh,
        )
        return self._analysis(req)

    def _analysis(self, req: protocol.Request) -> t.Out:
        with self._control_lock:
            if self._control is None:
                wait = max(self.cfg.client_timeout, self.cfg.ai_timeout * 2 + AI_MARGIN)
                self._control = Client(self.cfg.control_socket, wait)
            try:
                data = self._control.call(req)
            except Unreachable as e:
                raise ToolError("unreachable", str(e)) from None
            except Refused as e:
                raise ToolError(e.code, e.message) from None
        if not data.get("ok"):
            err = data.get("error") or {}
            raise ToolError(
                "unavailable", f"AI analysis failed ({err.get('code')}): {err.get('message')}"
            )
        return t.AnalysisOut(analysis=views.ai_result_view(data))

    # --- resources ----------------------------------------------------------------------

    def resource(self, uri: str) -> list[t.Item]:
        if uri == HELD_URI:
            return self.list_items(status="active", agent_id=self.agent_id, limit=1000)
        if uri == BACKLOG_URI:
            return self.list_items(status="pending", limit=BACKLOG_LIMIT)
        raise ToolError("bad_request", f"no resource {uri!r}")

    def close(self) -> None:
        """Stop heartbeating; held items are left to staleness (then recovered)."""
        self.agent.close()
        with self._control_lock:
            if self._control is not None:
                self._control.close()


def _revoked(lease: Lease) -> t.Revoked:
    pushed = lease.revoked  # what coordd pushed, when it did (else a refused heartbeat)
    return t.Revoked(
        work_item_id=lease.work_item_id,
        lease=lease.lease,
        reason=lease.lost_reason,
        strategy=pushed.strategy if pushed else None,
        new_holder=pushed.new_holder if pushed else None,
    )


HELD_URI = "coordd://held"
BACKLOG_URI = "coordd://backlog"


# --- the MCP side --------------------------------------------------------------------


def _mcp_tool(tool: t.Tool) -> types.Tool:
    return types.Tool(
        name=tool.name,
        title=tool.title,
        description=tool.description,
        input_schema=t.json_schema(tool.params),
        output_schema=t.json_schema(tool.result),
        annotations=types.ToolAnnotations(
            title=tool.title,
            read_only_hint=tool.read_only,
            destructive_hint=False,
            open_world_hint=False,
        ),
    )


def _text(obj: Any) -> str:
    return json.dumps(msgspec.to_builtins(obj), sort_keys=True)


def _revoked_line(revoked: list[t.Revoked]) -> str:
    names = ", ".join(f"{r.work_item_id} ({r.reason})" for r in revoked)
    return f"REVOKED: your lease on {names} was revoked; stop all work on it now."


def tool_result(out: t.Out) -> types.CallToolResult:
    content: list[types.ContentBlock] = [types.TextContent(type="text", text=_text(out))]
    if out.revoked:
        content.insert(0, types.TextContent(type="text", text=_revoked_line(out.revoked)))
    return types.CallToolResult(content=content, structured_content=msgspec.to_builtins(out))


def error_result(e: ToolError) -> types.CallToolResult:
    err = t.ErrorOut(code=e.code, message=e.message, advice=t.advice(e.code), revoked=e.revoked)
    lines = [f"refused ({e.code}): {e.message}", f"What to do: {err.advice}"]
    if e.revoked:
        lines.append(_revoked_line(e.revoked))
    return types.CallToolResult(
        content=[types.TextContent(type="text", text="\n".join(lines))],
        structured_content=msgspec.to_builtins(err),
        is_error=True,
    )


class Notifier:
    """Sends MCP log messages outside any request: through the session of the latest
    request, the only handle the low-level server gives us on the connection."""

    LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")

    def __init__(self) -> None:
        self.session: ServerSession | None = None
        self.level = "debug"

    def seen(self, ctx: ServerRequestContext[Any]) -> None:
        self.session = ctx.session

    async def warn(self, data: dict[str, Any]) -> bool:
        if self.session is None or self.LEVELS.index("warning") < self.LEVELS.index(self.level):
            return False
        try:
            await self.session.send_log_message("warning", data, logger="coordd")
        except Exception:  # best effort: the next tool call reports it anyway
            return False
        return True


def build_server(session: Session, notifier: Notifier) -> Server[Any]:
    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        notifier.seen(ctx)
        return types.ListToolsResult(tools=[_mcp_tool(tool) for tool in session.tools()])

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        notifier.seen(ctx)
        try:
            # Abandoned on cancel: a client that gives up (or goes away) is not kept
            # waiting for a slow daemon; the thread finishes on its own.
            out = await anyio.to_thread.run_sync(
                session.call, params.name, params.arguments, abandon_on_cancel=True
            )
        except ToolError as e:
            return error_result(e)
        except Exception as e:  # a bug must not take the server (and the leases) down
            print(f"coordctl mcp: {params.name} failed: {e!r}", file=sys.stderr)
            return error_result(ToolError("internal", f"{type(e).__name__}: {e}"))
        return tool_result(out)

    async def list_resources(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        notifier.seen(ctx)
        return types.ListResourcesResult(resources=_resources(session.agent_id))

    async def read_resource(
        ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        notifier.seen(ctx)
        uri = str(params.uri)
        try:
            items = await anyio.to_thread.run_sync(session.resource, uri)
        except ToolError as e:
            # A resource has no error result: a protocol error with the same words.
            raise MCPError(types.INTERNAL_ERROR, f"{e.code}: {e.message}") from None
        return types.ReadResourceResult(
            contents=[
                types.TextResourceContents(uri=uri, mime_type="application/json", text=_text(items))
            ]
        )

    async def set_level(
        ctx: ServerRequestContext[Any], params: types.SetLevelRequestParams
    ) -> types.EmptyResult:
        notifier.seen(ctx)
        notifier.level = params.level
        return types.EmptyResult()

    server: Server[Any] = Server(
        "coordd",
        version=_version(),
        instructions=t.INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_read_resource=read_resource,
    )
    # Registered by hand: the constructor's keyword warns that logging is deprecated in
    # the newest protocol revision, while the clients of today use it.
    server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_level)
    return server


def _resources(agent_id: str) -> list[types.Resource]:
    return [
        types.Resource(
            uri=HELD_URI,
            name="held",
            title=f"Work items {agent_id} holds",
            description="The active items this agent holds, as JSON.",
            mime_type="application/json",
        ),
        types.Resource(
            uri=BACKLOG_URI,
            name="backlog",
            title="The pending backlog",
            description=f"Up to {BACKLOG_LIMIT} pending items, most urgent first, as JSON.",
            mime_type="application/json",
        ),
    ]


def _version() -> str:
    from importlib.metadata import version

    return version("coordd")


async def _watch(session: Session, notifier: Notifier, done: anyio.CancelScope) -> None:
    """Tell the client at once when a lease is revoked; end when our parent is gone (a
    client that died without closing our stdin, e.g. when a grandchild inherited it)."""
    parent = os.getppid()
    while True:
        await anyio.sleep(WATCH_EVERY)
        for r in session.take_unlogged():
            data = msgspec.to_builtins(r)
            await notifier.warn(
                {"event": "lease_revoked", **data, "advice": t.advice("lease_lost")}
            )
        if os.getppid() != parent:
            done.cancel()
            return


async def serve(session: Session) -> None:
    notifier = Notifier()
    server = build_server(session, notifier)
    async with stdio_server() as (read, write), anyio.create_task_group() as tg:
        tg.start_soon(_watch, session, notifier, tg.cancel_scope)
        await server.run(read, write, server.create_initialization_options())
        tg.cancel_scope.cancel()


def main(cfg: Config, agent_id: str, ai: bool | None = None) -> None:
    """Serve until the client closes our stdin (or goes away)."""
    # The log messages are deliberate: today's clients read them, even though the newest
    # protocol revision deprecates them (and the SDK warns on every one).
    warnings.filterwarnings("ignore", category=MCPDeprecationWarning)
    try:
        session = Session(cfg, agent_id, ai)
    except rpc.KeyFileError as e:
        print(f"coordctl mcp: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"coordctl mcp: acting as agent {agent_id} on {session.agent.endpoint}", file=sys.stderr)
    try:
        anyio.run(serve, session)
    except KeyboardInterrupt:
        pass
    finally:
        session.close()
