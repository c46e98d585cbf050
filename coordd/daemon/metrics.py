"""Prometheus exposition on ``metrics_listen`` (default ``127.0.0.1:9641``; ``""`` = off).

Two kinds of metrics live here.

Observed directly by the code that measures them (call these from your module):

=====================================  ==============================================
``TICK_SECONDS.observe(s)``            ``coordd_tick_duration_seconds``: server, each
                                       tick
``SNAPSHOT_SECONDS.observe(s)``        ``coordd_snapshot_duration_seconds``:
                                       snapshots.py, each snapshot written (start to
                                       durable, forked or not)
``JOURNAL_FSYNC_SECONDS.observe(s)``   ``coordd_journal_fsync_seconds``: the journal's
                                       ``observe_fsync`` hook, each fsync of the log
``PEER_REPLIES_DROPPED.inc()``         ``coordd_peer_replies_dropped_total``: outbox.py,
                                       each reply dropped for a peer over its cap
``PEER_REQUESTS_REFUSED.inc()``        ``coordd_peer_requests_refused_total``: each
                                       request of such a peer, not run
``AI_REQUESTS.labels(provider,         ``coordd_ai_requests_total{provider,outcome}``:
outcome).inc()``                       ai_edge.py, each analysis that returns (outcome:
                                       ok, error, timeout, fallback, cached)
``AI_REQUEST_SECONDS.labels(           ``coordd_ai_request_duration_seconds{provider}``:
provider).observe(s)``                 ai_edge.py, each analysis a provider answered
                                       (cache hits excluded)
=====================================  ==============================================

Taken from the state at scrape time (``StateCollector``): the loop hands over a
``Sample`` on every tick (counters copied from ``State.counters``, counts, recoveries
by strategy tallied from the events the loop already drains), so a heartbeat costs
nothing extra and the HTTP thread never walks a dict the loop is changing:
``coordd_heartbeats_total``, ``coordd_claims_total``, ``coordd_completions_total``,
``coordd_stale_detected_total``, ``coordd_lease_refused_total``,
``coordd_recoveries_total{strategy}``, ``coordd_items{status}`` and the gauges
``coordd_active_items``, ``coordd_pending_items``, ``coordd_stale_items``, ``coordd_agents``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import msgspec
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from coordd.kinds import Status, Strategy

log = structlog.get_logger("coordd")

# One registry for coordd (not the library's global one, which also carries
# process/platform collectors we do not want to double-register in tests).
REGISTRY = CollectorRegistry(auto_describe=True)

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_SLOW = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

TICK_SECONDS = Histogram(
    "coordd_tick_duration_seconds",
    "Time spent in one staleness tick (detection and recovery).",
    buckets=_FAST,
    registry=REGISTRY,
)
SNAPSHOT_SECONDS = Histogram(
    "coordd_snapshot_duration_seconds",
    "Time to write one snapshot, from start to durable (forked or in the foreground).",
    buckets=_SLOW,
    registry=REGISTRY,
)
JOURNAL_FSYNC_SECONDS = Histogram(
    "coordd_journal_fsync_seconds",
    "Latency of one journal fsync (one per group commit).",
    buckets=_FAST,
    registry=REGISTRY,
)
PEER_REPLIES_DROPPED = Counter(
    "coordd_peer_replies_dropped",
    "Replies dropped because their peer held more than max_peer_reply_bytes unread.",
    registry=REGISTRY,
)
PEER_REQUESTS_REFUSED = Counter(
    "coordd_peer_requests_refused",
    "Requests not run because their peer does not read its replies (over its cap).",
    registry=REGISTRY,
)
AI_REQUESTS = Counter(
    "coordd_ai_requests",
    "AI provider requests by provider and outcome (ok, error, timeout, fallback, cached).",
    ["provider", "outcome"],
    registry=REGISTRY,
)
AI_REQUEST_SECONDS = Histogram(
    "coordd_ai_request_duration_seconds",
    "Duration of one AI provider request.",
    ["provider"],
    buckets=_SLOW,
    registry=REGISTRY,
)

# State.counters keys exported as <name>_total, with their help text.
STATE_COUNTERS = {
    "heartbeats": "Heartbeats received (one per item refreshed).",
    "claims": "Work items claimed.",
    "completions": "Work items completed.",
    "stale_detected": "Active items found stale.",
    "lease_refused": "Requests refused because the lease was no longer the caller's.",
}
# Recoveries that act (``none`` only reports), the label values of coordd_recoveries.
STRATEGIES = tuple(s.value for s in Strategy if s != Strategy.NONE)


class Sample(msgspec.Struct, frozen=True):
    """What the loop saw at one tick; replaced whole, never mutated after."""

    counters: dict[str, int]
    counts: dict[str, int]
    recoveries: dict[str, int]


class Tally:
    """Recoveries by strategy, counted from the events the loop drains anyway."""

    def __init__(self) -> None:
        self.recoveries = dict.fromkeys(STRATEGIES, 0)

    def count(self, event: str, detail: str | None) -> None:
        if event == "recovered" and detail:
            self.recoveries[detail] = self.recoveries.get(detail, 0) + 1


class StateCollector:
    """Exports the latest ``Sample``. Runs in the HTTP server's thread."""

    def __init__(self) -> None:
        self.sample = Sample(counters={}, counts={}, recoveries={})

    def update(self, counters: Mapping[str, int], counts: Mapping[str, int], tally: Tally) -> None:
        """Called by the loop on the tick: copies, then swaps one reference (atomic)."""
        self.sample = Sample(dict(counters), dict(counts), dict(tally.recoveries))

    def describe(self) -> list[Metric]:
        return []  # metric names vary with the sample; let the registry not pre-check

    def collect(self) -> Iterator[Metric]:
        s = self.sample
        for key, help_text in STATE_COUNTERS.items():
            yield CounterMetricFamily(f"coordd_{key}", help_text, value=s.counters.get(key, 0))
        rec = CounterMetricFamily(
            "coordd_recoveries", "Automatic and manual recoveries by strategy.", labels=["strategy"]
        )
        for strategy, n in sorted(s.recoveries.items()):
            rec.add_metric([strategy], n)
        yield rec
        items = GaugeMetricFamily("coordd_items", "Work items by status.", labels=["status"])
        for status in Status:
            items.add_metric([status], s.counts.get(status, 0))
        yield items
        for key, help_text in (
            (Status.ACTIVE, "Work items being worked on."),
            (Status.PENDING, "Work items waiting for an agent."),
            ("stale", "Work items currently marked stale."),
        ):
            yield GaugeMetricFamily(f"coordd_{key}_items", help_text, value=s.counts.get(key, 0))
        yield GaugeMetricFamily("coordd_agents", "Known agents.", value=s.counts.get("agents", 0))


# Where metrics are served when ``metrics_listen`` is not set.
DEFAULT_LISTEN = "127.0.0.1:9641"


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` into (host, port). Raises ValueError."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"metrics_listen must be host:port, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class Exporter:
    """The HTTP endpoint. ``start`` returns the bound (host, port): port 0 picks one."""

    def __init__(self, collector: StateCollector) -> None:
        self.collector = collector
        self._server: Any = None

    def start(self, listen: str) -> tuple[str, int]:
        host, port = parse_listen(listen)
        REGISTRY.register(self.collector)
        try:
            self._server, _thread = start_http_server(port, host, registry=REGISTRY)
        except BaseException:
            REGISTRY.unregister(self.collector)
            raise
        return host, int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            REGISTRY.unregister(self.collector)


class Sampler:
    """The loop's side of the metrics: the endpoint, the tally of events, and the copy
    of the counts it hands the HTTP thread on every tick (also the ``systemctl status``
    line)."""

    def __init__(self) -> None:
        self.tally = Tally()
        self.collector = StateCollector()
        self.exporter = Exporter(self.collector)
        self.counts: dict[str, int] = {}
        # What ``status`` says about the endpoint: on (where), or off and why.
        self.state: dict[str, Any] = {"state": "off", "listen": None, "reason": "not_started"}

    def start(self, listen: str | None) -> None:
        """Serve on ``listen`` (``""``: off; None: the default address, if it is free).

        An address the operator chose that cannot be bound raises OSError or ValueError
        (the start stops); the default one being taken (another coordd on this machine)
        costs one warning and the endpoint, never the daemon.
        """
        if listen == "":
            self.state = {"state": "off", "listen": None, "reason": "disabled"}
            return
        try:
            host, port = self.exporter.start(listen or DEFAULT_LISTEN)
        except OSError as e:
            if listen is not None:
                raise
            log.warning("metrics_off", listen=DEFAULT_LISTEN, reason="address_in_use", error=str(e))
            self.state = {"state": "off", "listen": DEFAULT_LISTEN, "reason": "address_in_use"}
            return
        self.state = {"state": "on", "listen": f"{host}:{port}", "reason": None}
        log.info("metrics_listening", host=host, port=port)

    def sample(self, counters: Mapping[str, int], counts: dict[str, int]) -> None:
        """``counts`` is ``State.counts()``, a few ints read from its indexes: cheap
        enough for every tick."""
        self.counts = counts
        self.collector.update(counters, counts, self.tally)

    def summary(self) -> str:
        """One line for ``systemctl status`` (sd_notify STATUS=), as of the last tick."""
        c = self.counts
        return (
            f"{c.get('active', 0)} active, {c.get('pending', 0)} pending,"
            f" {c.get('stale', 0)} stale, {c.get('agents', 0)} agents"
        )

    def close(self) -> None:
        self.exporter.close()
