"""Every number on the wire is bounded (issue 14, finding 4 and 7).

The walk: every numeric field of every request type (found by introspecting the
protocol's structs, so a new field is walked without editing this file), set to each
extreme a hostile or buggy client could send. Each must be refused by the decoder
with a message naming the field, or be accepted, after which ``status``, ``list``,
``show``, a snapshot and a restart still work and give back the same state.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from coordd import protocol as p
from coordd.config import Config
from coordd.core.model import AddCompletion, Completion
from coordd.core.state import State
from coordd.daemon import handlers, routes
from coordd.storage.store import FileStore
from tests.core.storage_helpers import view
from tests.core.test_handlers import T0, Daemonless

handlers.load()
mi = msgspec.inspect

INT_EXTREMES: list[Any] = [0, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**64 - 1, -(2**63)]
FLOAT_EXTREMES: list[Any] = [0.0, -1.0, 1e308, math.inf, -math.inf, math.nan]
HUGE = [2**64 - 1, 2**63 - 1, math.inf]


def _numeric(t: mi.Type) -> str | None:
    """'int' or 'float' when the type is (optionally) a number."""
    if isinstance(t, mi.UnionType):
        kinds = {_numeric(u) for u in t.types} - {None}
        return next(iter(kinds)) if kinds else None
    if isinstance(t, mi.IntType):
        return "int"
    if isinstance(t, mi.FloatType):
        return "float"
    return None


def numeric_fields(cls: type) -> Iterator[tuple[tuple[Any, ...], str]]:
    """(path in the encoded message, kind) of every number in a request, nested ones
    (a heartbeat batch's ``[id, lease]`` pairs) included."""
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    for f in info.fields:
        kind = _numeric(f.type)
        if kind is not None:
            yield (f.encode_name,), kind
        t = f.type
        if isinstance(t, mi.ListType) and isinstance(t.item_type, mi.StructType):
            inner = t.item_type
            for i, g in enumerate(inner.fields):
                kind = _numeric(g.type)
                if kind is not None:
                    key = i if inner.array_like else g.encode_name
                    yield (f.encode_name, 0, key), kind


WALK = [
    (cls, path, kind)
    for cls in p.REQUEST_TYPES
    for path, kind in numeric_fields(cls)
    if path != ("v",)  # compared only; another value is answered version_mismatch
]


def test_the_walk_covers_the_numbers_we_know() -> None:
    names = {(c.__name__, path) for c, path, _ in WALK}
    for expected in [
        ("Complete", ("velocity",)),
        ("Add", ("stale_after",)),
        ("Claim", ("stale_after",)),
        ("Register", ("capacity",)),
        ("Heartbeat", ("lease",)),
        ("Heartbeat", ("progress",)),
        ("HeartbeatBatch", ("items", 0, 1)),
        ("Progress", ("progress",)),
        ("List", ("limit",)),
    ]:
        assert expected in names


class World:
    """A state with an agent holding items, on a real store, and the baseline of each
    request: a message that is accepted as it is and acts on the held items."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.d = Daemonless(state_dir=str(tmp), coordination_dir=str(tmp))
        self.store = FileStore(tmp)
        self.store.load(State())
        self.wids = []
        for k in range(3):
            item = self.d.call(p.Claim(agent_id="a", work_type="t", description=f"d{k}"), T0)
            self.wids.append((item["work_item_id"], item["lease"]))
        self.flush()

    def flush(self) -> None:
        self.store.append(self.d.state.drain()[0])

    def baseline(self, cls: type[p.Request]) -> dict[str, Any]:
        (wid, lease), _, _ = self.wids
        fields: dict[str, Any] = {
            "agent_id": "a",
            "work_item_id": wid,
            "lease": lease,
            "work_type": "t",
            "description": "d",
            "progress": 50,
            "strategy": "none",
            "prompt": "why",
            "items": [[wid, lease]],
        }
        names = {f.encode_name for f in mi.type_info(cls).fields}  # type: ignore[attr-defined]
        if cls in (p.Add, p.Claim):
            fields.pop("work_item_id")
        if cls is p.HeartbeatBatch:
            fields["ack"] = True
        msg = {k: v for k, v in fields.items() if k in names}
        tag = mi.type_info(cls).tag  # type: ignore[attr-defined]
        return {"op": tag, "v": 1, **msg}


def _set(msg: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    target: Any = msg
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


def _reads_still_work(w: World, now: float) -> None:
    """status, list, show: answered and encodable (what the loop sends back)."""
    codec = p.Codec()
    for req in (p.Status(), p.List(), p.Show(work_item_id=w.wids[1][0]), p.Agents()):
        codec.encode(p.Ok(data=routes.dispatch(w.d.control, req, now)))


def _send(w: World, raw: bytes, now: float) -> Any:
    """What the loop does with one message: decode (a refusal is the decoder's message),
    dispatch (a domain refusal is fine), encode the answer."""
    req = p.Codec().request_decoder.decode(raw)
    try:
        data = routes.dispatch(w.d.control, req, now)
    except Exception as e:  # a domain refusal (unknown_work, lease_lost, ...)
        assert getattr(e, "code", "internal") != "internal", e
        return e
    if data is not routes.NO_REPLY and not hasattr(data, "job"):  # AI jobs run elsewhere
        p.Codec().encode(p.Ok(data=data))
    return data


@pytest.mark.parametrize(
    ("cls", "path", "kind"),
    WALK,
    ids=[f"{c.__name__}.{'.'.join(map(str, pa))}" for c, pa, _ in WALK],
)
def test_every_number_is_refused_by_name_or_kept_safely(
    tmp_path: Path, cls: type[p.Request], path: tuple[Any, ...], kind: str
) -> None:
    for n, value in enumerate(INT_EXTREMES + FLOAT_EXTREMES):
        case = tmp_path / str(n)
        case.mkdir()
        w = World(case)
        msg = w.baseline(cls)
        _set(msg, path, value)
        raw = msgspec.msgpack.encode(msg)
        now = T0 + 1
        try:
            _send(w, raw, now)
        except msgspec.ValidationError as e:
            # The loop answers bad_request with this text: it names the field.
            assert f"$.{path[0]}" in str(e), (value, str(e))
            continue
        w.flush()
        _reads_still_work(w, now)
        assert w.store.snapshot(w.d.state, now).ok, value
        w.store.close()
        again = State(w.d.cfg.policy())
        FileStore(case).load(again)
        assert view(again) == view(w.d.state), value  # field for field
        w.d.state = again
        w.d.control.state = again
        _reads_still_work(w, now)


def test_huge_and_non_finite_values_are_refused_where_they_would_be_kept() -> None:
    decode = p.Codec().request_decoder.decode
    base = {"op": "complete", "v": 1, "work_item_id": "w"}
    for value in HUGE:
        with pytest.raises(msgspec.ValidationError, match=r"\$\.velocity"):
            decode(msgspec.msgpack.encode({**base, "velocity": value}))
    claim = {"op": "claim", "v": 1, "agent_id": "a", "work_type": "t", "description": "d"}
    for value in (math.inf, math.nan, -math.inf, 0.0):
        with pytest.raises(msgspec.ValidationError, match=r"\$\.stale_after"):
            decode(msgspec.msgpack.encode({**claim, "stale_after": value}))


def test_finding_4_two_huge_velocities_in_one_team_leave_status_working(tmp_path: Path) -> None:
    # Finding 4 as a client would send it: refused at the edge, status answers.
    w = World(tmp_path)
    codec = p.Codec()
    for wid, lease in w.wids[:2]:
        raw = msgspec.msgpack.encode(
            {"op": "complete", "v": 1, "work_item_id": wid, "lease": lease, "velocity": 2**64 - 1}
        )
        with pytest.raises(msgspec.ValidationError, match=r"\$\.velocity"):
            codec.request_decoder.decode(raw)
    codec.encode(p.Ok(data=routes.dispatch(w.d.control, p.Status(), T0)))


def test_a_state_already_holding_huge_velocities_still_answers_status(tmp_path: Path) -> None:
    # A journal written before the bound: two completions of 2**64-1 in one team. The
    # total is held at 2**63-1 on load, so status (msgpack) and a snapshot still work.
    store = FileStore(tmp_path)
    store.load(State())
    huge = [
        AddCompletion(
            Completion(
                work_item_id=f"w{k}",
                completed_at=T0,
                agent_id="a",
                result="ok",
                velocity_points=2**64 - 1,
                team="core",
            )
        )
        for k in range(2)
    ]
    store.append(huge)
    store.close()
    st = State()
    store = FileStore(tmp_path)
    store.load(st)
    assert st.team_velocity == {"core": 2**63 - 1}
    d = Daemonless()
    d.state = st
    d.control.state = st
    status = p.Codec().encode(p.Ok(data=routes.dispatch(d.control, p.Status(), T0)))
    assert status
    assert store.snapshot(st, T0).ok
    store.close()
    again = State()
    FileStore(tmp_path).load(again)
    assert again.team_velocity == {"core": 2**63 - 1}


def test_finding_7_stale_after_inf_is_refused_and_a_finite_one_reads_back_exactly(
    tmp_path: Path,
) -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.stale_after"):
        p.Codec().request_decoder.decode(
            msgspec.msgpack.encode(
                {"op": "add", "v": 1, "work_type": "t", "description": "d", "stale_after": math.inf}
            )
        )
    st = State()
    with pytest.raises(Exception, match="finite"):
        st.add("t", "d", T0, stale_after=math.inf)
    store = FileStore(tmp_path)
    store.load(State())
    st.add("t", "d", T0 + 0.123456789, stale_after=0.1 + 0.2)
    store.append(st.drain()[0])
    assert store.snapshot(st, T0).ok
    st.add("t", "after the snapshot", T0 + 1e-9, stale_after=1e-300)
    store.append(st.drain()[0])
    store.close()
    again = State()
    FileStore(tmp_path).load(again)
    assert view(again) == view(st)


def test_config_refuses_non_finite_durations() -> None:
    from coordd.config import validate

    problems = validate(Config(stale_threshold=math.inf, tick_interval=math.nan))
    assert any("stale_threshold" in x for x in problems)
    assert any("tick_interval" in x for x in problems)
