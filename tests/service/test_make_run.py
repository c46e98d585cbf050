"""The README's contract: `make run` starts a daemon that `coordctl status` reaches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers import status_when_up

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_make_run_serves_coordctl_from_another_shell(short_tmp: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COORD")}
    env["COORDINATION_DIR"] = str(short_tmp / "coordination")
    # Any free port, so the test passes beside a `make run` holding the default 9641
    # (an empty variable reads as unset, i.e. the default port).
    env["COORDD_METRICS_LISTEN"] = "127.0.0.1:0"
    make = subprocess.Popen(
        ["make", "-s", "-C", str(ROOT), "run", f"VENV={BIN.parent}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        r = status_when_up(str(BIN / "coordctl"), env, str(short_tmp), timeout=60)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["health"] == "ok"
    finally:
        os.killpg(make.pid, signal.SIGTERM)
        make.wait(20)
