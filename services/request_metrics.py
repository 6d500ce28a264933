"""Counts and latencies of the requests a node's gateway handles, for ``/metrics`` and the dashboard.

The gateway calls ``observe(service, outcome, seconds)`` once per request it
finished (or gave up on); ``rmap2p.metrics`` exports the figures at scrape
time as ``rmap2p_forwarded_requests_total{service,outcome}`` and the
histogram ``rmap2p_request_duration_seconds{service}``. Nothing here imports
prometheus-client: the buckets are plain cumulative counts in its format, so
``services/`` stays usable without the exporter.

One instance per HTTP app (``request_metrics(app)`` gets or creates it), not
a module global: several nodes may run in one process in tests.

Where the gateway calls it (``services/gateway.py``)::

    # add_routes(app, node), once, before the app starts (the app is frozen after):
    gateway.metrics = request_metrics(app)

    # Gateway.handle_service: time the whole request, the streamed body included
    async def handle_service(self, request):
        started = time.monotonic()
        status = None
        try:
            resp = await self._handle_service(request)  # today's body of handle_service
            status = resp.status
            return resp
        finally:  # an exception (client gone, stream aborted) leaves status None: "aborted"
            service = canonical_service(request.match_info["service"])
            if by_name(service) is not None:  # catalog services only
                self.metrics.observe(service, outcome_of(status), time.monotonic() - started)

``tests/test_metrics.py::test_forwarded_requests_are_counted_by_service_and_outcome``
checks exactly this through a live node; it is marked ``xfail(strict=True)``
until the gateway makes the call, so the marker must go when it does.

Bounded: the service label comes from the catalog in the gateway, but an
``observe`` with more than ``MAX_SERIES`` distinct (service, outcome) pairs
folds the excess into service ``"other"``, so no client can grow the table.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from aiohttp import web

BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""Upper bounds in seconds; ``+Inf`` is implied. From 5 ms (a loopback hop) to 5 min (a long LLM stream)."""

MAX_SERIES = 256
OVERFLOW_SERVICE = "other"

OUTCOMES = ("ok", "client_error", "server_error", "unavailable", "aborted")
"""The usual outcomes (``outcome_of`` makes them from a status); any other short string is accepted."""


def outcome_of(status: int | None) -> str:
    """The outcome label for a response status; ``None`` when no response was sent (connection aborted).

    2xx/3xx → ``ok``; 4xx → ``client_error``; 502, 503 and 504 (no node could
    serve it) → ``unavailable``; other 5xx → ``server_error``.
    """
    if status is None:
        return "aborted"
    if status < 400:
        return "ok"
    if status < 500:
        return "client_error"
    if status in (502, 503, 504):
        return "unavailable"
    return "server_error"


@dataclass(slots=True)
class Histogram:
    """Cumulative-on-read latency histogram of one service: per-bucket counts, sum and count."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def add(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, count), ...]`` ending with ``("+Inf", count)``, as Prometheus exposes buckets."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip((*BUCKETS, math.inf), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == math.inf else repr(bound), running))
        return out


class RequestMetrics:
    """Requests by (service, outcome) and latency per service, since the node started."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}
        self.latency: dict[str, Histogram] = {}

    def observe(self, service: str, outcome: str, seconds: float) -> None:
        """Count one finished request: ``outcome`` from ``outcome_of``, ``seconds`` from start to last byte."""
        key = (service, outcome)
        if key not in self.requests and len(self.requests) >= MAX_SERIES:
            service = OVERFLOW_SERVICE
            key = (service, outcome)
        self.requests[key] = self.requests.get(key, 0) + 1
        hist = self.latency.get(service)
        if hist is None:
            hist = self.latency[service] = Histogram()
        hist.add(max(0.0, seconds))

    def total(self) -> int:
        return sum(self.requests.values())


REQUEST_METRICS: web.AppKey[RequestMetrics] = web.AppKey("request_metrics", RequestMetrics)


def request_metrics(app: web.Application) -> RequestMetrics:
    """The app's ``RequestMetrics``, created on first use (the gateway and the exporter share it)."""
    metrics = app.get(REQUEST_METRICS)
    if metrics is None:
        metrics = app[REQUEST_METRICS] = RequestMetrics()
    return metrics
