"""``GET /metrics``: the node's figures in the Prometheus text format (prometheus-client).

Each app gets its own ``CollectorRegistry`` holding one ``NodeCollector``
that reads the node's live counters at scrape time (``machine.stats``, the
UDP and TCP transport stats, the request counter, the gateway's
``RequestMetrics``, the view). There is no global registry and nothing is
copied between scrapes, so several nodes can run in one process (tests) and
a scrape always shows the current figures.

Exported families (all prefixed ``rmap2p_``):

- membership: ``members{status}``, ``probes_total``, ``probe_failures_total``,
  ``indirect_probes_total``, ``suspicions_total``, ``refutations_total``,
  ``push_pulls_total``, ``gossip_messages_total``, ``incarnation``,
  ``awareness_score``;
- traffic: ``bytes_total{transport,direction}`` (udp: gossip datagrams,
  tcp: push-pull streams), ``messages_total{transport,direction}``
  (datagrams; stream frames), ``dropped_inputs_total{transport,reason}``,
  ``dropped_outbound_total``;
- services: ``service_running{service}``, ``service_healthy{service}``
  (this node), ``pool_service_runners{service}`` (alive nodes running it),
  ``pool_service_gap{service}`` (1 while no node runs it);
- requests: ``active_requests``, ``requests_served_total`` (served by this
  node's services), ``forwarded_requests_total{service,outcome}`` and the
  histogram ``request_duration_seconds{service}`` (what the gateway
  reported through ``services.request_metrics``);
- leadership: ``leader_term``, ``leader_is_primary``;
- relays (issue 16): on an edge, ``relay_carried_members`` and
  ``relay_bytes_total{member,direction,layer}`` (``payload``: bytes at the
  member's allocations, ``to_member``/``from_member``; ``control``: the
  framed control connection, datagrams with their framing); on a relayed
  node, ``relayed`` (1 while carried) and ``relay_failovers_total``;
- ``uptime_seconds``, ``dashboard_clients`` (open live-update streams).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from allocator.gaps import runners
from allocator.leaders import elect
from allocator.members import to_node_views
from membership import MemberView, Status
from rmap2p.daemon import Node
from rmap2p.dashboard import SSE_HUB
from services.request_metrics import RequestMetrics, request_metrics

log = logging.getLogger(__name__)

PREFIX = "rmap2p_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The classic text format: every Prometheus server reads it, and our names need no escaping."""

UDP_DROP_REASONS = {
    "dropped_full": "queue_full",
    "dropped_oversize": "oversize",
    "dropped_unauthenticated": "unauthenticated",
    "errors": "socket_error",
}
TCP_DROP_REASONS = {
    "rejected_busy": "busy",
    "dropped_oversize": "oversize",
    "dropped_malformed": "malformed",
    "dropped_unauthenticated": "unauthenticated",
    "timeouts": "timeout",
}


class NodeCollector(Collector):
    """Reads one node's figures each time the registry is scraped."""

    def __init__(self, node: Node, requests: RequestMetrics, app: web.Application | None = None) -> None:
        self.node = node
        self.requests = requests
        self.app = app

    def collect(self) -> Iterator[Metric]:
        node = self.node
        machine = node.machine
        yield _gauge("uptime_seconds", "Seconds since the daemon started.", node.uptime())
        yield from self._requests()
        if machine is None:
            return
        s = machine.stats
        members = node.members()

        by_status = GaugeMetricFamily(PREFIX + "members", "Members this node knows, by status (itself included).", labels=["status"])
        counts = {st.label: 0 for st in Status}
        for m in members:
            counts[m.status.label] += 1
        for label, n in counts.items():
            by_status.add_metric([label], n)
        yield by_status

        yield _counter("probes", "Direct probes sent.", s.probes)
        yield _counter("probe_failures", "Probes that got no ack within the protocol period.", s.probe_failures)
        yield _counter("indirect_probes", "Indirect probes (ping-req) sent.", s.indirect_probes)
        yield _counter("suspicions", "Members this node started suspecting.", s.suspicions_raised)
        yield _counter("refutations", "Times this node refuted a suspicion or death of itself.", s.refutations)
        yield _counter("push_pulls", "Push-pull state exchanges started.", s.push_pulls)
        yield _counter("gossip_messages", "Gossip messages sent on the gossip tick.", s.gossip_messages)
        yield _gauge("incarnation", "This node's incarnation number.", machine.incarnation)
        yield _gauge("awareness_score", "Lifeguard local-health score (0 is healthy; higher stretches timeouts).", machine.awareness.score)

        udp, tcp = node.udp_stats(), node.tcp_stats()
        traffic = CounterMetricFamily(PREFIX + "bytes", "Protocol bytes by transport and direction.", labels=["transport", "direction"])
        traffic.add_metric(["udp", "in"], s.bytes_in)
        traffic.add_metric(["udp", "out"], s.bytes_out)
        traffic.add_metric(["tcp", "in"], s.stream_bytes_in)
        traffic.add_metric(["tcp", "out"], s.stream_bytes_out)
        yield traffic
        messages = CounterMetricFamily(
            PREFIX + "messages", "Protocol datagrams (udp) and stream frames (tcp) by direction.", labels=["transport", "direction"]
        )
        messages.add_metric(["udp", "in"], s.datagrams_in)
        messages.add_metric(["udp", "out"], s.datagrams_out)
        messages.add_metric(["tcp", "in"], tcp.get("frames_in", 0))
        messages.add_metric(["tcp", "out"], tcp.get("frames_out", 0))
        yield messages

        dropped = CounterMetricFamily(
            PREFIX + "dropped_inputs", "Inputs dropped before or by the protocol, by transport and reason.", labels=["transport", "reason"]
        )
        dropped.add_metric(["protocol", "malformed"], s.malformed)
        dropped.add_metric(["protocol", "rejected"], s.rejected)
        for key, reason in UDP_DROP_REASONS.items():
            dropped.add_metric(["udp", reason], udp.get(key, 0))
        for key, reason in TCP_DROP_REASONS.items():
            dropped.add_metric(["tcp", reason], tcp.get(key, 0))
        yield dropped
        yield _counter("dropped_outbound", "Outgoing datagrams dropped (send queue full or send failed).", node.dropped_outbound)

        yield from self._services(members)
        yield from self._leaders(members)
        yield from self._relays()
        hub = self.app.get(SSE_HUB) if self.app is not None else None
        if hub is not None:
            yield _gauge("dashboard_clients", "Open dashboard live-update streams.", len(hub.clients))

    def _relays(self) -> Iterator[Metric]:
        node = self.node
        if node.relay_server is not None:
            carried = node.relay_server.carried()
            yield _gauge("relay_carried_members", "Members this edge's relay carries now.", len(carried))
            fam = CounterMetricFamily(
                PREFIX + "relay_bytes", "Bytes this relay moved per carried member.", labels=["member", "direction", "layer"]
            )
            for member, st in carried.items():
                fam.add_metric([member, "to_member", "payload"], st.bytes_in)
                fam.add_metric([member, "from_member", "payload"], st.bytes_out)
                fam.add_metric([member, "to_member", "control"], st.control_bytes_out)
                fam.add_metric([member, "from_member", "control"], st.control_bytes_in)
            yield fam
        agent = node.relay_agent
        if agent is not None:
            yield _gauge("relayed", "1 while this node is reached through a relay.", 1 if agent.primary is not None else 0)
            yield _counter("relay_failovers", "Times this node moved to its standby relay.", agent.failovers)

    def _services(self, members: list[MemberView]) -> Iterator[Metric]:
        machine = self.node.machine
        assert machine is not None
        running = GaugeMetricFamily(PREFIX + "service_running", "1 for each service this node runs.", labels=["service"])
        healthy = GaugeMetricFamily(PREFIX + "service_healthy", "1 if this node's runner of the service is healthy.", labels=["service"])
        for service, health in machine.meta.services:
            running.add_metric([service], 1)
            healthy.add_metric([service], 1 if health == "healthy" else 0)
        yield running
        yield healthy
        pool = GaugeMetricFamily(PREFIX + "pool_service_runners", "Alive or suspect nodes that run each service.", labels=["service"])
        gap = GaugeMetricFamily(PREFIX + "pool_service_gap", "1 while no alive node runs the service.", labels=["service"])
        for service, ids in runners(to_node_views(members)).items():
            pool.add_metric([service], len(ids))
            gap.add_metric([service], 0 if ids else 1)
        yield pool
        yield gap

    def _requests(self) -> Iterator[Metric]:
        counter = self.node.requests
        yield _gauge("active_requests", "Requests this node's services are serving now.", counter.active)
        yield _counter("requests_served", "Requests this node's services have served.", counter.served)
        forwarded = CounterMetricFamily(
            PREFIX + "forwarded_requests", "Requests the gateway handled, by service and outcome.", labels=["service", "outcome"]
        )
        for (service, outcome), n in sorted(self.requests.requests.items()):
            forwarded.add_metric([service, outcome], n)
        yield forwarded
        hist = HistogramMetricFamily(
            PREFIX + "request_duration_seconds", "Time from request to last response byte at the gateway.", labels=["service"]
        )
        for service, h in sorted(self.requests.latency.items()):
            hist.add_metric([service], h.cumulative(), h.total)
        yield hist

    def _leaders(self, members: list[MemberView]) -> Iterator[Metric]:
        machine = self.node.machine
        assert machine is not None
        lead = elect(to_node_views(members))
        yield _gauge("leader_term", "Leadership term computed from the view.", lead.term)
        yield _gauge("leader_is_primary", "1 if this node is the primary coordinator.", 1 if lead.primary == machine.id else 0)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


METRICS_REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("metrics_registry", CollectorRegistry)


def make_registry(node: Node, requests: RequestMetrics, app: web.Application | None = None) -> CollectorRegistry:
    """A registry of this node only (never prometheus-client's global one: tests run several nodes in one process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node, requests, app))
    return registry


async def handle_metrics(request: web.Request) -> web.Response:
    registry = request.app[METRICS_REGISTRY]
    body = generate_latest(registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def add_routes(app: web.Application, node: Node) -> None:
    """Serve ``GET /metrics`` from a registry of this node only."""
    app[METRICS_REGISTRY] = make_registry(node, request_metrics(app), app)
    app.router.add_get("/metrics", handle_metrics)
