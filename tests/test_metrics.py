"""``GET /metrics``: Prometheus text that the Prometheus parser reads, with counters that move.

A live 2-node pool (real processes): the scrape parses, members are counted
by status, and the traffic counters (bytes, messages, probes) grow while the
nodes gossip; a killed peer shows up as a suspicion and a dead member. The
gateway's ``RequestMetrics`` is checked through the same collector the node
uses, on a registry of its own.
"""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from procs import NodeProc, wait_for
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from membership import SwimConfig
from rmap2p.metrics import make_registry
from services.handle import RequestCounter
from services.request_metrics import (
    BUCKETS,
    MAX_SERIES,
    OVERFLOW_SERVICE,
    RequestMetrics,
    outcome_of,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[set[str], Samples]:
    families: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return families, samples


def scrape(node: NodeProc) -> tuple[set[str], Samples]:
    with urllib.request.urlopen(f"http://{node.http}/metrics", timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        return parse(resp.read().decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[NodeProc, NodeProc]]:
    a, b = NodeProc("ma", tmp_path), NodeProc("mb", tmp_path)
    try:
        a.start().wait_healthy()
        b.start(join=[a.gossip]).wait_healthy()
        yield a, b
    except BaseException:
        for n in (a, b):
            print(f"----- {n.name} -----\n{n.tail(40)}")
        raise
    finally:
        a.kill()
        b.kill()


@pytest.mark.slow
def test_metrics_parse_and_counters_move_with_traffic(pair: tuple[NodeProc, NodeProc]) -> None:
    a, b = pair
    wait_for(lambda: value(scrape(a)[1], "rmap2p_members", status="alive") == 2, timeout=20, what="a to count 2 alive")
    families, first = scrape(a)
    for name in (
        "rmap2p_members", "rmap2p_probes", "rmap2p_suspicions", "rmap2p_refutations", "rmap2p_bytes",
        "rmap2p_messages", "rmap2p_dropped_inputs", "rmap2p_service_running", "rmap2p_service_healthy",
        "rmap2p_pool_service_runners", "rmap2p_forwarded_requests", "rmap2p_request_duration_seconds",
        "rmap2p_leader_term", "rmap2p_uptime_seconds",
    ):
        assert name in families, name
    assert value(first, "rmap2p_dropped_inputs_total", transport="udp", reason="oversize") == 0

    moving = [
        ("rmap2p_bytes_total", {"transport": "udp", "direction": "in"}),
        ("rmap2p_bytes_total", {"transport": "udp", "direction": "out"}),
        ("rmap2p_messages_total", {"transport": "udp", "direction": "in"}),
        ("rmap2p_messages_total", {"transport": "udp", "direction": "out"}),
        ("rmap2p_probes_total", {}),
    ]
    wait_for(
        lambda: all(value(scrape(a)[1], n, **lab) > value(first, n, **lab) for n, lab in moving),
        timeout=10, what="a's traffic counters to grow while the pair gossips",
    )

    b.kill()
    cfg = SwimConfig.local()
    bound = cfg.suspicion_max_mult * cfg.suspicion_mult * max(1.0, math.log10(2)) * cfg.probe_interval
    wait_for(
        lambda: (s := scrape(a)[1]) and value(s, "rmap2p_members", status="dead") == 1
        and value(s, "rmap2p_suspicions_total") >= 1 and value(s, "rmap2p_probe_failures_total") >= 1,
        timeout=bound + 10, what="a to count b dead after a suspicion",
    )
    assert value(scrape(a)[1], "rmap2p_members", status="alive") == 1


def test_request_metrics_export_counts_and_latency_buckets() -> None:
    requests = RequestMetrics()
    requests.observe("llm-inference", "ok", 0.004)
    requests.observe("llm-inference", "ok", 0.3)
    requests.observe("llm-inference", outcome_of(503), 0.002)
    requests.observe("rag-embeddings", outcome_of(None), 7.0)
    # A node not started yet: the request figures are there already, the membership ones not yet.
    node = SimpleNamespace(machine=None, uptime=lambda: 1.0, requests=RequestCounter())
    registry = make_registry(node, requests)  # type: ignore[arg-type]
    families, samples = parse(generate_latest(registry).decode())
    assert {"rmap2p_uptime_seconds", "rmap2p_forwarded_requests", "rmap2p_request_duration_seconds"} <= families
    assert "rmap2p_members" not in families
    assert value(samples, "rmap2p_forwarded_requests_total", service="llm-inference", outcome="ok") == 2
    assert value(samples, "rmap2p_forwarded_requests_total", service="llm-inference", outcome="unavailable") == 1
    assert value(samples, "rmap2p_forwarded_requests_total", service="rag-embeddings", outcome="aborted") == 1
    assert value(samples, "rmap2p_request_duration_seconds_count", service="llm-inference") == 3
    assert value(samples, "rmap2p_request_duration_seconds_sum", service="llm-inference") == pytest.approx(0.306)
    assert value(samples, "rmap2p_request_duration_seconds_bucket", service="llm-inference", le="0.005") == 2
    assert value(samples, "rmap2p_request_duration_seconds_bucket", service="llm-inference", le="0.25") == 2
    assert value(samples, "rmap2p_request_duration_seconds_bucket", service="llm-inference", le="0.5") == 3
    assert value(samples, "rmap2p_request_duration_seconds_bucket", service="rag-embeddings", le="5.0") == 0
    assert value(samples, "rmap2p_request_duration_seconds_bucket", service="rag-embeddings", le="+Inf") == 1


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, "ok"), (204, "ok"), (304, "ok"), (400, "client_error"), (404, "client_error"), (508, "server_error"),
     (500, "server_error"), (502, "unavailable"), (503, "unavailable"), (504, "unavailable"), (None, "aborted")],
)
def test_outcome_of(status: int | None, outcome: str) -> None:
    assert outcome_of(status) == outcome


def test_request_metrics_table_is_bounded() -> None:
    requests = RequestMetrics()
    for i in range(MAX_SERIES + 50):
        requests.observe(f"svc-{i}", "ok", 0.01)
    assert len(requests.requests) == MAX_SERIES + 1
    assert requests.requests[(OVERFLOW_SERVICE, "ok")] == 50
    assert len(requests.latency) == MAX_SERIES + 1
    assert requests.total() == MAX_SERIES + 50
    # Bucket bounds: a value on a bound falls in that bucket (le is "less or equal").
    h = requests.latency["svc-0"]
    assert h.cumulative()[BUCKETS.index(0.01)] == ("0.01", 1)


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[NodeProc]:
    node = NodeProc("serving", tmp_path, services=True)
    try:
        node.start().wait_healthy()
        yield node
    except BaseException:
        print(node.tail(60))
        raise
    finally:
        node.kill()


@pytest.mark.slow
def test_forwarded_requests_are_counted_by_service_and_outcome(serving: NodeProc) -> None:
    def through_gateway(path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://{serving.http}/api/service/{path}", timeout=10) as resp:
                resp.read()
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    # document-processing runs on any node with the core install; nothing runs llm-inference here.
    wait_for(
        lambda: "document-processing" in serving.view()["serving"]["services_status"]
        and serving.view()["serving"]["services_status"]["document-processing"] == "healthy",
        timeout=30, what="document-processing to be healthy",
    )
    assert through_gateway("document-processing/health") == 200
    assert through_gateway("document-processing/health") == 200
    assert through_gateway("llm-inference/v1/models") == 503
    _, samples = scrape(serving)
    assert value(samples, "rmap2p_forwarded_requests_total", service="document-processing", outcome="ok") == 2
    assert value(samples, "rmap2p_forwarded_requests_total", service="llm-inference", outcome="unavailable") == 1
    assert value(samples, "rmap2p_request_duration_seconds_count", service="document-processing") == 2
    assert value(samples, "rmap2p_request_duration_seconds_bucket", service="document-processing", le="+Inf") == 2
