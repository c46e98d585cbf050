"""``coordd web``: the live dashboard, a separate process that is a client of coordd.

It connects like coordctl (the control socket for state and actions, the events PUB
socket for changes), keeps its own copy of the state (``mirror``), and pushes views
of it to the pages over websockets (``app``). The daemon's loop never serves HTTP
and never scans for a page: one web process is one subscriber, however many pages.

Modules: ``tokens`` (read/operator tokens; no web dependency, coordctl reads them),
``shapes`` (the JSON the page receives, in one place), ``mirror`` (the copy, its
indexes and queries: pure, clock injected), ``feed`` (the thread that talks to the
daemon), ``app`` (Starlette: pages, websocket, actions), ``serve`` (checks and uvicorn).
"""
