"""Fixtures of the PostgreSQL store's tests: one throwaway cluster per session, one
fresh (migrated) database per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from coordd.storage.pg_schema import Connector, migrate
from tests.postgres.pg import PG_BIN, PgCluster


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL 15 is not installed ({PG_BIN}): run `make system-deps`")
    cluster = PgCluster()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def pg_dsn(pg: PgCluster) -> str:
    """The DSN of a fresh database, schema not yet created."""
    return pg.new_database()


@pytest.fixture
def migrated_dsn(pg_dsn: str) -> str:
    """The DSN of a fresh database with coordd's schema."""
    with Connector(pg_dsn).connect() as conn:
        migrate(conn)
    return pg_dsn
