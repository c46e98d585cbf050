"""Helpers shared by the storage tests: a state driven through a store, and what a
user can see of a state (to compare before and after a restart)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec

from coordd.core.state import State
from coordd.storage.store import FileStore, Store

T0 = 1_750_000_000.0


def view(st: State) -> dict[str, Any]:
    """Everything a user can see of a state (indexes aside)."""
    items = {k: msgspec.structs.asdict(v) for k, v in st.items.items()}
    return {
        "items": items,
        "agents": msgspec.to_builtins(st.agents),
        "completions": msgspec.to_builtins(st.completions),
        "team_velocity": st.team_velocity,
        "lease_seq": st.lease_seq,
        "counts": st.counts(),
    }


def work(st: State, store: Store, n: int, start: int = 0) -> None:
    """n claims and n // 2 completions, each its own batch (one append each)."""
    for k in range(start, start + n):
        item = st.claim(
            f"a{k % 3}", "build", f"item {k}", T0 + k, team="core", work_item_id=f"w{k}"
        )
        store.append(st.drain()[0])
        if k % 2 == 0:
            st.complete(item.work_item_id, T0 + k + 0.5, f"a{k % 3}", item.lease, velocity=3)
            store.append(st.drain()[0])


def reload(d: Path) -> tuple[State, FileStore]:
    """A fresh state loaded from ``d``, and its open store."""
    st = State()
    store = FileStore(d)
    store.load(st)
    return st, store


def open_fresh(d: Path, fsync: str = "always", **kw: Any) -> tuple[State, FileStore]:
    """An empty state and a store on a new directory ``d``."""
    d.mkdir(exist_ok=True)
    st, store = State(), FileStore(d, fsync, **kw)
    store.load(st)
    return st, store


def written(d: Path, n: int) -> tuple[State, Path]:
    """A closed store holding n claims (and completions); its state and WAL path."""
    st, store = open_fresh(d)
    work(st, store, n)
    store.close()
    return st, store.wal_path


def wait_snapshot(store: Store, timeout: float = 10.0) -> Any:
    """The background snapshot's result once its child is done (None after ``timeout``)."""
    deadline = time.monotonic() + timeout
    result = None
    while result is None and time.monotonic() < deadline:
        result = store.poll_snapshot()
        time.sleep(0.005)
    return result
