"""``coordctl mcp`` driven as an LLM client drives it: the MCP SDK's own stdio client
starts the server, which acts as one agent against a real coordd.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from mcp import Client, StdioServerParameters
from mcp.types import LoggingMessageNotificationParams

from coordd import protocol, views
from coordd.kinds import Priority
from tests.conftest import BIN, CoorddProcess
from tests.helpers import wait_for

COORDCTL = str(BIN / "coordctl")
CLIENT = Path(__file__).with_name("mcp_client.py")
# Short enough that a test sees recovery within seconds; the interval well inside it.
FAST = {"stale_threshold": 1.0, "heartbeat_interval": 0.2, "tick_interval": 0.05}
AGENT_TOOLS = {
    "claim",
    "claim_next",
    "progress",
    "complete",
    "release",
    "list",
    "show",
    "check_stale",
    "status",
}
AI_TOOLS = {"ai_priorities", "ai_optimize", "ai_analyze", "ai_recommend_claim"}


def server(d: CoorddProcess, agent: str, *args: str, **env: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=COORDCTL,
        args=["mcp", "--agent", agent, *args],
        env={**d.env, **env},
        cwd=str(d.base),
    )


@asynccontextmanager
async def connect(
    d: CoorddProcess,
    agent: str,
    *args: str,
    logs: list[LoggingMessageNotificationParams] | None = None,
    **env: str,
) -> AsyncIterator[Client]:
    async def on_log(params: LoggingMessageNotificationParams) -> None:
        if logs is not None:
            logs.append(params)

    # "legacy" is the initialize handshake the MCP clients of today speak.
    async with Client(server(d, agent, *args, **env), mode="legacy", logging_callback=on_log) as c:
        yield c


async def ok(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    r = await client.call_tool(tool, args)
    assert not r.is_error, r.content
    assert isinstance(r.structured_content, dict)
    return r.structured_content


async def refused(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    r = await client.call_tool(tool, args)
    assert r.is_error, r.structured_content
    assert isinstance(r.structured_content, dict)
    text = r.content[0].text
    # The model reads the code, the daemon's message and what to do next.
    assert f"refused ({r.structured_content['code']})" in text and "What to do:" in text
    return r.structured_content


def run(test: Callable[[], Awaitable[None]]) -> None:
    anyio.run(test)


def show(d: CoorddProcess, wid: str) -> dict[str, Any]:
    return dict(d.call(protocol.Show(work_item_id=wid)))


def test_tools_and_their_schemas(coordd: CoorddProcess) -> None:
    async def main() -> None:
        async with connect(coordd, "a1") as c:
            tools = {t.name: t for t in (await c.list_tools()).tools}
            resources = {str(r.uri) for r in (await c.list_resources()).resources}
        # With the local control socket the AI analyses are offered too.
        assert set(tools) == AGENT_TOOLS | AI_TOOLS
        assert resources == {"coordd://held", "coordd://backlog"}

        claim = tools["claim"]
        schema = claim.input_schema
        assert schema["type"] == "object" and schema["additionalProperties"] is False
        assert set(schema["required"]) == {"work_type", "description"}
        # The protocol's limits and vocabularies, not a copy that could drift.
        assert schema["properties"]["description"]["maxLength"] == protocol.MAX_TEXT_LEN
        assert set(schema["$defs"]["Priority"]["enum"]) == {p.value for p in Priority}
        assert tools["progress"].input_schema["properties"]["percent"]["maximum"] == 100
        out = claim.output_schema
        assert out is not None
        # What a model reads is what `coordctl --json` prints: the same view types.
        fields = {f.name for f in msgspec.structs.fields(views.ItemView)}
        assert set(out["$defs"]["ItemView"]["properties"]) == fields
        assert "revoked" in out["properties"]
        # Written for a model: when to call it, and what lease_lost means.
        assert "lease_lost" in tools["progress"].description
        assert "stop working" in tools["progress"].description.lower()
        assert tools["list"].annotations and tools["list"].annotations.read_only_hint

        # Without the control socket (a remote agent), no operator tools at all.
        async with connect(coordd, "a2", COORDD_CONTROL_SOCKET="/nonexistent/control.sock") as c:
            assert {t.name for t in (await c.list_tools()).tools} == AGENT_TOOLS
            refusal = await refused(c, "ai_priorities")
            assert refusal["code"] == "bad_request"

    run(main)


def test_claim_progress_complete(coordd: CoorddProcess) -> None:
    wid = coordd.call(protocol.Add(work_type="docs", description="write the MCP section"))[
        "work_item_id"
    ]

    async def main() -> None:
        async with connect(coordd, "writer") as c:
            backlog = await c.read_resource("coordd://backlog")
            assert [i["work_item_id"] for i in json.loads(backlog.contents[0].text)] == [wid]

            item = (await ok(c, "claim_next", work_type="docs"))["item"]
            assert (item["work_item_id"], item["agent_id"], item["status"]) == (
                wid,
                "writer",
                "active",
            )
            held = await c.read_resource("coordd://held")
            assert [i["work_item_id"] for i in json.loads(held.contents[0].text)] == [wid]
            status = await ok(c, "status")
            assert status["agent_id"] == "writer"
            assert status["held"] == [{"work_item_id": wid, "lease": item["lease"]}]

            note = "branch docs/mcp; intro and set-up written, tools table next"
            await ok(
                c, "progress", work_item_id=wid, percent=60, status="drafting", checkpoint=note
            )
            seen = show(coordd, wid)
            assert (seen["progress"], seen["stage"], seen["checkpoint"]) == (60, "drafting", note)

            done = (await ok(c, "complete", work_item_id=wid, result="merged", velocity=3))["item"]
            assert done["status"] == "completed"
            assert (await ok(c, "status"))["held"] == []
            listed = await ok(c, "list", status="completed")
            assert [i["work_item_id"] for i in listed["items"]] == [wid]
        seen = show(coordd, wid)
        assert (seen["status"], seen["result"], seen["velocity_points"]) == (
            "completed",
            "merged",
            3,
        )

    run(main)


def test_refusals_are_tool_errors_and_the_server_lives_on(coordd: CoorddProcess) -> None:
    theirs = coordd.call(protocol.Claim(agent_id="other", work_type="t", description="theirs"))
    wid = theirs["work_item_id"]

    async def main() -> None:
        async with connect(coordd, "me") as c:
            nothing = await refused(c, "claim_next", work_type="nope")
            assert nothing["code"] == "nothing_pending"
            assert "no pending work" in nothing["advice"].lower()
            not_mine = await refused(c, "progress", work_item_id=wid, percent=10)
            assert not_mine["code"] == "not_owner" and "other" in not_mine["message"]
            missing = await refused(c, "show", work_item_id="work_missing")
            assert missing["code"] == "unknown_work"
            # Arguments are checked against the same types as the wire: the field is named.
            bad = await refused(c, "progress", work_item_id=wid, percent=101)
            assert bad["code"] == "bad_request" and "percent" in bad["message"]
            unknown = await refused(c, "claim_next", colour="blue")
            assert unknown["code"] == "bad_request" and "colour" in unknown["message"]
            status = await ok(c, "status")
            assert status["agent_id"] == "me" and status["daemon"]["health"] == "ok"
            stale = (await ok(c, "check_stale"))["stale"]
            assert (stale["stale_count"], stale["items"]) == (0, [])
        assert show(coordd, wid)["progress"] == 0

    run(main)


def test_a_revoked_lease_is_reported_on_the_next_call(coordd_factory: Any) -> None:
    d = coordd_factory({"heartbeat_interval": 0.2})
    logs: list[LoggingMessageNotificationParams] = []

    async def main() -> None:
        async with connect(d, "holder", logs=logs) as c:
            wid = (await ok(c, "claim", work_type="build", description="compile"))["item"][
                "work_item_id"
            ]
            # The operator takes it back while the model is busy elsewhere.
            r = d.ctl("recover-stale", "reassign", "--work", wid)
            assert r.returncode == 0, r.stderr

            listed = await c.call_tool("list", {"status": "pending"})
            assert not listed.is_error
            revoked = listed.structured_content["revoked"]
            assert [x["work_item_id"] for x in revoked] == [wid]
            assert listed.content[0].text.startswith("REVOKED: ")
            assert wid in listed.content[0].text
            # Said once; acting on the item anyway is the daemon's lease_lost.
            assert "revoked" not in await ok(c, "status")
            lost = await refused(c, "progress", work_item_id=wid, percent=50)
            assert lost["code"] == "lease_lost"
            assert "stop working" in lost["advice"].lower()
            # ... and a log message told the client without waiting for a call.
            with anyio.fail_after(5):
                while not logs:
                    await anyio.sleep(0.02)
        assert logs[0].level == "warning"
        assert logs[0].data["event"] == "lease_revoked"
        assert logs[0].data["work_item_id"] == wid
        assert "stop working" in logs[0].data["advice"].lower()

    run(main)


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_client_ends_the_server_and_its_items_are_recovered(
    coordd_factory: Any,
) -> None:
    d = coordd_factory(FAST)
    wid = d.call(protocol.Add(work_type="t", description="long job"))["work_item_id"]
    client = subprocess.Popen(
        [sys.executable, str(CLIENT), COORDCTL, "doomed"],
        env=d.env,
        cwd=d.base,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None
        line = client.stdout.readline()
        assert line, client.stderr.read() if client.stderr else ""
        assert json.loads(line)["item"]["work_item_id"] == wid
        (server_pid,) = _children(client.pid)
        # While the client lives, the server's heartbeats keep the item well past the
        # stale threshold.
        claimed_at = show(d, wid)["claimed_at"]
        threshold = float(FAST["stale_threshold"])
        wait_for(lambda: show(d, wid)["last_heartbeat"] > claimed_at + 2 * threshold)
        assert (show(d, wid)["status"], show(d, wid)["agent_id"]) == ("active", "doomed")
        killed_at = time.time()
        client.send_signal(signal.SIGKILL)
        client.wait()
    finally:
        client.kill()
        client.wait()
    # Its stdin closed, the server ends by itself ...
    wait_for(lambda: not _alive(server_pid), timeout=10)
    # ... and the item goes back to the backlog once the silence passes the threshold.
    item = wait_for(lambda: (i := show(d, wid))["status"] == "pending" and i, timeout=10)
    assert item["recovered_from"] == "doomed"
    assert item["recovered_at"] - killed_at < threshold + 1.0


def test_daemon_down_is_one_clear_error_and_the_server_reconnects(coordd_factory: Any) -> None:
    d = coordd_factory({"client_timeout": 0.5})

    async def main() -> None:
        async with connect(d, "patient") as c:
            wid = (await ok(c, "claim", work_type="t", description="survive"))["item"][
                "work_item_id"
            ]
            d.stop()
            started = time.monotonic()
            down = await refused(c, "status")
            assert down["code"] == "unreachable"
            assert "keeps running" in down["advice"]
            assert time.monotonic() - started < 5
            d.start()
            # The same server, no restart: the next call goes through.
            status = await ok(c, "status")
            assert [h["work_item_id"] for h in status["held"]] == [wid]
            await ok(c, "complete", work_item_id=wid)
        assert show(d, wid)["status"] == "completed"

    run(main)


def test_two_agents_work_one_backlog_without_sharing_an_item(coordd_factory: Any) -> None:
    d = coordd_factory({"heartbeat_interval": 0.2})
    ids = {
        d.call(protocol.Add(work_type="job", description=f"job {n}"))["work_item_id"]
        for n in range(20)
    }
    done: dict[str, list[str]] = {"alpha": [], "beta": []}
    leases: dict[str, int] = {}
    holding: dict[str, str | None] = {"alpha": None, "beta": None}

    ready = {"alpha": anyio.Event(), "beta": anyio.Event()}

    async def work(agent: str) -> None:
        async with connect(d, agent) as c:
            # Both connected before either starts, so the race for the backlog is real.
            ready[agent].set()
            for event in ready.values():
                await event.wait()
            while True:
                r = await c.call_tool("claim_next", {"work_type": "job"})
                if r.is_error:
                    assert r.structured_content["code"] == "nothing_pending"
                    return
                item = r.structured_content["item"]
                wid = item["work_item_id"]
                leases[wid] = item["lease"]
                other = "beta" if agent == "alpha" else "alpha"
                assert holding[other] != wid, f"{agent} claimed {wid}, held by {other}"
                holding[agent] = wid
                await ok(c, "progress", work_item_id=wid, percent=50)
                await ok(c, "complete", work_item_id=wid, result=f"done by {agent}")
                holding[agent] = None
                done[agent].append(wid)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(work, "alpha")
            tg.start_soon(work, "beta")

    run(main)
    assert not set(done["alpha"]) & set(done["beta"])
    assert set(done["alpha"]) | set(done["beta"]) == ids
    assert done["alpha"] and done["beta"], done  # both took part
    for agent, wids in done.items():
        for wid in wids:
            item = show(d, wid)
            # Claimed once, never recovered or handed over: the claim's lease to the end.
            assert (item["status"], item["agent_id"]) == ("completed", agent)
            assert (item["lease"], item["recovered_from"]) == (leases[wid], None)


@pytest.mark.parametrize("mode", ["auto"])
def test_the_newest_protocol_revision_works_too(coordd: CoorddProcess, mode: str) -> None:
    async def main() -> None:
        async with Client(server(coordd, "modern"), mode=mode) as c:
            item = (await ok(c, "claim", work_type="t", description="new era"))["item"]
            await ok(c, "complete", work_item_id=item["work_item_id"])

    run(main)


def test_other_commands_do_not_load_the_mcp_sdk() -> None:
    # coordctl assembles every command at start-up; only `coordctl mcp` may pay for the SDK.
    code = "import sys, coordctl.cli; print(sorted(m for m in sys.modules if m == 'mcp'))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_every_tool_has_its_method() -> None:
    from coordctl import mcp_server, mcp_tools

    missing = [t.name for t in mcp_tools.TOOLS if not hasattr(mcp_server.Session, "_" + t.name)]
    assert not missing


def test_an_ai_analysis_through_the_control_socket(coordd_factory: Any) -> None:
    from tests.ai.standins import Ollama

    ollama = Ollama()
    try:
        d = coordd_factory({"ollama_host": ollama.url, "ai_timeout": 0.5})
        ollama.queue(("text", json.dumps({"summary": "deploys fail on Mondays"})))

        async def main() -> None:
            async with connect(d, "analyst") as c:
                out = await ok(c, "ai_analyze", prompt="Why do deploys fail?", data={"n": 2})
                assert out["analysis"]["provider"] == "ollama"
                assert out["analysis"]["result"]["summary"] == "deploys fail on Mondays"
                # The provider has nothing more to say: a tool error, not a dead server.
                failed = await refused(c, "ai_priorities", fresh=True)
                assert failed["code"] == "unavailable"
                assert (await ok(c, "status"))["agent_id"] == "analyst"

        run(main)
        prompt = ollama.chats()[0]["body"]["messages"][-1]["content"]
        assert "Why do deploys fail?" in prompt and '"n": 2' in prompt
    finally:
        ollama.close()


def test_a_remote_agent_over_curve(coordd_factory: Any, tmp_path: Path) -> None:
    from tests.daemon.test_remote_agents import Remote

    remote = Remote(coordd_factory, tmp_path)
    wid = remote.d.call(protocol.Add(work_type="far", description="from afar"))["work_item_id"]
    far = StdioServerParameters(
        command=COORDCTL, args=["mcp"], env=remote.env, cwd=str(remote.home)
    )

    async def main() -> None:
        async with Client(far, mode="legacy") as c:
            # No control socket on the agent's host: no operator tools.
            assert {t.name for t in (await c.list_tools()).tools} == AGENT_TOOLS
            item = (await ok(c, "claim_next", work_type="far"))["item"]
            assert (item["work_item_id"], item["agent_id"]) == (wid, "a1")
            await ok(c, "complete", work_item_id=wid)

    run(main)
    assert remote.show(wid)["status"] == "completed"
