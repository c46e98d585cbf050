"""Every coordctl command's ``--json``, success and refusal, against the published schema.

One real daemon (with a stand-in Ollama), every command run as a user would, each
stdout validated with ``jsonschema`` against ``schema/coordctl.json`` (the command's
own view, or the refusal ``{"error": ...}``). The schema is closed (no undeclared field,
every field present), so a display string, an internal field or a missing value fails
here; times must parse as RFC 3339 UTC.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from coordd import views
from tests.ai.standins import Ollama
from tests.conftest import BIN, CoorddProcess

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "schema" / "coordctl.json").read_text())
FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _rfc3339_utc(value: object) -> bool:
    """RFC 3339 with the UTC designator, as every time in the schema must be."""
    if not isinstance(value, str) or not value.endswith("Z"):
        raise ValueError(f"not an RFC 3339 UTC time: {value!r}")
    datetime.fromisoformat(value.replace("Z", "+00:00"))
    return True


def validate(command: str, text: str, refusal: bool = False) -> Any:
    """Parse ``text`` and check it is ``command``'s view (or a refusal)."""
    doc = json.loads(text)
    target = SCHEMA["error"] if refusal else SCHEMA["commands"][command]
    schema = {**target, "$defs": SCHEMA["$defs"]}
    jsonschema.validate(doc, schema, format_checker=FORMATS)
    return doc


def test_the_schema_file_is_the_generated_one() -> None:
    """schema/coordctl.json is regenerated with ``python -m coordd.views --write schema``."""
    generated = json.loads(json.dumps(views.schema_document(), sort_keys=True))
    assert generated == SCHEMA, "run: python -m coordd.views --write schema"


def test_coordctl_schema_prints_each_command_and_refuses_an_unknown_one(
    coordd: CoorddProcess,
) -> None:
    whole = json.loads(coordd.ctl("schema").stdout)
    assert set(whole["commands"]) == set(views.OUTPUTS)
    one = json.loads(coordd.ctl("schema", "claim").stdout)
    assert one["oneOf"][0] == {"$ref": "#/$defs/ItemView"}
    r = coordd.ctl("schema", "nope", "--json")
    assert r.returncode == 2
    assert validate("schema", r.stdout, refusal=True)["error"]["code"] == "usage"


class Runner:
    """Runs coordctl with --json and validates what it printed."""

    def __init__(self, d: CoorddProcess) -> None:
        self.d = d
        self.seen: set[str] = set()

    def ok(self, command: str, *args: str, status: int = 0, **kw: Any) -> Any:
        r = self.d.ctl(*command.split(), *args, "--json", **kw)
        assert r.returncode == status, (command, r.stdout, r.stderr)
        self.seen.add(command)
        return validate(command, r.stdout)

    def refused(self, command: str, *args: str, status: int, code: str, **kw: Any) -> Any:
        r = self.d.ctl(*command.split(), *args, "--json", **kw)
        assert r.returncode == status, (command, r.stdout, r.stderr)
        err = validate(command, r.stdout, refusal=True)["error"]
        assert (err["code"], err["exit_status"]) == (code, status), err
        return err


def test_every_command_json_matches_the_schema(coordd_factory: Any) -> None:
    ollama = Ollama()
    try:
        _run_everything(coordd_factory, ollama)
    finally:
        ollama.close()


def _run_everything(coordd_factory: Any, ollama: Ollama) -> None:
    d: CoorddProcess = coordd_factory(
        {"ollama_host": ollama.url, "ai_timeout": 2, "stale_threshold": 60, "recovery": "none"}
    )
    run = Runner(d)
    env = {"AGENT_ID": "a1"}

    # Items, from creation to completion, and what reads them.
    first = run.ok("add", "build", "first step", "HIGH", "core")
    after = run.ok("add", "build", "second step", "--after", first["work_item_id"])
    assert after["blocked"] and after["waiting_on"][0]["work_item_id"] == first["work_item_id"]
    item = run.ok("claim", "feature", "login page", "high", env=env)
    assert item["team"] is None and item["created_at"].endswith("Z")
    wid, lease = item["work_item_id"], str(item["lease"])
    run.ok("progress", wid, "50", "review", "--lease", lease, env=env)
    run.ok("show", wid)
    listed = run.ok("list")
    assert len(listed["items"]) == 3 and listed["next_cursor"] is None
    run.ok("list", "--ready")
    run.ok("register", "a2", "--team", "core")
    run.ok("agents")
    run.ok("status")
    run.ok("heartbeat", "a1")
    run.ok("heartbeat", "a1", wid, "--lease", lease)
    run.ok("complete", wid, "success", "3", "--lease", lease, env=env)
    nxt = run.ok("claim-next", "--agent", "a2")
    assert nxt["work_item_id"] == first["work_item_id"]
    run.ok("release", nxt["work_item_id"], "--agent", "a2")
    run.ok("snapshot")

    # Freshness.
    run.ok("check-stale")
    run.ok("recover-stale", "reassign", "--dry-run")
    doomed = run.ok("claim", "deploy", "fails for good", env={"AGENT_ID": "a3"})
    run.ok("recover-stale", "fail", "--work", doomed["work_item_id"])
    back = run.ok("retry", doomed["work_item_id"])
    assert back["status"] == "pending" and back["recoveries"] == 0
    dash = run.ok("freshness-dashboard")
    assert dash["heartbeater"]["running"] is False and dash["blocked"] == 1

    # The heartbeater, as a shell agent starts and stops it.
    hb = run.ok("heartbeat-start", env={"AGENT_ID": "shell"})
    assert hb["running"] and hb["pid"] > 0
    stopped = run.ok("heartbeat-stop", env={"AGENT_ID": "shell"})
    assert [h["pid"] for h in stopped["items"]] == [hb["pid"]]

    # AI: each analysis answered by the stand-in, and its status.
    ollama.queue(("text", json.dumps({"recommendations": [], "bottlenecks": []})))
    run.ok("ollama-priorities")
    ollama.queue(("text", json.dumps({"reassignments": [], "efficiency_gain": "none"})))
    run.ok("ollama-optimize")
    ollama.queue(("text", json.dumps({"summary": "fine"})))
    run.ok("ai-analyze", "what is blocking us?", input='{"x": 1}')
    run.ok("ai-status")
    ollama.queue(("text", '{"should_claim": true, "reasoning": "ok", "suggested_priority": "low"}'))
    enhanced = run.ok("claim-enhanced", "build", "cache", env={"AGENT_ID": "shell"})
    assert enhanced["ai_recommendation"]["suggested_priority"] == "low"
    run.ok("heartbeat-stop", env={"AGENT_ID": "shell"})

    # Events: one line of JSON per event.
    events = subprocess.Popen(
        [str(BIN / "coordctl"), "events", "--json", "--count", "1"],
        env=d.env,
        cwd=d.base,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        # The subscription may miss what happens before it joins: claim until one shows.
        for n in range(200):
            d.ctl("add", "t", f"event {n}")
            try:
                out, _ = events.communicate(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        events.kill()
        events.wait()
    validate("events", out.splitlines()[0])
    run.seen.add("events")

    # keys list on a fresh key directory.
    keydir = d.base / "keys"
    assert d.ctl("keys", "generate", "--dir", str(keydir)).returncode == 0
    allowed = run.ok("keys list", "--dir", str(keydir))
    assert allowed["allowed"] == {}

    # Refusals: the daemon's codes, coordctl's own, each with its exit status.
    run.refused("show", "work_nope", status=1, code="unknown_work")
    run.refused("complete", wid, env=env, status=1, code="conflict")
    run.refused("claim-next", "--type", "nothing", status=3, code="nothing_pending")
    run.refused("claim", "t", "d", "--after", after["work_item_id"], status=1, code="conflict")
    run.refused("add", "t", "d", "--after", "work_nope", status=1, code="unknown_work")
    run.refused("add", "t", status=2, code="usage")
    run.refused("add", "t", "d", "urgent", status=2, code="usage")
    ollama.queue(("status", 500, {"error": "boom"}), ("status", 500, {"error": "boom"}))
    run.refused("ai-analyze", "x", input='{"x": 1}', status=1, code="no_provider")

    d.stop()
    for command in ("status", "list", "show"):
        run.refused(command, *(["x"] if command == "show" else []), status=4, code="unreachable")

    missing = set(views.OUTPUTS) - run.seen
    assert not missing, f"commands whose --json no test validated: {sorted(missing)}"


@pytest.mark.parametrize("value", ["2026-11-26T06:18:43.661732Z", "2026-11-26T06:18:43Z"])
def test_times_are_rfc3339_utc(value: str) -> None:
    assert _rfc3339_utc(value)


def test_a_time_without_zone_is_refused() -> None:
    with pytest.raises(ValueError):
        _rfc3339_utc("2026-11-26T06:18:43")


def test_no_view_has_an_internal_field() -> None:
    """``legacy`` and heap data are the daemon's; they never reach the JSON face."""
    text = json.dumps(SCHEMA["$defs"])
    for internal in ('"legacy"', '"heap_deadline"', '"live"'):
        assert internal not in text
    assert os.path.exists(ROOT / "schema" / "coordctl.json")
