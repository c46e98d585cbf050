"""A throwaway PostgreSQL 15 cluster for the tests and the bench: initdb + pg_ctl in a temporary
directory, reachable only on a Unix socket in that directory (listen_addresses='').

PostgreSQL refuses to run as root, so when the tests run as root the server runs as
``nobody`` (the directory is handed to it); as any other user it runs as that user.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psycopg

PG_BIN = Path(os.environ.get("COORDD_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
RUN_AS = "nobody"


class PgCluster:
    def __init__(self) -> None:
        # Short: the socket path (<dir>/.s.PGSQL.5432) must fit in 107 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.dir, RUN_AS, None)
        self._db = itertools.count(1)

    def _pg(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(PG_BIN / tool), *args]
        if self.as_root:
            cmd = ["runuser", "-u", RUN_AS, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=60)

    def init(self) -> None:
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "coordd", "--no-sync")
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(
                "listen_addresses = ''\n"
                f"unix_socket_directories = '{self.dir}'\n"
                "synchronous_commit = on\n"
                "max_connections = 200\n"
                "shared_buffers = 32MB\n"
            )

    def start(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def kill(self) -> None:
        """Stop at once, every backend too, no checkpoint: a crash, as PostgreSQL's own
        recovery sees it. (A SIGKILLed postmaster alone would leave its backends
        serving their connections for a while.)"""
        self.stop("immediate")

    def dsn(self, db: str = "postgres") -> str:
        return f"postgresql:///{db}?host={self.dir}&user=coordd"

    def connect(self, db: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn(db), autocommit=True)

    def new_database(self) -> str:
        """A fresh, empty database; its DSN."""
        name = f"t{next(self._db)}"
        with self.connect() as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)
