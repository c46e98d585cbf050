"""The route table: every request is routed, and "control socket only" is the default."""

from __future__ import annotations

from typing import Any

import pytest

from coordd import protocol
from coordd.config import Config
from coordd.core.model import WorkItem
from coordd.core.state import State
from coordd.daemon import handlers, routes
from tests.helpers import sample_request

TABLE = handlers.load()


def _ctx(control: bool) -> routes.Context:
    def no_facts() -> routes.Facts:
        raise AssertionError("not asked for")

    # The item sample_request names ("x"): an operator's ids are resolved before the
    # handler runs, and an unknown one would be refused there.
    state = State()
    state.restore(items=[WorkItem(work_item_id="x", work_type="t", description="d")])
    return routes.Context(state, Config(), dict, no_facts, control=control)


def test_every_request_of_the_protocol_has_a_route() -> None:
    missing = [t.__name__ for t in protocol.REQUEST_TYPES if t not in TABLE]
    assert missing == [], f"no route (add @route in coordd/daemon/handlers): {missing}"
    # And the codec's union is every Request there is: none is left out of the wire.
    assert set(protocol.REQUEST_TYPES) == set(protocol.Request.__subclasses__())


def test_a_request_cannot_be_routed_twice() -> None:
    with pytest.raises(RuntimeError, match="routed twice"):
        routes.route(protocol.Status)(lambda ctx, req, now: None)


@pytest.mark.parametrize(
    "cls", sorted((t for t, r in TABLE.items() if not r.agents), key=lambda t: t.__name__)
)
def test_a_route_without_agents_is_refused_on_the_agent_endpoint_before_its_handler(
    cls: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[Any] = []
    monkeypatch.setitem(TABLE, cls, routes.Route(lambda c, r, n: ran.append(r), agents=False))
    reply = routes.dispatch(_ctx(control=False), sample_request(cls), 0.0)
    assert isinstance(reply, protocol.Error) and reply.code == "not_allowed"
    assert reply.message == f"{cls.__name__} is accepted only on the control socket"
    assert ran == []
    routes.dispatch(_ctx(control=True), sample_request(cls), 0.0)
    assert len(ran) == 1


def test_agents_true_routes_are_the_agent_protocol() -> None:
    # The agent endpoint serves exactly these; anything new is control-only until said.
    served = {t.__name__ for t, r in TABLE.items() if r.agents}
    assert served == {
        "Register",
        "Heartbeat",
        "HeartbeatBatch",
        "Add",
        "Claim",
        "ClaimNext",
        "Progress",
        "Complete",
        "Release",
        "List",
        "Show",
        "Agents",
        "Status",
        "CheckStale",
        "Freshness",
    }
