"""The PostgreSQL schema (versioned, upgraded by ``coordd migrate``) and how coordd
connects: one ``Connector`` that knows the DSN, the password file and the timeouts.

A password never appears in a log line or an error: it comes from the DSN, libpq's
own ``PGPASSWORD``/``PGPASSFILE``, or ``postgres_password_file``, and ``redacted``
is what coordd prints of a DSN.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo

from coordd.storage.files import StoreError

SCHEMA_VERSION = 1

# One entry per version: the statements that bring version N-1 to N. Never edit a
# released entry; add the next one.
MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE coordd_lease (
    cluster     text PRIMARY KEY,
    holder      text NOT NULL,
    address     text NOT NULL DEFAULT '',
    term        bigint NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE TABLE coordd_journal (
    cluster  text NOT NULL,
    seq      bigserial NOT NULL,
    term     bigint NOT NULL,
    records  bytea NOT NULL,
    PRIMARY KEY (cluster, seq)
);
CREATE TABLE coordd_snapshot (
    cluster     text PRIMARY KEY,
    covers_seq  bigint NOT NULL,
    created_at  timestamptz NOT NULL,
    header      bytea NOT NULL
);
CREATE TABLE coordd_snapshot_chunk (
    cluster  text NOT NULL,
    n        integer NOT NULL,
    records  bytea NOT NULL,
    PRIMARY KEY (cluster, n)
);
-- A standby LISTENs on coordd_journal and reads the rows after the last it applied.
CREATE FUNCTION coordd_journal_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('coordd_journal', NEW.cluster);
    RETURN NULL;
END $$;
CREATE TRIGGER coordd_journal_notify AFTER INSERT ON coordd_journal
    FOR EACH ROW EXECUTE FUNCTION coordd_journal_notify();
""",
}

# Serializes concurrent `coordd migrate` runs (any constant both sides agree on).
MIGRATE_LOCK = 0x636F6F7264


class Connector:
    """Opens connections to the configured database (autocommit, every statement
    bounded by ``statement_timeout`` and the connect by ``connect_timeout``)."""

    def __init__(self, dsn: str, password_file: str = "", timeout: float = 5.0) -> None:
        self.dsn = dsn
        self.password_file = password_file
        self.timeout = timeout

    def connect(self) -> psycopg.Connection[Any]:
        kwargs: dict[str, Any] = {
            # libpq's connect_timeout is whole seconds (and at least 2).
            "connect_timeout": max(2, math.ceil(self.timeout)),
            "options": f"-c statement_timeout={int(self.timeout * 1000)}",
            "application_name": "coordd",
        }
        if self.password_file:
            kwargs["password"] = _read_password(self.password_file)
        return psycopg.connect(self.dsn, autocommit=True, **kwargs)

    def redacted(self) -> str:
        return redact(self.dsn)


def _read_password(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as e:
        raise StoreError(f"cannot read postgres_password_file {path}: {e.strerror}") from None


def redact(dsn: str) -> str:
    """The DSN as coordd may print it: the password replaced by ``***``."""
    try:
        parts = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable dsn>"
    if "password" in parts:
        parts["password"] = "***"
    return conninfo.make_conninfo(**{k: str(v) for k, v in parts.items()})


def current_version(conn: psycopg.Connection[Any]) -> int:
    """The schema version in the database (0: none yet)."""
    exists = conn.execute("SELECT to_regclass('coordd_schema') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return 0
    row = conn.execute("SELECT max(version) FROM coordd_schema").fetchone()
    return int(row[0] or 0) if row else 0


def migrate(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """Bring the schema to ``SCHEMA_VERSION``; (version before, version after)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS coordd_schema"
            " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        before = current_version(conn)
        if before > SCHEMA_VERSION:
            raise StoreError(
                f"the database's coordd schema is version {before}, newer than this"
                f" coordd's {SCHEMA_VERSION}: upgrade coordd"
            )
        for version in range(before + 1, SCHEMA_VERSION + 1):
            conn.execute(MIGRATIONS[version].encode())
            conn.execute("INSERT INTO coordd_schema (version) VALUES (%s)", (version,))
    return before, SCHEMA_VERSION


def check_schema(conn: psycopg.Connection[Any]) -> None:
    """Raise StoreError unless the schema is the one this coordd writes."""
    version = current_version(conn)
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"the database's coordd schema is version {version}, this coordd needs"
            f" {SCHEMA_VERSION}: run `coordd migrate`"
        )
