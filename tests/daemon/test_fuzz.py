"""Property-based fuzzing of a running coordd on both sockets.

Hypothesis generates garbage (random bytes, truncated and mutated msgpack, wrong types,
wrong union tags, oversized strings, deep nesting, extra and empty frames) interleaved
with valid requests on a small set of ids. The same valid requests are replayed on an
in-process ``State`` (the model). Promises checked:

- every garbage message gets an ``Error`` (bad_request or version_mismatch) and no
  garbage ever changes state (a generated message the decoder accepts is not garbage:
  it is filtered out, so the property cannot be satisfied by luck);
- every valid request gets the answer the model gives (same item, same error code);
- at the end the daemon's items and agents equal the model's;
- the daemon's resident memory grows by less than RSS_BOUND_MB.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from coordd import protocol
from coordd.core.model import DomainError
from coordd.core.rules import Policy
from coordd.core.state import State
from tests.conftest import CoorddProcess

EXAMPLES = 1500  # each: a few garbage messages and one valid request
RSS_BOUND_MB = 40  # growth allowed after warm-up (the model holds at most 8 items)
WIDS = [f"w{i}" for i in range(8)]
AGENTS = ["a0", "a1", "a2"]
# Fields that depend on when the daemon handled a request; everything else must match.
TIMES = {
    "claimed_at",
    "last_heartbeat",
    "created_at",
    "completed_at",
    "stale_since",
    "recovered_at",
    "registered_at",
}
TAGS = [t.__struct_config__.tag for t in protocol.REQUEST_TYPES]
FIELDS = sorted({f for t in protocol.REQUEST_TYPES for f in t.__struct_fields__})
DECODER = protocol.Codec().request_decoder


# --- valid requests and the model ----------------------------------------------------

valid_ops = st.tuples(
    st.sampled_from(
        ["add", "claim_next", "progress", "complete", "release", "register", "heartbeat"]
    ),
    st.sampled_from(WIDS),
    st.sampled_from(AGENTS),
    st.sampled_from(["right", "wrong", "none"]),
    st.integers(0, 100),
    st.text(max_size=30),
    st.booleans(),  # on the control socket?
)


def _lease(model: State, wid: str, choice: str) -> int | None:
    item = model.items.get(wid)
    current = item.lease if item is not None else 0
    return {"right": current, "wrong": current + 1000, "none": None}[choice]


def build(model: State, op: tuple[Any, ...]) -> tuple[protocol.Request, Any]:
    """The request, and a function applying it to the model (what the handler calls)."""
    kind, wid, agent, lease_choice, pct, text, _ = op
    lease = _lease(model, wid, lease_choice)
    match kind:
        case "add":
            return protocol.Add(work_type="t", description=text, work_item_id=wid), (
                lambda now: model.add("t", text, now, "medium", "", wid, None)
            )
        case "claim_next":
            return protocol.ClaimNext(agent_id=agent, work_item_id=wid), (
                lambda now: model.claim_next(agent, now, None, None, wid)
            )
        case "progress":
            return protocol.Progress(work_item_id=wid, progress=pct, agent_id=agent, lease=lease), (
                lambda now: model.progress(wid, pct, now, agent, lease, None)
            )
        case "complete":
            return protocol.Complete(
                work_item_id=wid, agent_id=agent, lease=lease, result=text, velocity=pct
            ), (lambda now: model.complete(wid, now, agent, lease, text, pct))
        case "release":
            return protocol.Release(work_item_id=wid, agent_id=agent, lease=lease), (
                lambda now: model.release(wid, now, agent, lease)
            )
        case "register":
            return protocol.Register(agent_id=agent, team=text[:10]), (
                lambda now: model.register(agent, now, text[:10])
            )
    return protocol.Heartbeat(agent_id=agent, work_item_id=wid, lease=lease, ack=True), (
        lambda now: {"refreshed": model.heartbeat(agent, now, wid, lease)}
    )


def untimed(data: Any) -> Any:
    data = msgspec.to_builtins(data)
    if isinstance(data, dict):
        return {k: v for k, v in data.items() if k not in TIMES}
    return data


def expect(model: State, apply: Any) -> Any:
    try:
        result = apply(time.time())
    except DomainError as e:
        result = protocol.Error(code=e.code, message="")
    model.drain()
    return result


# --- garbage ---------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)
tags = st.sampled_from(TAGS) | st.text(max_size=12) | st.integers(-(2**63), 2**63) | st.none()


def _valid_bytes() -> st.SearchStrategy[bytes]:
    return st.builds(lambda op: msgspec.msgpack.encode(build(State(), op)[0]), valid_ops)


wrong_types = st.builds(
    lambda tag, fields, v: msgspec.msgpack.encode({"op": tag, "v": v, **fields}),
    tags,
    st.dictionaries(st.sampled_from(FIELDS), values, max_size=5),
    st.sampled_from([1, 1, 1, 2, -1, "1", None]),
)
huge = st.builds(
    lambda tag, field, n: msgspec.msgpack.encode({"op": tag, "v": 1, field: "x" * n}),
    st.sampled_from(TAGS),
    st.sampled_from(FIELDS),
    st.sampled_from([201, 10_001, 300_000]),
)
truncated = st.builds(lambda b, cut: b[: cut % max(len(b), 1)], _valid_bytes(), st.integers(0))
mutated = st.builds(
    lambda b, edits: bytes((edits.get(i, c)) for i, c in enumerate(b)),
    _valid_bytes(),
    st.dictionaries(st.integers(0, 60), st.integers(0, 255), min_size=1, max_size=4),
)


def _deep(depth: int, container: int) -> bytes:
    enc = msgspec.msgpack.encode
    return (
        b"\x83"
        + enc("op")
        + enc("list")
        + enc("v")
        + enc(1)
        + enc("x")
        + bytes([container]) * depth
        + b"\xc0"
    )


deep = st.builds(_deep, st.integers(50, 150_000), st.sampled_from([0x91, 0x81]))
payloads = st.binary(max_size=300) | wrong_types | huge | truncated | mutated | deep | st.just(b"")


class Frames(list[bytes]):
    """The frames of one message; a short repr, so a failing example stays readable."""

    def __repr__(self) -> str:
        return f"Frames({[f[:40] + (b'...' if len(f) > 40 else b'') for f in self]})"


frames = st.builds(
    lambda extra, payload: Frames([*extra, payload]),
    st.lists(st.binary(max_size=16), max_size=3),
    payloads,
)


def harmless(parts: list[bytes]) -> bool:
    """True unless the daemon would accept the message as a request (then it is valid)."""
    try:
        req = DECODER.decode(parts[-1])
    except Exception:
        return True
    return bool(req.v != protocol.PROTOCOL_VERSION)


# --- the test --------------------------------------------------------------------------


def _dealer(endpoint: str) -> zmq.Socket[bytes]:
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.connect(endpoint)
    return sock


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(120)
def test_garbage_never_breaks_what_valid_requests_build(coordd_factory: Any) -> None:
    d: CoorddProcess = coordd_factory({"stale_threshold": 100_000.0, "tick_interval": 0.05})
    assert d.proc is not None
    model = State(Policy(stale_threshold=100_000.0))
    agent_ep, control_ep = d.agent_endpoint, "ipc://" + d.control_socket
    socks = {
        "agent": _dealer(agent_ep),
        "control": _dealer(control_ep),
        "junk_agent": _dealer(agent_ep),
        "junk_control": _dealer(control_ep),
    }
    seen = {"garbage": 0, "valid": 0, "filtered": 0}
    rss: list[int] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # one shared daemon: shrinking would replay on new state
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(frames, max_size=10), valid_ops, st.booleans())
    def exchange(junk: list[list[bytes]], op: tuple[Any, ...], junk_on_control: bool) -> None:
        for parts in junk:
            if not harmless(parts):
                seen["filtered"] += 1
                continue
            sock = socks["junk_control" if junk_on_control else "junk_agent"]
            sock.send_multipart(parts)
            reply = d.codec.reply_decoder.decode(sock.recv_multipart()[-1])
            assert isinstance(reply, protocol.Error), (parts[-1][:80], reply)
            assert reply.code in ("bad_request", "version_mismatch"), reply
            seen["garbage"] += 1
        req, apply = build(model, op)
        sock = socks["control" if op[-1] else "agent"]
        got = d.request(sock, req)
        want = expect(model, apply)
        if isinstance(want, protocol.Error):
            assert isinstance(got, protocol.Error) and got.code == want.code, (req, got)
        else:
            assert isinstance(got, protocol.Ok), (req, got)
            assert untimed(got.data) == untimed(want), req
        seen["valid"] += 1
        if seen["valid"] == 100:
            rss.append(_rss_kb(d.proc.pid))  # after warm-up: imports, caches, pools

    start = time.monotonic()
    exchange()
    elapsed = time.monotonic() - start
    rss.append(_rss_kb(d.proc.pid))

    listed = d.call(protocol.List(limit=100))
    assert {i["work_item_id"]: untimed(i) for i in listed} == {
        w: untimed(item) for w, item in model.items.items()
    }
    agents = {a["agent_id"]: untimed(a) for a in d.call(protocol.Agents())}
    for a in agents.values():
        a.pop("current_workload")
    assert agents == {k: untimed(a) for k, a in model.agents.items()}
    assert d.proc.poll() is None
    growth_mb = (rss[-1] - rss[0]) / 1024
    print(f"fuzz: {seen} in {elapsed:.1f}s; rss {rss[0] // 1024} -> {rss[-1] // 1024} MB")
    assert seen["garbage"] >= 5000
    assert growth_mb < RSS_BOUND_MB
    for sock in socks.values():
        sock.close()
