"""Durability with a real daemon: kill -9, torn and corrupt files, fsck, snapshots that
fail at the OS level, legacy import on first start and export."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from coordd import protocol
from coordd.storage import wal as wal_mod
from tests.conftest import BIN, CoorddProcess

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "tests" / "data" / "legacy-samples"
FAST = {"tick_interval": 0.05, "stale_threshold": 30.0}


def items_by_id(d: CoorddProcess) -> dict[str, dict[str, Any]]:
    """Every item, page by page (``list`` answers one bounded page per request)."""
    out: dict[str, dict[str, Any]] = {}
    cursor: str | None = ""
    while cursor is not None:
        page = d.call(protocol.List(cursor=cursor), timeout=30)
        out.update((i["work_item_id"], i) for i in page["items"])
        cursor = page["next_cursor"]
    return out


def wait_for(pred: Any, timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def start_clients(d: CoorddProcess, round_no: int, n: int) -> list[tuple[Any, Path]]:
    out = []
    for k in range(n):
        path = d.base / f"acks-{round_no}-{k}.txt"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.daemon.crash_client",
                d.agent_endpoint,
                f"c{round_no}x{k}",
                str(path),
                "20",
            ],
            cwd=ROOT,
        )
        out.append((proc, path))
    return out


def acknowledged(paths: list[Path]) -> tuple[set[str], set[str]]:
    claimed, completed = set(), set()
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            kind, wid = line.split()[:2]
            (claimed if kind == "claimed" else completed).add(wid)
    return claimed, completed


def test_every_acknowledged_transition_survives_kill_9(coordd_factory: Any) -> None:
    """Clients in their own processes claim and complete as fast as they can; coordd is
    SIGKILLed at a random moment, five times; after each restart every transition a
    client saw acknowledged is there. Snapshots run every 0.2 s to crash them too."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    d: CoorddProcess = coordd_factory({**FAST, "fsync": "always", "snapshot_interval": 0.2})
    all_claimed: set[str] = set()
    all_completed: set[str] = set()
    for round_no in range(5):
        clients = start_clients(d, round_no, 4)
        # kill while all of them are busy: after each has had an answer
        wait_for(
            lambda: all(p.exists() and p.stat().st_size for _, p in clients),  # noqa: B023
            what="every client to get an answer",
        )
        time.sleep(rng.uniform(0.05, 1.0))
        assert d.proc is not None
        d.proc.kill()
        d.stop(signal.SIGKILL)
        for proc, _ in clients:
            proc.wait(timeout=30)
        claimed, completed = acknowledged([p for _, p in clients])
        assert claimed, f"round {round_no}: no client got an answer (seed {seed})"
        print(f"round {round_no}: {len(claimed)} claims, {len(completed)} completions acked")
        all_claimed |= claimed
        all_completed |= completed
        d.start()
        items = items_by_id(d)
        missing = all_claimed - items.keys()
        assert not missing, f"round {round_no} seed {seed}: lost claims {sorted(missing)[:5]}"
        not_done = [w for w in all_completed if items[w]["status"] != "completed"]
        assert not not_done, f"round {round_no} seed {seed}: lost completions {not_done[:5]}"
        status = d.call(protocol.Status())
        assert status["team_velocity"].get("", 0) >= len(all_completed)


def test_a_torn_journal_tail_is_dropped_with_a_warning(coordd_factory: Any) -> None:
    d: CoorddProcess = coordd_factory({**FAST, "snapshot_interval": 3600})
    for n in range(5):
        d.call(protocol.Add(work_type="t", description=f"{n}", work_item_id=f"w{n}"))
    d.stop(signal.SIGKILL)
    wal = d.dir / "journal.wal"
    scan = wal_mod.read_wal(wal)
    assert scan is not None
    end, size = scan.end, wal.stat().st_size
    with open(wal, "r+b") as f:  # half a frame header where the next frame goes
        f.seek(end)
        f.write(b"\xc0\xdf\x01\x00\xde\xad")
    d.start()
    assert {f"w{n}" for n in range(5)} <= items_by_id(d).keys()
    log = d.log()
    assert "journal_torn_tail_dropped" in log and f"offset={end}" in log and "bytes=6" in log
    assert wal.stat().st_size == size  # preallocated: the bytes are zeroed, not cut
    (copy,) = d.dir.glob("journal.wal.torn-*")
    assert copy.read_bytes() == b"\xc0\xdf\x01\x00\xde\xad"


def test_a_corrupt_snapshot_refuses_start_until_fsck_repair(coordd_factory: Any) -> None:
    d: CoorddProcess = coordd_factory({**FAST, "snapshot_interval": 3600})
    d.call(protocol.Add(work_type="t", description="kept", work_item_id="w_kept"))
    assert d.stop() == 0  # SIGTERM: a final snapshot
    snap = d.dir / "snapshot.bin"
    assert b"w_kept" in snap.read_bytes()
    damaged = snap.read_bytes()[:40] + b"\x00garbage"
    snap.write_bytes(damaged)
    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(timeout=15) == 1
    log = d.log()
    # the META frame at byte 16 now runs past the end of the file
    assert str(snap) in log and "byte offset 16" in log and "coordd fsck --repair" in log

    def coordd_cmd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "coordd"), *args], env=d.env, capture_output=True, text=True, timeout=30
        )

    r = coordd_cmd("fsck")
    assert r.returncode == 1 and "snapshot.bin" in r.stdout and "--repair" in r.stdout
    r = coordd_cmd("fsck", "--repair")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "kept a copy" in r.stdout
    # what it kept and lost, counted: the item came back from the journal kept beside
    assert "repair: kept" in r.stdout and "items=1" in r.stdout
    (copy,) = d.dir.glob("fsck-copy-*")
    assert (copy / "snapshot.bin").read_bytes() == damaged
    assert coordd_cmd("fsck").returncode == 0
    d.start()
    assert d.call(protocol.Status())["health"] == "ok"
    # the item was in the journal the previous generation kept: the repair found it
    assert "w_kept" in items_by_id(d)


def test_coordctl_snapshot_and_sigterm_write_a_snapshot(coordd_factory: Any) -> None:
    d: CoorddProcess = coordd_factory({**FAST, "snapshot_interval": 3600})
    d.call(protocol.Add(work_type="t", description="x", work_item_id="w1"))
    r = d.ctl("snapshot", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] and out["items"] == 1
    assert out["loop_blocked_seconds"] < out["duration_seconds"] + 1e-3
    assert "w1" in _read(d.dir / "snapshot.bin")
    # only operators may ask for one
    agent = d.agent()
    refused = d.request(agent, protocol.Snapshot())
    assert isinstance(refused, protocol.Error) and refused.code == "not_allowed"
    d.call(protocol.Add(work_type="t", description="x", work_item_id="w2"))
    assert d.stop() == 0
    assert "w2" in _read(d.dir / "snapshot.bin")
    scan = wal_mod.read_wal(d.dir / "journal.wal")
    assert scan is not None and scan.records == []  # started afresh: header only


def _as_nobody_works() -> bool:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    probe = subprocess.run(
        ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
         sys.executable, "-c", "import coordd, zmq"],
        capture_output=True,
    )  # fmt: skip
    return probe.returncode == 0


class NobodyCoordd(CoorddProcess):
    """coordd run as the unprivileged user ``nobody``, so file modes really apply."""

    def start(self, wait: bool = True, extra_args: tuple[str, ...] = ()) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
             str(BIN / "coordd"), "run", *extra_args],
            env=self.env,
            cwd=self.base,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        if wait:
            self.wait_ready()


@pytest.mark.skipif(not _as_nobody_works(), reason="needs root and setpriv to run as nobody")
def test_a_snapshot_refused_by_the_os_degrades_keeps_serving_and_recovers(
    short_tmp: Path,
) -> None:
    os.chmod(short_tmp, 0o755)
    base = short_tmp / "n"
    base.mkdir(mode=0o755)
    d = NobodyCoordd(base, {**FAST, "snapshot_interval": 0.2})
    (base / "run").mkdir()
    for path in (d.dir, base / "run"):
        shutil.chown(path, "nobody", "nogroup")
    d.start()
    try:
        d.call(protocol.Add(work_type="t", description="x", work_item_id="before"))
        wait_for(lambda: "before" in _read(d.dir / "snapshot.bin"), what="a first snapshot")
        good = (d.dir / "snapshot.bin").read_bytes()
        os.chmod(d.dir, 0o500)  # nobody may no longer create the temporary file
        wait_for(lambda: d.call(protocol.Status())["health"] == "degraded", what="degraded health")
        status = d.ctl("status")
        assert "degraded (snapshot failed: Permission denied (EACCES)" in status.stdout
        # it keeps serving, and the journal still takes the transitions
        d.call(protocol.Add(work_type="t", description="x", work_item_id="during"))
        assert (d.dir / "snapshot.bin").read_bytes() == good
        assert "snapshot_failed" in d.log() and "EACCES" in d.log()
        os.chmod(d.dir, 0o700)
        wait_for(lambda: d.call(protocol.Status())["health"] == "ok", what="health ok again")
        assert "during" in _read(d.dir / "snapshot.bin")
    finally:
        os.chmod(d.dir, 0o700)
        d.stop(signal.SIGKILL)
    d.start()
    assert {"before", "during"} <= items_by_id(d).keys()
    d.stop()


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _checksums(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()}


def test_first_start_imports_the_old_files_and_exports_them_back(coordd_factory: Any) -> None:
    d: CoorddProcess = coordd_factory(
        {**FAST, "snapshot_interval": 3600, "legacy_export": True}, start=False
    )
    for p in SAMPLES.iterdir():
        if p.name in ("work_claims.json", "agent_status.json", "coordination_log.json",
                      "velocity_log.txt"):  # fmt: skip
            shutil.copy(p, d.dir / p.name)
    old_claims = json.loads((d.dir / "work_claims.json").read_text())
    d.start()
    status = d.call(protocol.Status())
    assert status["counts"]["items"] == len(old_claims)
    assert "legacy_imported" in d.log()
    # written atomically in the old shape plus the new fields, at the import's snapshot
    exported = json.loads((d.dir / "work_claims.json").read_text())
    assert {r["work_item_id"] for r in exported} == {r["work_item_id"] for r in old_claims}
    pending = [r for r in exported if r["status"] == "pending"]
    assert pending and all(r["agent_id"] is None and r["claimed_at"] is None for r in pending)
    assert all("lease" in r and "last_heartbeat" in r for r in exported)
    d.call(protocol.Add(work_type="t", description="new", work_item_id="w_new"))
    assert d.ctl("snapshot").returncode == 0
    exported = json.loads((d.dir / "work_claims.json").read_text())
    assert "w_new" in {r["work_item_id"] for r in exported}
    assert d.stop() == 0
    d.start()  # a snapshot exists now: no second import
    assert d.call(protocol.Status())["counts"]["items"] == len(old_claims) + 1


def test_coordd_import_is_idempotent_and_never_touches_the_source(
    coordd_factory: Any, tmp_path: Path
) -> None:
    d: CoorddProcess = coordd_factory({**FAST}, start=False)
    src = tmp_path / "old"
    src.mkdir()
    for name in ("work_claims.json", "agent_status.json", "coordination_log.json",
                 "velocity_log.txt"):  # fmt: skip
        shutil.copy(SAMPLES / name, src / name)
    before = _checksums(src)

    def run_import() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "coordd"), "import", str(src)],
            env=d.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    first = run_import()
    assert first.returncode == 0, first.stderr
    n = len(json.loads((src / "work_claims.json").read_text()))
    assert f"items: {n} imported, 0 already present" in first.stdout
    assert "skipped: " in first.stdout and "not a velocity line" in first.stdout
    second = run_import()
    assert f"items: 0 imported, {n} already present" in second.stdout
    assert "completions: 0 imported" in second.stdout
    assert _checksums(src) == before
    d.start()
    assert d.call(protocol.Status())["counts"]["items"] == n
    # a running daemon holds the state directory: the import says so and changes nothing
    busy = run_import()
    assert busy.returncode == 1 and "another coordd" in busy.stderr


def _mount_tiny_tmpfs(path: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)], capture_output=True
    )
    return r.returncode == 0


def test_a_full_disk_under_the_journal_stops_coordd_without_losing_an_ack(
    coordd_factory: Any, short_tmp: Path
) -> None:
    full = short_tmp / "full"
    if not _mount_tiny_tmpfs(full):
        pytest.skip("needs root and a tmpfs mount")
    try:
        d: CoorddProcess = coordd_factory(
            {**FAST, "snapshot_interval": 3600, "state_dir": str(full)}
        )
        acked = []
        refused = None
        for n in range(200):  # 256 KiB fill up long before 200 x 9 KB
            try:
                d.call(protocol.Add(work_type="t", description="x" * 9000, work_item_id=f"w{n}"),
                       timeout=2)  # fmt: skip
            except Exception as e:
                refused = e
                break
            acked.append(f"w{n}")
        assert refused is not None and acked
        assert d.proc is not None and d.proc.wait(timeout=15) == 1
        assert "cannot append to" in d.log() and "ENOSPC" in d.log()
        d.stop(signal.SIGKILL)
        d.start()
        assert set(acked) <= items_by_id(d).keys()
        d.stop(signal.SIGKILL)
    finally:
        subprocess.run(["umount", "-l", str(full)], check=False)


def test_a_snapshot_asked_for_in_the_same_batch_as_a_completion_counts_it_once(
    coordd_factory: Any,
) -> None:
    d: CoorddProcess = coordd_factory({**FAST, "snapshot_interval": 3600})
    items = [
        d.call(protocol.Claim(agent_id="a", work_type="t", description="x")) for _ in range(20)
    ]
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.connect("ipc://" + d.control_socket)
    try:
        for item in items:  # pipelined: completions and snapshot requests share batches
            sock.send(
                d.codec.encode(protocol.Complete(work_item_id=item["work_item_id"], velocity=1))
            )
            sock.send(d.codec.encode(protocol.Snapshot()))
        for _ in range(2 * len(items)):
            assert isinstance(d.codec.reply_decoder.decode(sock.recv()), protocol.Ok)
    finally:
        sock.close(0)
    wait_for(lambda: not d.call(protocol.Status())["snapshot"]["running"], what="snapshot end")
    d.stop(signal.SIGKILL)
    d.start()
    assert d.call(protocol.Status())["team_velocity"] == {"": 20}


@pytest.mark.parametrize("policy", ["everysec", "never"])
def test_relaxed_fsync_policies_still_survive_a_process_crash(
    coordd_factory: Any, policy: str
) -> None:
    """Without fsync per batch a kill -9 still loses nothing: the kernel holds the
    journal (only a power loss can cost what was not yet flushed, see the README)."""
    d: CoorddProcess = coordd_factory({**FAST, "fsync": policy, "snapshot_interval": 3600})
    for n in range(50):
        d.call(protocol.Claim(agent_id="a", work_type="t", description="x", work_item_id=f"w{n}"))
    d.stop(signal.SIGKILL)
    d.start()
    assert {f"w{n}" for n in range(50)} <= items_by_id(d).keys()
