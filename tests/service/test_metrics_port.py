"""The metrics address, as the environment and a busy port leave it (issue 16).

- ``COORDD_METRICS_LISTEN=`` (empty) turns metrics off, as the README says;
- the default address taken (another coordd on the machine): one warning, ``status``
  says ``metrics: off (address in use)``, and coordd serves on;
- an address the operator chose that cannot be bound stops the start before the
  legacy files are imported or anything is written.

No fixed port: a busy address is a socket this test binds on port 0.
"""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordd import config
from coordd.daemon import metrics
from tests.conftest import CoorddProcess, write_toml

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "legacy-samples"


@pytest.fixture
def busy() -> Iterator[str]:
    """An address something else already listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        yield f"127.0.0.1:{s.getsockname()[1]}"
    finally:
        s.close()


def test_an_empty_environment_value_sets_the_empty_value() -> None:
    cfg = config.load(None, env={"COORDD_METRICS_LISTEN": ""})
    assert cfg.metrics_listen == ""
    assert config.load(None, env={}).metrics_listen is None  # the default, best effort
    # The old script's variables keep their old meaning: empty is unset.
    assert config.load(None, env={"STALE_THRESHOLD": ""}).stale_threshold == 300


def test_the_default_address_busy_turns_metrics_off(
    busy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "DEFAULT_LISTEN", busy)
    sampler = metrics.Sampler()
    sampler.start(None)
    assert sampler.state == {"state": "off", "listen": busy, "reason": "address_in_use"}
    sampler.close()


def test_an_explicit_busy_address_raises(busy: str) -> None:
    sampler = metrics.Sampler()
    with pytest.raises(OSError):
        sampler.start(busy)
    assert sampler.state["state"] == "off"


def _without_metrics_key(d: CoorddProcess) -> None:
    """The config file as a user's: no metrics_listen at all (the default applies)."""
    del d.config["metrics_listen"]
    write_toml(d.config_path, d.config)


def test_a_second_daemon_on_the_default_address_serves_on(coordd_factory: Any) -> None:
    first: CoorddProcess = coordd_factory(start=False, name="first")
    second: CoorddProcess = coordd_factory(start=False, name="second")
    for d in (first, second):
        _without_metrics_key(d)
        d.env.pop("COORDD_METRICS_LISTEN", None)
    first.start()
    second.start()  # whatever holds the default address, the second one starts
    status = json.loads(second.ctl("status", "--json").stdout)
    assert status["metrics"] == {
        "state": "off",
        "listen": metrics.DEFAULT_LISTEN,
        "reason": "address_in_use",
    }
    assert "metrics: off (address in use)" in second.ctl("status").stdout
    assert second.log().count("metrics_off") == 1
    assert second.ctl("add", "t", "still serving").returncode == 0


def test_an_explicit_busy_address_stops_before_anything_is_written(
    coordd_factory: Any, busy: str
) -> None:
    d: CoorddProcess = coordd_factory({"metrics_listen": busy}, start=False)
    for f in ("work_claims.json", "agent_status.json", "coordination_log.json"):
        shutil.copy(SAMPLES / f, d.dir / f)
    before = sorted(p.name for p in d.dir.iterdir())
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(15) == 1
    assert f"cannot serve metrics on {busy}" in d.log()
    assert sorted(p.name for p in d.dir.iterdir()) == before  # nothing imported or written
    assert "legacy_imported" not in d.log()


def test_status_says_on_and_where(coordd_factory: Any) -> None:
    d: CoorddProcess = coordd_factory({"metrics_listen": "127.0.0.1:0"})
    m = json.loads(d.ctl("status", "--json").stdout)["metrics"]
    assert m["state"] == "on" and m["listen"].startswith("127.0.0.1:") and m["reason"] is None
