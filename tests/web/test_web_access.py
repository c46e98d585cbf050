"""Who may see and do what on the dashboard: tokens, Host and Origin, TLS beyond loopback,
actions logged with who and what; and the feed that keeps the web copy (a gap resyncs)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from coordd import config as config_mod
from coordd import protocol
from coordd.web.feed import Feed
from coordd.web.mirror import Mirror, Query
from tests.conftest import BIN
from tests.web.conftest import WebProcess


def _ws_status(w: WebProcess, cookie: str | None, origin: str, host: str | None = None) -> Any:
    """The websocket handshake's answer: 101 (open) or the refusal's HTTP status. Raw,
    so that the Host header is exactly the one given."""
    address = w.origin.split("//", 1)[1]
    lines = [
        "GET /ws HTTP/1.1",
        f"Host: {host or address}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        f"Origin: {origin}",
    ]
    if cookie:
        lines.append(f"Cookie: coordd_web={cookie}")
    ip, port = address.rsplit(":", 1)
    with socket.create_connection((ip, int(port)), timeout=5) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        status_line = s.recv(4096).split(b"\r\n", 1)[0]
    return int(status_line.split()[1])


def test_tokens_are_group_readable_files_that_coordctl_shows(web: WebProcess) -> None:
    for role in ("read", "operator"):
        path = Path(web.d.config["coordination_dir"]) / f"web-{role}.token"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    r = web.d.ctl("web-token", "--read")
    assert r.returncode == 0 and r.stdout.strip() == web.tokens["read"]
    assert web.tokens["operator"] in web.d.ctl("web-token").stdout


def test_the_page_and_its_websocket_need_a_token(web: WebProcess) -> None:
    import httpx

    assert "Sign in" in httpx.get(web.url).text
    refused = web.post("/login", None, data={"token": "not-the-token"})
    assert refused.status_code == 303 and "refused" in refused.headers["location"]
    ok = web.post("/login", None, data={"token": web.tokens["read"]})
    assert ok.status_code == 303 and "httponly" in ok.headers["set-cookie"].lower()
    assert "samesite=strict" in ok.headers["set-cookie"].lower()
    page = httpx.get(web.url, cookies={"coordd_web": web.tokens["read"]})
    assert "Items by status" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]

    assert _ws_status(web, None, web.origin) == 403
    assert _ws_status(web, web.tokens["read"], web.origin) == 101
    # Cross-site websocket hijacking: another site's page, the user's cookie.
    assert _ws_status(web, web.tokens["read"], "http://evil.example") == 403
    # DNS rebinding: our address under another name.
    port = web.origin.rsplit(":", 1)[1]
    assert _ws_status(web, web.tokens["read"], web.origin, f"evil.example:{port}") == 403


def test_actions_need_the_operator_token_and_are_logged(web: WebProcess) -> None:
    d = web.d
    wid = d.call(protocol.Claim(agent_id="a1", work_type="t", description="x"))["work_item_id"]
    body = {"work_item_id": wid}
    assert web.post("/api/action/release", None, json=body).status_code == 401
    read = web.post("/api/action/release", "read", json=body)
    assert read.status_code == 403 and "operator" in read.json()["error"]
    cross = web.post(
        "/api/action/release", "operator", json=body, headers={"Origin": "http://evil.example"}
    )
    assert cross.status_code == 403
    assert d.call(protocol.Show(work_item_id=wid))["status"] == "active"  # nothing done

    ok = web.post("/api/action/release", "operator", json=body)
    assert ok.status_code == 200, ok.text
    assert d.call(protocol.Show(work_item_id=wid))["status"] == "pending"
    deadline = time.monotonic() + 5
    while "outcome=ok" not in web.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(x for x in web.log().splitlines() if "web_action" in x and "outcome=ok" in x)
    assert f"work_item_id={wid}" in line and "op=release" in line and "who=operator:" in line
    assert "web_action_refused" in web.log()  # the refusals were logged too


def test_beyond_loopback_it_refuses_to_start_without_tls(coordd_factory: Any) -> None:
    d = coordd_factory(start=False)
    r = subprocess.run(
        [str(BIN / "coordd"), "web", "--listen", "0.0.0.0:0"],
        env=d.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "web_tls_cert" in r.stderr and "beyond loopback" in r.stderr


def test_a_gap_in_the_events_reloads_a_full_view(coordd_factory: Any) -> None:
    d = coordd_factory()
    cfg = config_mod.load(str(d.config_path), {})
    mirror, lock = Mirror(cfg.policy()), threading.Lock()
    feed = Feed(cfg, mirror, lock)
    feed.start()
    try:
        _until(lambda: mirror.loaded and feed.connected)
        first = d.call(protocol.Claim(agent_id="a1", work_type="t", description="one"))
        _until(lambda: first["work_item_id"] in mirror.items and mirror.last_seq is not None)
        with lock:
            loads = mirror.resyncs
            mirror.last_seq = (mirror.last_seq or 0) - 3  # as if events had been dropped
            del mirror.items[first["work_item_id"]]  # ...and the copy had missed one
        second = d.call(protocol.Claim(agent_id="a1", work_type="t", description="two"))
        _until(lambda: mirror.resyncs > loads)
        _until(lambda: {first["work_item_id"], second["work_item_id"]} <= set(mirror.items))
    finally:
        feed.stop()


def _until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    pytest.fail("condition not met in time")


def test_retry_puts_a_failed_item_back_with_the_operator_token(web: WebProcess) -> None:
    d = web.d
    wid = d.call(protocol.Claim(agent_id="a1", work_type="t", description="x"))["work_item_id"]
    d.call(protocol.RecoverStale(strategy=protocol.Strategy.FAIL, work_item_id=wid))
    assert d.call(protocol.Show(work_item_id=wid))["status"] == "failed"
    assert web.post("/api/action/retry", "read", json={"work_item_id": wid}).status_code == 403
    ok = web.post("/api/action/retry", "operator", json={"work_item_id": wid})
    assert ok.status_code == 200, ok.text
    assert d.call(protocol.Show(work_item_id=wid))["status"] == "pending"


def test_an_ai_priority_analysis_from_the_dashboard_reaches_every_page(web_factory: Any) -> None:
    from tests.ai.standins import Ollama
    from tests.ai.test_daemon_ai import answer, with_work

    ollama = Ollama()
    try:
        web = web_factory({"ollama_host": ollama.url, "ai_timeout": 2.0})
        ids = with_work(web.d)
        ollama.queue(("text", answer([(ids[2], 90), (ids[0], 40)])))
        assert web.post("/api/action/ai_priorities", "read", json={}).status_code == 403
        ok = web.post("/api/action/ai_priorities", "operator", json={}, timeout=20)
        assert ok.status_code == 200, ok.text
        ranked = ok.json()["data"]["result"]["recommendations"]
        assert [r["work_id"] for r in ranked] == [ids[2], ids[0]]
        view = _first_view(web, lambda v: v["shared"]["ai"]["latest"] is not None)
        assert view["shared"]["ai"]["latest"]["kind"] == "priorities"
    finally:
        ollama.close()


def _first_view(web: WebProcess, wanted: Any, timeout: float = 10.0) -> Any:
    """The first view pushed to a page that satisfies ``wanted``."""
    import json

    import websockets.sync.client

    with websockets.sync.client.connect(
        web.url.replace("http", "ws") + "ws",
        origin=websockets.typing.Origin(web.origin),
        additional_headers={"Cookie": f"coordd_web={web.tokens['read']}"},
    ) as ws:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            view = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if wanted(view):
                return view
    pytest.fail("no such view was pushed")


def test_the_full_view_holds_every_item_past_one_page(coordd_factory: Any) -> None:
    d = coordd_factory()
    sock = d.agent()
    n = 2500  # more than one `list` page (1000) of a daemon that pages
    for k in range(n):
        d.send(sock, protocol.Add(work_type="t", description=f"item {k}", work_item_id=f"i{k:05d}"))
    for _ in range(n):
        assert isinstance(d.recv(sock), protocol.Ok)
    sock.close(0)
    cfg = config_mod.load(str(d.config_path), {})
    mirror, lock = Mirror(cfg.policy()), threading.Lock()
    feed = Feed(cfg, mirror, lock)
    feed.start()
    try:
        _until(lambda: mirror.loaded)
        with lock:
            assert len(mirror.items) == n
            assert mirror.page(Query(text="item 2499"), 0.0)["total"] == 1
    finally:
        feed.stop()
