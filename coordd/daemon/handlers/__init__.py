"""Request handlers by topic; each module registers its routes (``routes.route``).

The table is loaded here, above the handler modules, so ``routes`` never imports a
handler (no import cycle: tests/core/test_layers.py).
"""

from __future__ import annotations

from coordd import protocol
from coordd.daemon import routes
from coordd.daemon.handlers import admin, ai, freshness, items  # noqa: F401  (they register)


def load() -> dict[type[protocol.Request], routes.Route]:
    """The route table, with every handler module imported."""
    return routes.ROUTES
