"""The dashboard in a real browser: Debian's headless chromium driven by Playwright.

A person opens the page, signs in with a token and watches: the items are there, a
claim shows up within a second without a reload, an item going stale turns red (and
says so in words), recover works with the operator token and is refused with the read
token, the filters narrow the table. One test drives a scripted fleet and saves a
screenshot (build/screenshots/, gitignored; docs/dashboard.png is a copy of one).
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import pytest
from playwright.sync_api import expect

from coordd import protocol
from tests.web.conftest import SCREENSHOTS, WebProcess

pytestmark = pytest.mark.slow


def sign_in(browser: Any, w: WebProcess, role: str) -> Any:
    browser.clear_cookies()
    page = browser.new_page()
    page.goto(w.url)
    page.fill("#token", w.tokens[role])
    page.click("#login button[type=submit]")
    page.wait_for_selector("#connection:has-text('live')", timeout=10_000)
    return page


def row(page: Any, wid: str) -> Any:
    return page.locator(f'#items tbody tr[data-id="{wid}"]')


def test_the_page_shows_the_items_and_a_claim_within_a_second(
    web: WebProcess, browser: Any
) -> None:
    d = web.d
    for n in range(3):
        d.call(protocol.Add(work_type="build", description=f"pending task {n}"))
    page = sign_in(browser, web, "read")
    # (expect, not wait_for_function: the page's CSP forbids the eval that one needs)
    expect(page.locator("#items tbody tr")).to_have_count(3)
    assert "pending task 1" in page.inner_text("#items")

    started = time.monotonic()
    item = d.call(protocol.Claim(agent_id="agent-7", work_type="deploy", description="ship it"))
    row(page, item["work_item_id"]).wait_for(timeout=1000)  # no reload: pushed
    elapsed = time.monotonic() - started
    assert elapsed < 1.0
    assert "agent-7" in row(page, item["work_item_id"]).inner_text()
    active = page.locator("#counts div").filter(
        has=page.locator("dt", has_text=re.compile("^active$"))
    )
    expect(active.locator("dd")).to_have_text("1")
    page.close()


def test_an_item_going_stale_turns_red_and_recover_needs_the_operator(
    web: WebProcess, browser: Any
) -> None:
    d = web.d
    wid = d.call(protocol.Claim(agent_id="quiet", work_type="t", description="goes quiet"))[
        "work_item_id"
    ]
    page = sign_in(browser, web, "read")
    stale = page.locator(f'#items tbody tr.stale[data-id="{wid}"]')
    stale.wait_for(timeout=10_000)  # threshold 2 s, tick 0.2 s: the daemon's stale_detected
    assert "STALE" in stale.inner_text()  # in words, not only in colour
    # Polled: the row is drawn anew on every pushed view (up to 4 a second), and a
    # style read from a row just replaced comes back empty.
    expect(stale.locator(".silence-word")).to_have_css("color", "rgb(176, 0, 32)", timeout=2000)

    # The read token views but may not act: refused, and nothing happens.
    row(page, wid).get_by_role("button", name="Recover").click()
    page.wait_for_selector("#actions-status.refused", timeout=5000)
    assert "operator token" in page.inner_text("#actions-status")
    assert d.call(protocol.Show(work_item_id=wid))["status"] == "active"
    page.close()

    page = sign_in(browser, web, "operator")
    row(page, wid).locator("select").select_option("reassign")
    row(page, wid).get_by_role("button", name="Recover").click()
    page.wait_for_selector("#actions-status:has-text('done')", timeout=5000)
    expect(row(page, wid).locator("td").nth(6)).to_have_text("pending", timeout=2000)
    assert d.call(protocol.Show(work_item_id=wid))["status"] == "pending"
    assert "op=recover" in web.log() and "strategy=reassign" in web.log()
    page.close()


def test_filters_and_search_narrow_the_table(web: WebProcess, browser: Any) -> None:
    d = web.d
    for n in range(6):
        d.call(
            protocol.Add(
                work_type="build" if n % 2 else "docs",
                description=f"item {n} {'alpha' if n == 4 else 'beta'}",
                team="red" if n < 3 else "blue",
            )
        )
    page = sign_in(browser, web, "read")
    rows = page.locator("#items tbody tr")
    expect(rows).to_have_count(6)
    page.select_option("#filters select[name=team]", "blue")
    expect(rows).to_have_count(3)
    page.select_option("#filters select[name=work_type]", "docs")
    expect(rows).to_have_count(1)
    assert "alpha" in rows.first.inner_text()
    page.select_option("#filters select[name=team]", "")
    page.select_option("#filters select[name=work_type]", "")
    page.fill("#filters input[name=text]", "beta")
    expect(rows).to_have_count(5)
    page.select_option("#filters select[name=status]", "active")
    expect(rows).to_have_count(0)
    page.close()


def test_a_scripted_fleet_screenshot(web_factory: Any, browser: Any) -> None:
    """A few dozen agents, some stale, some late: the picture in the README."""
    w = web_factory({"stale_threshold": 8.0, "heartbeat_interval": 1.0})
    d = w.d
    teams = ("platform", "search", "billing")
    kinds = ("build", "test", "deploy", "review")
    agents = [f"agent-{n:02d}" for n in range(36)]
    for n, agent in enumerate(agents):
        d.call(protocol.Register(agent_id=agent, team=teams[n % 3]))
        for k in range(1 + n % 2):
            item = d.call(
                protocol.Claim(
                    agent_id=agent,
                    work_type=kinds[(n + k) % 4],
                    description=f"{kinds[(n + k) % 4]} step {k + 1} of change #{4100 + n}",
                    team=teams[n % 3],
                    priority=("low", "medium", "high", "critical")[(n + k) % 4],
                )
            )
            d.call(
                protocol.Progress(
                    work_item_id=item["work_item_id"],
                    progress=(n * 7) % 95,
                    status=("compile", "unit", "rollout")[n % 3],
                )
            )
    for n in range(12):
        d.call(
            protocol.Add(work_type=kinds[n % 4], description=f"queued task {n}", team=teams[n % 3])
        )
    quiet, late = set(agents[:5]), set(agents[5:9])  # stale soon; amber at the shot
    stop = threading.Event()
    started = time.monotonic()

    def heartbeats() -> None:
        sock = d.agent()
        while not stop.is_set():
            elapsed = time.monotonic() - started
            for agent in agents:
                if (agent in quiet and elapsed > 0.5) or (agent in late and elapsed > 4.5):
                    continue
                d.send(sock, protocol.Heartbeat(agent_id=agent))
            stop.wait(0.25)
        sock.close(0)

    beater = threading.Thread(target=heartbeats)
    beater.start()
    try:
        _shoot(browser, w, started)
    finally:
        stop.set()
        beater.join()


def _shoot(browser: Any, w: WebProcess, started: float) -> None:
    while time.monotonic() - started < 9.0:  # quiet ones stale (8 s), late ones amber
        time.sleep(0.1)
    page = sign_in(browser, w, "operator")
    page.wait_for_selector("#items tbody tr.stale", timeout=10_000)
    page.wait_for_selector("#items tbody tr.warn", timeout=5_000)
    page.wait_for_timeout(1000)  # a point more of every series
    assert page.locator("#items tbody tr.stale").count() >= 5
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / "dashboard.png"
    page.set_viewport_size({"width": 1400, "height": 1300})
    page.screenshot(path=str(path))
    assert path.stat().st_size > 20_000
    page.close()
