"""The Redis peer: the lease pattern people build on Redis, measured in the same run.

claim = a Lua script (``SET lease NX PX`` + ``HSET`` of the item hash), heartbeat =
``PEXPIRE`` of the lease key, complete = ``DEL``. The server listens on a Unix socket
only (``port 0``), with ``appendonly yes`` and the ``appendfsync`` policy under test.
Missing ``redis-server`` or the ``redis`` package is a skip with a note, never a failure.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

CLAIM_LUA = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('HSET', KEYS[2], 'agent', ARGV[1], 'status', 'active',
             'description', ARGV[3], 'claimed_at', ARGV[4])
  return 1
end
return 0
"""


def unavailable() -> str | None:
    """Why the peer cannot run here, or None when it can."""
    if shutil.which("redis-server") is None and not Path("/usr/bin/redis-server").exists():
        return "redis-server is not installed (make bench-redis installs Debian's package)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the redis package is missing (pip install -e '.[bench]')"
    return None


class RedisPeer:
    """A private ``redis-server`` on a Unix socket in ``base``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.path = str(base / "redis.sock")
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                "0",
                "--unixsocket",
                self.path,
                "--unixsocketperm",
                "700",
                "--dir",
                str(base),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        self.client: Any = redis.Redis(unix_socket_path=self.path)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        self.sha: str = self.client.script_load(CLAIM_LUA)

    def appendfsync(self, policy: str) -> None:
        self.client.config_set("appendfsync", policy)

    def version(self) -> str:
        return str(self.client.info("server")["redis_version"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
