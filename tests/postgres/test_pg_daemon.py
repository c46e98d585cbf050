"""A real ``coordd run`` on the PostgreSQL store: kill -9 loses nothing acknowledged,
``coordd copy-state`` moves a state between the stores, the password stays out of
every log, and a PostgreSQL that dies stops the acknowledgements, not the truth."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from coordd import protocol
from tests.conftest import BIN, CoorddProcess
from tests.daemon.test_durability import acknowledged, items_by_id, start_clients, wait_for
from tests.postgres.pg import PgCluster

# Short leases so a restart after kill -9 waits seconds, not the default 15.
SHORT_LEASE = {"lease_duration": 2.0, "lease_renew": 0.5, "lease_retry": 0.2}
FAST = {"tick_interval": 0.05, "stale_threshold": 30.0, **SHORT_LEASE}


def on_postgres(dsn: str, **kw: Any) -> dict[str, Any]:
    return {**FAST, "store": "postgres", "postgres_dsn": dsn, **kw}


def coordd_cmd(d: CoorddProcess, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "coordd"), *args],
        env={**d.env, **env},
        cwd=d.base,
        capture_output=True,
        text=True,
        timeout=60,
    )


def start_when_lease_free(d: CoorddProcess, timeout: float = 30.0) -> None:
    """Start ``d``; while the dead leader's lease lives it is refused: try again."""
    deadline = time.monotonic() + timeout
    while True:
        d.start(wait=False)
        try:
            d.wait_ready()
            return
        except AssertionError:
            if time.monotonic() > deadline or "is served by" not in d.log():
                raise
        time.sleep(0.1)


def test_every_acknowledged_transition_survives_kill_9(
    coordd_factory: Any, migrated_dsn: str
) -> None:
    d: CoorddProcess = coordd_factory(on_postgres(migrated_dsn, snapshot_interval=0.3))
    all_claimed: set[str] = set()
    all_completed: set[str] = set()
    for round_no in range(3):
        clients = start_clients(d, round_no, 3)
        wait_for(
            lambda: all(p.exists() and p.stat().st_size for _, p in clients),  # noqa: B023
            what="every client to get an answer",
        )
        time.sleep(0.3 + 0.2 * round_no)
        d.stop(signal.SIGKILL)
        for proc, _ in clients:
            proc.wait(timeout=30)
        claimed, completed = acknowledged([p for _, p in clients])
        assert claimed, f"round {round_no}: no client got an answer"
        all_claimed |= claimed
        all_completed |= completed
        start_when_lease_free(d)
        items = items_by_id(d)
        assert not all_claimed - items.keys(), f"round {round_no}: lost claims"
        not_done = [w for w in all_completed if items[w]["status"] != "completed"]
        assert not not_done, f"round {round_no}: lost completions {not_done[:5]}"
    assert "snapshot_written" in d.log()


def test_copy_state_moves_a_state_between_the_stores(
    coordd_factory: Any, migrated_dsn: str
) -> None:
    on_file: CoorddProcess = coordd_factory(FAST)
    for n in range(5):
        on_file.call(protocol.Add(work_type="t", description=f"{n}", work_item_id=f"w{n}"))
    on_file.call(protocol.Claim(agent_id="a", work_type="t", description="c", work_item_id="c"))
    before = items_by_id(on_file)
    assert on_file.stop() == 0
    pg_env = {"COORDD_STORE": "postgres", "COORDD_POSTGRES_DSN": migrated_dsn}
    done = coordd_cmd(on_file, "copy-state", "--from", "file", "--to", "postgres", **pg_env)
    assert done.returncode == 0, done.stderr
    assert "copied 6 items" in done.stdout
    again = coordd_cmd(on_file, "copy-state", "--from", "file", "--to", "postgres", **pg_env)
    assert again.returncode == 1 and "not empty" in again.stderr

    on_pg: CoorddProcess = coordd_factory(on_postgres(migrated_dsn))
    assert items_by_id(on_pg) == before
    on_pg.call(protocol.Add(work_type="t", description="on pg", work_item_id="w_pg"))
    assert on_pg.stop() == 0

    back: CoorddProcess = coordd_factory(FAST, start=False)
    done = coordd_cmd(
        back, "copy-state", "--from", "postgres", "--to", "file", COORDD_POSTGRES_DSN=migrated_dsn
    )
    assert done.returncode == 0, done.stderr
    back.start()
    assert items_by_id(back).keys() == before.keys() | {"w_pg"}


def test_the_password_is_never_printed(coordd_factory: Any, migrated_dsn: str) -> None:
    # Trust authentication ignores the password, so a made-up one connects.
    dsn = migrated_dsn + "&password=s3cr3t-pw"
    d: CoorddProcess = coordd_factory(on_postgres(dsn, log_level="debug"))
    d.call(protocol.Add(work_type="t", description="x"))
    shown = coordd_cmd(d, "check-config")
    assert "postgres_dsn" in shown.stdout and "password=***" in shown.stdout
    assert d.stop() == 0
    assert "s3cr3t-pw" not in shown.stdout + shown.stderr + d.log()


def test_a_store_without_schema_refuses_start_and_migrate_creates_it(
    coordd_factory: Any, pg_dsn: str
) -> None:
    d: CoorddProcess = coordd_factory(on_postgres(pg_dsn), start=False)
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(timeout=15) == 1
    assert "run `coordd migrate`" in d.log()
    first = coordd_cmd(d, "migrate")
    assert first.returncode == 0 and "upgraded from version 0 to 1" in first.stdout
    second = coordd_cmd(d, "migrate")
    assert second.returncode == 0 and "nothing to do" in second.stdout
    d.start()


def test_when_postgres_dies_nothing_more_is_acknowledged_and_nothing_is_lost(
    coordd_factory: Any, short_tmp: Path
) -> None:
    own = PgCluster()  # its own cluster: this test kills it
    try:
        own.init()
        own.start()
        dsn = own.new_database()
        d: CoorddProcess = coordd_factory(on_postgres(dsn), start=False)
        assert coordd_cmd(d, "migrate").returncode == 0
        d.start()
        acked = []
        for n in range(20):
            wid = f"w{n}"
            d.call(protocol.Add(work_type="t", description="x", work_item_id=wid))
            acked.append(wid)
        own.kill()
        sock = d.agent()
        reply = d.request(sock, protocol.Add(work_type="t", description="lost", work_item_id="x"))
        assert isinstance(reply, protocol.Error) and reply.code == "unavailable"
        assert "not acknowledged" in reply.message and "PostgreSQL" in reply.message
        assert d.proc is not None and d.proc.wait(timeout=15) == 1  # stepped down
        own.start()
        start_when_lease_free(d)
        assert set(acked) <= items_by_id(d).keys()
    finally:
        own.remove()
