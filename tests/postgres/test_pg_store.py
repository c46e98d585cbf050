"""The PostgreSQL store behind the seam, in this process: what is appended comes back,
a snapshot compacts the journal, the lease fences a stale writer, migrate is versioned."""

from __future__ import annotations

import time
from typing import Any

import pytest

from coordd.config import Config
from coordd.core.model import Limits
from coordd.core.state import State
from coordd.storage.store import StoreError, open_store
from tests.helpers import wait_for
from tests.postgres.pg import PgCluster


def pg_config(dsn: str, **kw: Any) -> Config:
    base: dict[str, Any] = {
        "store": "postgres",
        "postgres_dsn": dsn,
        "lease_duration": 4.0,
        "lease_renew": 1.0,
        "lease_retry": 0.5,
        "agent_endpoint": "ipc:///tmp/nowhere.sock",
    }
    return Config(**{**base, **kw})


def fill(state: State, now: float, n: int = 3) -> None:
    """Some of every record kind: items (claimed, completed), an agent, completions."""
    state.register("a1", now, team="t")
    for i in range(n):
        state.add("build", f"item {i}", now, team="t", work_item_id=f"w{i}")
    state.claim_next("a1", now, work_item_id="w0")
    state.claim_next("a1", now, work_item_id="w1")
    state.complete("w1", now, "a1", state.items["w1"].lease, result="ok", velocity=3)


def same(a: State, b: State) -> None:
    assert a.items == b.items
    assert a.agents == b.agents
    assert a.completions == b.completions
    assert a.team_velocity == b.team_velocity
    assert a.lease_seq == b.lease_seq


def reopen(cfg: Config) -> tuple[Any, State]:
    store = open_store(cfg)
    store.lock()
    state = State(cfg.policy(), Limits())
    store.load(state)
    return store, state


def test_migrate_is_versioned_and_idempotent(pg_dsn: str) -> None:
    store = open_store(pg_config(pg_dsn))
    try:
        assert store.migrate().endswith("upgraded from version 0 to 1")
        assert store.migrate().endswith("at version 1; nothing to do")
    finally:
        store.close()


def test_a_store_without_schema_says_to_migrate(pg_dsn: str) -> None:
    store = open_store(pg_config(pg_dsn))
    with pytest.raises(StoreError, match="run `coordd migrate`"):
        store.lock()
    store.close()


def test_what_is_appended_is_loaded_again(migrated_dsn: str) -> None:
    cfg = pg_config(migrated_dsn)
    store, state = reopen(cfg)
    now = time.time()
    fill(state, now)
    records, _ = state.drain()
    store.append(records[:2])
    store.append(records[2:])
    store.close()
    store2, loaded = reopen(cfg)
    try:
        same(state, loaded)
    finally:
        store2.close()


def test_a_snapshot_compacts_the_rows_it_covers(migrated_dsn: str, pg: PgCluster) -> None:
    cfg = pg_config(migrated_dsn)
    store, state = reopen(cfg)
    now = time.time()
    fill(state, now)
    store.append(state.drain()[0])
    assert store.snapshot_background(state, now)
    result = wait_for(store.poll_snapshot, timeout=20)
    assert result.ok, result.reason
    state.claim_next("a1", now, work_item_id="w2")
    store.append(state.drain()[0])
    db = migrated_dsn.split("///")[1].split("?")[0]
    with pg.connect(db) as conn:
        rows = conn.execute("SELECT count(*) FROM coordd_journal").fetchone()
    assert rows == (1,)  # the batch after the snapshot; the ones before are gone
    store.close()
    store2, loaded = reopen(cfg)
    try:
        same(state, loaded)
        assert loaded.items["w2"].agent_id == "a1"
    finally:
        store2.close()


def test_a_second_holder_is_refused_while_the_lease_lives(migrated_dsn: str) -> None:
    cfg = pg_config(migrated_dsn)
    first, _ = reopen(cfg)
    second = open_store(cfg)
    try:
        with pytest.raises(StoreError, match="is served by"):
            second.lock()
    finally:
        second.close()
        first.close()


def test_a_stale_leader_cannot_write_once_another_holds_the_lease(
    migrated_dsn: str, pg: PgCluster
) -> None:
    cfg = pg_config(migrated_dsn)
    old, state = reopen(cfg)
    db = migrated_dsn.split("///")[1].split("?")[0]
    # As if the old leader had been paused past its lease: expire it in PostgreSQL.
    with pg.connect(db) as conn:
        conn.execute("UPDATE coordd_lease SET expires_at = now() - interval '1 second'")
    new, _ = reopen(cfg)
    try:
        state.register("late", time.time())
        with pytest.raises(StoreError, match="refused: term 1 .* is no longer ours"):
            old.append(state.drain()[0])
        with pytest.raises(StoreError):
            old.tick()  # and it stays down
        with pg.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM coordd_journal").fetchone() == (0,)
    finally:
        old.close()
        new.close()


def test_a_leader_that_cannot_renew_steps_down_before_expiry(
    migrated_dsn: str, pg: PgCluster
) -> None:
    cfg = pg_config(migrated_dsn, lease_duration=2.0, lease_renew=0.5, lease_retry=0.2)
    store, _ = reopen(cfg)
    db = migrated_dsn.split("///")[1].split("?")[0]
    try:
        # Someone else's term: the next renewal is refused.
        with pg.connect(db) as conn:
            conn.execute("UPDATE coordd_lease SET term = term + 1, holder = 'other'")
        with pytest.raises(StoreError, match="renewal refused"):
            wait_for(lambda: store.tick(), timeout=5)
            raise AssertionError("still leading")
    finally:
        store.close()
