"""The README runs as written: its tour, dependency and migration snippets, as one
shell script against a real daemon.

Every ``sh`` block of README.md carries a marker on the line before it:
``<!-- runnable: NAME -->`` (run here, in order, with ``bash -euo pipefail``) or
``<!-- not run: REASON -->`` (needs what a test cannot have: pipx, ``--watch``, root,
a model server...). A block without a marker fails the test, so each new snippet is
either run or says why not.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from coordctl.client import Client, Refused, Unreachable
from coordd import protocol
from tests.conftest import BIN
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]


def sh_blocks(text: str) -> list[tuple[str, str]]:
    """Every ``sh`` block as (marker or "", body)."""
    blocks = []
    for m in re.finditer(r"```sh\n(.*?)^```$", text, re.M | re.S):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        blocks.append((before if before.startswith("<!--") else "", m.group(1)))
    return blocks


README = (ROOT / "README.md").read_text()
BLOCKS = sh_blocks(README)


def _answers(control_socket: Path) -> bool:
    client = Client(str(control_socket), 0.5)
    try:
        client.call(protocol.Status())
        return True
    except (Unreachable, Refused):
        return False
    finally:
        client.close()


def test_every_shell_block_says_whether_it_runs() -> None:
    assert len(BLOCKS) >= 10
    for marker, body in BLOCKS:
        assert re.match(r"<!-- (runnable: [a-z-]+|not run: .+) -->$", marker), (
            f"README sh block without a runnable/not run marker:\n{body}"
        )
    runnable = [m for m, _ in BLOCKS if m.startswith("<!-- runnable")]
    assert {"<!-- runnable: tour -->", "<!-- runnable: migration -->"} <= set(runnable)


def test_no_made_up_ids_in_runnable_blocks() -> None:
    """Ids are captured from coordd's answers, never typed (work_1234 does not exist)."""
    for marker, body in BLOCKS:
        if marker.startswith("<!-- runnable"):
            assert not re.search(r"work_\d", body), body


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq missing: make system-deps")
def test_the_readme_runs_as_written(short_tmp: Path) -> None:
    script = "\n".join(body for marker, body in BLOCKS if marker.startswith("<!-- runnable"))
    home = short_tmp / "repo"
    home.mkdir()
    # The user's checkout: `.venv` as `make run` made it.
    (home / ".venv").symlink_to(Path(sys.executable).parent.parent)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COORDD_", "VIRTUAL_ENV")) and k not in ("AGENT_ID", "AI_PROVIDER")
    }
    env.update(
        PATH="/usr/bin:/bin",  # coordctl only through the README's own `source`
        COORDINATION_DIR=str(home / "coordination"),
        COORDD_METRICS_LISTEN="",  # no fixed port (an empty value turns metrics off)
        COLUMNS="80",
    )
    daemon = subprocess.Popen(
        [str(BIN / "coordd"), "run"],
        cwd=home,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: _answers(home / "coordination" / "run" / "control.sock"), timeout=30)
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=home,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
        # What the tour claims happened, did.
        assert "Add the login page" in done.stdout and "claimed" in done.stdout
        assert "Fix the flaky test" in done.stdout  # show "$next"
        assert "completed" in done.stdout and "build here" in done.stdout
    finally:
        subprocess.run([str(BIN / "coordctl"), "heartbeat-stop"], cwd=home, env=env)
        daemon.terminate()
        daemon.wait(15)
