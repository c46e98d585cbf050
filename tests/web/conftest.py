"""A ``coordd web`` process beside the shared ``coordd`` fixture, and a browser."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import BIN, CoorddProcess

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # tests run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[2]
# Where the test run saves screenshots (gitignored); docs/dashboard.png is a copy.
SCREENSHOTS = ROOT / "build" / "screenshots"


class WebProcess:
    """``coordd web`` started as a user would, on an ephemeral port."""

    def __init__(self, d: CoorddProcess, extra_env: dict[str, str] | None = None) -> None:
        self.d = d
        self.log_path = d.base / "web.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(BIN / "coordd"), "web", "--listen", "127.0.0.1:0"],
            env={**d.env, **(extra_env or {})},
            cwd=d.base,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.url = self._wait_url()
        self.origin = self.url.rstrip("/")
        self.tokens = {
            role: (Path(d.config["coordination_dir"]) / f"web-{role}.token").read_text().strip()
            for role in ("read", "operator")
        }

    def _wait_url(self, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"coordd web exited {self.proc.returncode}:\n{self.log()}")
            m = re.search(r"serving (http://127\.0\.0\.1:\d+/)", self.log())
            if m:
                return m.group(1)
            time.sleep(0.05)
        raise AssertionError(f"coordd web did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_connected(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if httpx.get(self.url + "healthz").json().get("connected"):
                return
            time.sleep(0.05)
        raise AssertionError(f"coordd web never reached coordd:\n{self.log()}")

    def post(self, path: str, role: str | None, **kw: Any) -> httpx.Response:
        cookies = {"coordd_web": self.tokens[role]} if role else {}
        headers = {"Origin": self.origin, **kw.pop("headers", {})}
        return httpx.post(self.url + path.lstrip("/"), cookies=cookies, headers=headers, **kw)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


WEB_FAST = {
    "stale_threshold": 2.0,
    "heartbeat_interval": 0.5,
    "tick_interval": 0.2,
    "recovery": "none",  # a stale item stays where it is, red, until someone recovers it
}


@pytest.fixture
def web_factory(coordd_factory: Any) -> Iterator[Any]:
    made: list[WebProcess] = []

    def make(config: dict[str, Any] | None = None) -> WebProcess:
        d = coordd_factory({**WEB_FAST, **(config or {})})
        w = WebProcess(d)
        made.append(w)
        w.wait_connected()
        return w

    yield make
    for w in made:
        w.stop()


@pytest.fixture
def web(web_factory: Any) -> WebProcess:
    w: WebProcess = web_factory()
    return w


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium driven by Playwright (its own browser download is never used)."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make system-deps` installs it (package chromium)")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="cdweb") as profile, sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            yield ctx
        finally:
            ctx.close()
