"""No reply leaves before the records it acknowledges are synced: a real daemon traced
with strace, and for each acknowledged claim, the journal write holding it, then the
journal's fdatasync (or a journal opened O_DSYNC), then the reply's send on the agent
socket, in this order. Killing a process loses nothing the page cache holds, so every
other test still passes with the fdatasync removed; this one does not."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from coordd import protocol
from tests.conftest import BIN, CoorddProcess

CLAIMS = 12


def _strace_works() -> str:
    """ "" when strace can trace a child here, else why not."""
    if shutil.which("strace") is None:
        return "strace is not installed (make system-deps installs it)"
    r = subprocess.run(["strace", "-f", "-o", "/dev/null", "true"], capture_output=True)
    if r.returncode != 0:
        return f"ptrace is not permitted here: {r.stderr.decode(errors='replace').strip()}"
    return ""


class TracedCoordd(CoorddProcess):
    """coordd run under ``strace -f``, its system calls written to ``trace``."""

    def start(self, wait: bool = True, extra_args: tuple[str, ...] = ()) -> None:
        self.trace = self.base / "trace"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["strace", "-f", "-yy", "-s", "4096", "-o", str(self.trace),
             "-e", "trace=fdatasync,fsync,sendto,sendmsg,write,pwrite64,openat",
             str(BIN / "coordd"), "run", *extra_args],
            env=self.env, cwd=self.base, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        if wait:
            self.wait_ready(timeout=60)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        # Signal coordd itself (its pid is in the state-dir lock), not strace; whatever
        # happened before, leave no process behind.
        assert self.proc is not None
        with contextlib.suppress(OSError, ValueError, IndexError):
            os.kill(int((self.dir / "coordd.lock").read_text().split()[0]), sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._log.close()
        return rc


_LINE = re.compile(r"^(\d+)\s+(.*)$")


def _completed_calls(trace: str) -> list[str]:
    """The calls in the order they returned, an interrupted one joined with its end."""
    pending: dict[str, str] = {}
    calls = []
    for raw in trace.splitlines():
        m = _LINE.match(raw)
        if not m:
            continue
        pid, text = m.groups()
        if text.endswith("<unfinished ...>"):
            pending[pid] = text[: -len("<unfinished ...>")]
            continue
        if text.startswith("<..."):
            text = pending.pop(pid, "") + text.split("resumed>", 1)[-1]
        calls.append(text)
    return calls


def _order(calls: list[str], ids: list[str]) -> dict[str, dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {i: {"write": None, "reply": None} for i in ids}
    syncs: list[int] = []
    dsync = False
    for n, call in enumerate(calls):
        name = call.split("(", 1)[0]
        if name == "openat" and "journal.wal" in call and re.search(r"O_DSYNC|O_SYNC", call):
            dsync = True
        on_journal = re.match(r"\w+\(\d+</[^>]*journal\.wal>", call) is not None
        if name in ("fdatasync", "fsync") and on_journal and call.rstrip().endswith("= 0"):
            syncs.append(n)
        for i in ids:
            if i not in call:
                continue
            if name in ("write", "pwrite64") and on_journal and seen[i]["write"] is None:
                seen[i]["write"] = n
            is_send = name in ("sendto", "sendmsg", "write") and "agents.sock" in call
            if is_send and "reply" in call and seen[i]["reply"] is None:
                seen[i]["reply"] = n
    for i in ids:
        w, r = seen[i]["write"], seen[i]["reply"]
        synced_between = any(w is not None and r is not None and w < s < r for s in syncs)
        seen[i]["synced"] = synced_between or (dsync and w is not None and r is not None and w < r)
    return seen


@pytest.mark.skipif(bool(_strace_works()), reason=_strace_works() or "strace works")
def test_each_claim_is_synced_to_the_journal_before_its_reply_is_sent(short_tmp: Path) -> None:
    base = short_tmp / "t"
    base.mkdir()
    d = TracedCoordd(base, {"snapshot_interval": 3600, "fsync": "always"})
    ids = [f"wfsync{n:03d}" for n in range(CLAIMS)]
    try:
        d.start()
        agent = d.agent()
        for wid in ids:
            claim = protocol.Claim(agent_id="a", work_type="t", description="x", work_item_id=wid)
            reply = d.request(agent, claim)
            assert isinstance(reply, protocol.Ok), reply
        agent.close(0)
    finally:
        d.stop()
    deadline = time.monotonic() + 10
    while not d.trace.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    order = _order(_completed_calls(d.trace.read_text(errors="replace")), ids)
    missing = {i: o for i, o in order.items() if o["write"] is None or o["reply"] is None}
    assert not missing, f"trace lacks the journal write or the reply of {missing}"
    unsynced = [i for i, o in order.items() if not o["synced"]]
    assert not unsynced, (
        f"replies sent before their journal records were synced: {unsynced} ({order})"
    )
