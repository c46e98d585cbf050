"""The throwaway PostgreSQL cluster of the tests (shared with the bench)."""

from bench.pg_cluster import PG_BIN, PgCluster

__all__ = ["PG_BIN", "PgCluster"]
