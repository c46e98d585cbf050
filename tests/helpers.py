"""Small helpers shared by the daemon and CLI tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec


def wait_for(cond: Callable[[], Any], timeout: float = 5.0, step: float = 0.01) -> Any:
    """Poll ``cond`` until it is truthy, at most ``timeout`` seconds; return its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout}s")


def status_when_up(coordctl: str, env: dict[str, str], cwd: str, timeout: float = 30.0) -> Any:
    """Run ``coordctl status --json`` until it succeeds (a daemon starting in another
    process), at most ``timeout`` seconds; the last CompletedProcess either way."""
    import subprocess

    deadline = time.monotonic() + timeout
    while True:
        r = subprocess.run(
            [coordctl, "status", "--json"], env=env, capture_output=True, text=True, cwd=cwd
        )
        if r.returncode == 0 or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


def sample_request(cls: type) -> Any:
    """An instance of a request with every required field filled with a plain value."""
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    plain = {
        msgspec.inspect.StrType: "x",
        msgspec.inspect.IntType: 1,
        msgspec.inspect.FloatType: 1.0,
        msgspec.inspect.BoolType: False,
    }

    def value(t: msgspec.inspect.Type) -> Any:
        if isinstance(t, msgspec.inspect.LiteralType):
            return t.values[0]
        if isinstance(t, msgspec.inspect.EnumType):  # the vocabularies of coordd.kinds
            return next(iter(t.cls)).value
        return plain.get(type(t))

    values = {f.name: value(f.type) for f in info.fields if f.required}
    return msgspec.convert(values, cls)
