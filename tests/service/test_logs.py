"""Log formats: journald lines with a <N> priority, console, JSON."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from coordd import logs, protocol
from tests.conftest import CoorddProcess

# "<prio>event key=value key="quoted value"": no timestamp, nothing else.
JOURNAL_LINE = re.compile(r'^<[0-7]>[a-z_]+( [a-z_]+=("([^"\\]|\\.)*"|[^ "]+))*$')


def _fields(line: str) -> dict[str, str]:
    return {k: v.strip('"') for k, v in re.findall(r'([a-z_]+)=("(?:[^"\\]|\\.)*"|[^ ]+)', line)}


def _stale_scenario(d: CoorddProcess) -> str:
    """Claim, go silent until recovered, then act with the lost lease. Returns the id."""
    a = d.agent()
    item = d.request(a, protocol.Claim(agent_id="a1", work_type="t", description="d")).data
    deadline = time.monotonic() + 5
    while d.call(protocol.Show(work_item_id=item["work_item_id"]))["status"] != "pending":
        assert time.monotonic() < deadline, "never recovered"
        time.sleep(0.05)
    r = d.request(
        a, protocol.Complete(agent_id="a1", work_item_id=item["work_item_id"], lease=item["lease"])
    )
    assert isinstance(r, protocol.Error)
    a.close()
    return str(item["work_item_id"])


def test_under_journald_one_key_value_line_per_event_with_priority(coordd_factory: Any) -> None:
    d: CoorddProcess = coordd_factory({"stale_threshold": 0.3, "tick_interval": 0.05}, start=False)
    # systemd sets JOURNAL_STREAM to the device:inode of the stream it gave us.
    d.log_path.touch()
    st = os.stat(d.log_path)
    d.env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    d.start()
    wid = _stale_scenario(d)
    assert d.stop() == 0

    lines = d.log().splitlines()
    assert lines and all(JOURNAL_LINE.match(line) for line in lines), lines
    by_event = {line[3:].split(" ", 1)[0]: line for line in lines}
    assert by_event["started"].startswith("<6>")
    for event in ("stale_detected", "recovered", "lease_refused"):
        line = by_event[event]
        assert line.startswith("<4>"), line
        assert _fields(line)["work_item_id"] == wid and _fields(line)["agent_id"] == "a1", line
    assert _fields(by_event["recovered"])["detail"] == "reassign"
    assert "lease=" in by_event["lease_refused"]
    assert not any("timestamp" in line or re.search(r"\d\d:\d\d:\d\d", line) for line in lines)


def test_an_inherited_journal_stream_that_is_not_ours_is_ignored(coordd_factory: Any) -> None:
    d: CoorddProcess = coordd_factory(env={"JOURNAL_STREAM": "1:1"})
    assert d.stop() == 0
    assert not d.log().startswith("<"), d.log()
    assert "started" in d.log()


def test_json_format_for_log_shippers(coordd_factory: Any) -> None:
    d: CoorddProcess = coordd_factory({"stale_threshold": 0.3, "tick_interval": 0.05}, start=False)
    d.start(extra_args=("--log-format", "json"))
    wid = _stale_scenario(d)
    assert d.stop() == 0
    events = [json.loads(line) for line in d.log().splitlines()]
    stale = [e for e in events if e["event"] == "stale_detected"]
    assert stale and stale[0]["work_item_id"] == wid and stale[0]["level"] == "warning"
    assert all("timestamp" in e for e in events)


@pytest.fixture
def journal_log() -> Iterator[io.StringIO]:
    out = io.StringIO()
    logs.configure("journal", "info", {}, stream=out)
    yield out
    structlog.reset_defaults()


def test_a_multiline_value_stays_on_one_quoted_line(journal_log: io.StringIO) -> None:
    log = structlog.get_logger("t")
    log.error("snapshot_failed", path="/var/lib/coordd/a b", error='disk "full"\nretry', x=None)
    log.debug("hidden")
    (line,) = journal_log.getvalue().splitlines()
    assert line == '<3>snapshot_failed path="/var/lib/coordd/a b" error="disk \\"full\\"\\nretry"'


def test_library_warnings_share_the_journal_format(journal_log: io.StringIO) -> None:
    logging.getLogger("httpx").info("HTTP Request: POST http://x")  # below warning: dropped
    logging.getLogger("httpx").warning("connection pool full")
    (line,) = journal_log.getvalue().splitlines()
    assert line == '<4>"connection pool full" logger=httpx'
