"""``coordctl list`` follows the daemon's pages, and says when it stops at --limit."""

from __future__ import annotations

import json

from coordd import protocol
from tests.conftest import CoorddProcess


def add_items(d: CoorddProcess, n: int) -> None:
    sock = d.agent()
    for start in range(0, n, 250):
        for k in range(start, min(n, start + 250)):
            d.send(sock, protocol.Add(work_type="t", description=f"d{k}", work_item_id=f"w{k:05}"))
        for _ in range(start, min(n, start + 250)):
            assert isinstance(d.recv(sock), protocol.Ok)
    sock.close(0)


def ids(out: str) -> list[str]:
    """The ids ``list --json`` printed (a list, or the view ``{"items": [...]}``)."""
    data = json.loads(out)
    rows = data["items"] if isinstance(data, dict) else data
    return [i["work_item_id"] for i in rows]


def test_list_shows_everything_across_pages_and_says_when_it_stops(
    coordd: CoorddProcess,
) -> None:
    add_items(coordd, 2300)  # more than two pages of 1000
    r = coordd.ctl("list", "--limit", "5000", "--json")
    assert r.returncode == 0, r.stderr
    assert ids(r.stdout) == [f"w{k:05}" for k in range(2300)]
    assert "stopped at --limit" not in r.stderr
    r = coordd.ctl("list", "--limit", "1500", "--json")
    assert len(ids(r.stdout)) == 1500
    assert "stopped at --limit 1500; more items match" in r.stderr
    r = coordd.ctl("list", "--limit", "2300", "--json")
    assert len(ids(r.stdout)) == 2300 and "stopped" not in r.stderr
    r = coordd.ctl("list")  # the default limit, 1000, and the human table
    assert r.returncode == 0 and "w00999" in r.stdout and "w01000" not in r.stdout
    assert "stopped at --limit 1000" in r.stderr
