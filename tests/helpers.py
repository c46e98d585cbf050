"""Small helpers shared by the daemon and CLI tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(cond: Callable[[], Any], timeout: float = 5.0, step: float = 0.01) -> Any:
    """Poll ``cond`` until it is truthy, at most ``timeout`` seconds; return its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout}s")
