"""Which request runs which handler, and on which socket: one table, filled where
each handler is defined.

``@route(protocol.Release, agents=True)`` registers a handler and allows it on the
agent endpoint. Without ``agents=True`` a request is served on the control socket
only: ``dispatch`` refuses it on the agent endpoint before any handler runs, so a new
operator request is safe by default (an allow-list, not a deny-list to remember).

A handler is a plain function ``(ctx, req, now) -> reply data`` of a ``Context``: the
state, the configuration, a snapshot callback and read-only daemon facts. It holds no
sockets and reads no clock, so it is tested in-process with any ``now``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import msgspec
import structlog

from coordd import protocol
from coordd.config import Config
from coordd.core.model import BadRequest, DomainError, UnknownWork
from coordd.core.state import State
from coordd.protocol import Error

log = structlog.get_logger("coordd")

R = TypeVar("R", bound=protocol.Request)
Handler = Callable[["Context", Any, float], Any]

# A handler's answer when there is nothing to send (a one-way heartbeat).
NO_REPLY: Any = object()


@dataclass(frozen=True)
class Facts:
    """What the daemon knows about itself, as of the request (read-only for handlers)."""

    version: str
    pid: int
    started_at: float
    health: str
    degraded_reason: str
    snapshot: dict[str, Any]
    ai: dict[str, float]
    metrics: dict[str, Any] | None = None  # {state: on|off, listen, reason}
    role: str = "leader"  # or "standby" (PostgreSQL store, another coordd leads)
    leader: str = ""  # a standby: the leader's agent endpoint


@dataclass
class Context:
    """What a handler may use. ``control`` says which socket the request came on: an
    operator on the control socket may act without an agent id."""

    state: State
    cfg: Config
    request_snapshot: Callable[[], dict[str, Any]]
    facts: Callable[[], Facts]
    control: bool = True


class Route(NamedTuple):
    handler: Handler
    agents: bool


ROUTES: dict[type[protocol.Request], Route] = {}


def route(
    request: type[R], agents: bool = False
) -> Callable[[Callable[[Context, R, float], Any]], Callable[[Context, R, float], Any]]:
    """Register the decorated function as the one handler of ``request``."""

    def register(fn: Callable[[Context, R, float], Any]) -> Callable[[Context, R, float], Any]:
        if request in ROUTES:
            raise RuntimeError(f"{request.__name__} is routed twice")
        ROUTES[request] = Route(fn, agents)
        return fn

    return register


def refusal(request: type) -> Error:
    """The reply to an operator request sent on the agent endpoint."""
    return Error(
        code="not_allowed",
        message=f"{request.__name__} is accepted only on the control socket",
    )


def allowed(request: type, control: bool) -> bool:
    """May ``request`` be served on this socket? Unknown requests never are."""
    r = ROUTES.get(request)
    return r is not None and (control or r.agents)


def dispatch(ctx: Context, req: protocol.Request, now: float) -> Any:
    """Run the request's handler, or refuse it (``Error``) on a socket it is not for:
    what the loop does, without sockets (for in-process callers and tests). Domain
    errors raise, for the caller to answer with their code."""
    if not allowed(type(req), ctx.control):
        return refusal(type(req))
    if ctx.control:
        req = expand_ids(ctx.state, req)
    return ROUTES[type(req)].handler(ctx, req, now)


def expand_ids(state: State, req: Any) -> Any:
    """An operator's request with every abbreviated item id (as coordctl shows them)
    replaced by the full one; refused when one matches no item or several."""
    changes: dict[str, Any] = {}
    wid = getattr(req, "work_item_id", None)
    if wid and wid not in state.items and not isinstance(req, ADDING):
        changes["work_item_id"] = state.resolve(wid)
    after = getattr(req, "after", None)
    if after and any(d not in state.items for d in after):
        changes["after"] = [_expanded(state, d) for d in after]
    return msgspec.structs.replace(req, **changes) if changes else req


def _expanded(state: State, given: str) -> str:
    """A dependency's full id; one that names nothing is left for the state to refuse
    (it says which ids are unknown, or that an item cannot wait for itself)."""
    try:
        return state.resolve(given)
    except UnknownWork:
        return given


# Requests whose work_item_id names a new item: nothing to expand.
ADDING = (protocol.Add, protocol.Claim)


def acting_agent(ctx: Context, req: Any) -> str | None:
    """The acting agent. On the agent endpoint it is required; an operator on the
    control socket may act without one (ownership is then not checked)."""
    agent_id = getattr(req, "agent_id", None)
    if not agent_id and not ctx.control:
        raise BadRequest("agent_id is required on the agent endpoint")
    return agent_id or None


def log_refused(
    req: Any, e: DomainError, work_item_id: str | None = None, lease: int | None = None
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
