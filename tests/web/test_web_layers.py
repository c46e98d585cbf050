"""``coordd web`` is a client of coordd: it never reaches into the daemon or the store,
and what coordctl imports of it (the tokens) needs no web library."""

from __future__ import annotations

from tests.core.test_layers import GRAPH, within

CLIENT_FORBIDDEN = ("coordd.daemon", "coordd.storage", "coordd.ai", "coordctl")
WEB_LIBRARIES = ("starlette", "uvicorn", "websockets")


def test_the_web_process_is_a_client_of_coordd() -> None:
    bad = [
        f"{name} imports {t}"
        for name, targets in GRAPH.items()
        if within(name, "coordd.web")
        for t in sorted(targets)
        if any(within(t, p) for p in CLIENT_FORBIDDEN)
    ]
    assert not bad, "; ".join(bad)


def test_the_tokens_module_needs_no_web_library() -> None:
    for name in ("coordd.web", "coordd.web.tokens", "coordctl.commands.web"):
        bad = sorted(t for t in GRAPH[name] if t.split(".")[0] in WEB_LIBRARIES)
        assert not bad, f"{name} imports {bad} (coordctl must run without the web extra)"
        assert not any(within(t, "coordd.web.app") for t in GRAPH[name])
