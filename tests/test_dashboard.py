"""The dashboard's server side: the page and its assets, the snapshot, the SSE stream and its bounds.

The plain-words gap text and the rate are pure and table-tested; the rest
runs against a real ``rmap2p join`` process over real HTTP. (The page itself
in a browser: ``test_dashboard_browser.py``.)
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from procs import NodeProc

from rmap2p.dashboard import (
    MAX_SSE_CLIENTS,
    Rate,
    gap_headline,
    gap_sentences,
    loading_by_service,
)


def entry(service: str, status: str, required_type: str) -> dict[str, object]:
    return {"service": service, "status": status, "required_type": required_type}


@pytest.mark.parametrize(
    ("entries", "texts", "headline"),
    [
        (
            [entry("llm-inference", "critical", "gpu"), entry("redis", "warning", "storage"), entry("ner-extraction", "ok", "cpu")],
            ["needs 1 more GPU worker for llm-inference", "needs 1 more storage worker for redis to have a spare"],
            "1 of 3 services have no worker (GPU: 1); 1 runs on one node only.",
        ),
        (
            [entry("llm-inference", "critical", "gpu"), entry("vision-ocr", "critical", "gpu"), entry("coordinator", "critical", "edge")],
            ["needs 1 more GPU worker for llm-inference", "needs 1 more GPU worker for vision-ocr", "needs 1 more edge worker for coordinator"],
            "3 of 3 services have no worker (GPU: 2, edge: 1).",
        ),
        ([entry("redis", "ok", "storage"), entry("chromadb", "ok", "storage")], [], "All 2 services run on at least two nodes."),
        (
            [entry("redis", "warning", "storage"), entry("chromadb", "warning", "storage")],
            ["needs 1 more storage worker for redis to have a spare", "needs 1 more storage worker for chromadb to have a spare"],
            "2 run on one node only.",
        ),
    ],
)
def test_gaps_in_plain_words(entries: list[dict[str, object]], texts: list[str], headline: str) -> None:
    doc = {"gaps": entries}
    assert [s["text"] for s in gap_sentences(doc)] == texts
    assert gap_headline(doc) == headline


def test_rate_over_a_window() -> None:
    r = Rate(window=10.0)
    assert r.update(100.0, 0) is None  # one sample: no rate yet
    assert r.update(100.2, 1) is None  # too short to say
    assert r.update(102.0, 10) == 5.0
    for t in range(3, 30):
        r.update(100.0 + t, 10 + 5 * (t - 2))
    # Old samples fall out of the window: the rate follows the recent slope.
    assert r.update(130.0, 10 + 5 * 28) == 5.0
    assert r.samples[0][0] >= 130.0 - 10.0 - 1.0


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProc]:
    n = NodeProc("dash", tmp_path, services=True)
    try:
        n.start().wait_healthy()
        yield n
    except BaseException:
        print(n.tail(60))
        raise
    finally:
        n.kill()


async def read_events(resp: aiohttp.ClientResponse, count: int, timeout: float) -> list[bytes]:
    events: list[bytes] = []
    async with asyncio.timeout(timeout):
        async for line in resp.content:
            if line.startswith(b"data: "):
                events.append(line[6:])
                if len(events) >= count:
                    break
    return events


@pytest.mark.slow
async def test_page_assets_snapshot_and_live_stream(node: NodeProc) -> None:
    base = f"http://{node.http}"
    async with aiohttp.ClientSession() as http:
        for path in ("/", "/dashboard"):
            async with http.get(base + path) as resp:
                assert resp.status == 200
                assert resp.content_type == "text/html"
                assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
                page = await resp.text()
                assert "/static/dashboard.js" in page and "<script>" not in page
        for name, ctype in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css"), ("favicon.svg", "image/svg+xml")):
            async with http.get(f"{base}/static/{name}") as resp:
                assert resp.status == 200 and resp.content_type == ctype, name
        async with http.get(f"{base}/static/../daemon.py") as resp:
            assert resp.status == 404
        async with http.get(f"{base}/static/nope.js") as resp:
            assert resp.status == 404
            assert "error" in await resp.json()

        # The services this node runs show with the ports they listen on (chosen by the OS here).
        deadline = time.monotonic() + 30
        while True:
            async with http.get(base + "/api/dashboard") as resp:
                snap = await resp.json()
            me = snap["members"][0]
            if any(s["health"] == "healthy" for s in me["services"]) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
        assert me["self"] and me["name"] == "dash"
        running = [s for s in me["services"] if s["health"] == "healthy"]
        assert running, f"no service became healthy: {me['services']}"
        for svc in running:
            with socket.create_connection(("127.0.0.1", svc["port"]), timeout=2):
                pass
            assert svc["endpoint"] == f"127.0.0.1:{svc['port']}"
        assert snap["counts"]["alive"] == 1
        assert {s["service"] for s in snap["needs"]} == {
            e["service"] for e in snap["gaps"]["gaps"] if e["status"] in ("critical", "warning")
        }

        async with http.get(base + "/api/events") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/event-stream"
            started = time.monotonic()
            events = await read_events(resp, 3, timeout=10)
            # One at once, then about one a second while nothing changes.
            assert 1.0 <= time.monotonic() - started <= 6.0
            assert all(b'"status":"ok"' in e for e in events)


@pytest.mark.slow
async def test_live_streams_are_bounded_and_do_not_hold_up_a_leave(node: NodeProc) -> None:
    url = f"http://{node.http}/api/events"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        streams = []
        try:
            for _ in range(MAX_SSE_CLIENTS):
                resp = await http.get(url)
                assert resp.status == 200
                streams.append(resp)
                await read_events(resp, 1, timeout=10)
            async with http.get(url) as extra:
                assert extra.status == 503
                assert "error" in await extra.json()
            metrics = await (await http.get(f"http://{node.http}/metrics")).text()
            assert f"rmap2p_dashboard_clients {float(MAX_SSE_CLIENTS)}" in metrics

            # With every stream open, SIGTERM still ends the node promptly (aiohttp would wait
            # up to its 60 s shutdown timeout for open handlers that did not end by themselves).
            started = time.monotonic()
            assert await asyncio.to_thread(node.terminate, 20.0) == 0
            assert time.monotonic() - started < 10.0
        finally:
            for resp in streams:
                resp.close()


def test_loading_by_service_leaves_out_members_that_are_down() -> None:
    def row(worker_id: str, status: str, loading: list[tuple[str, int]]) -> dict[str, object]:
        return {
            "worker_id": worker_id, "name": worker_id.upper(), "status": status,
            "loading": [{"service": s, "progress": p} for s, p in loading],
        }

    rows = [
        row("g1", "alive", [("llm-inference", 40), ("vision-ocr", 5)]),
        row("g2", "suspect", [("llm-inference", 95)]),
        row("g3", "dead", [("llm-inference", 10)]),
        row("c1", "alive", []),
    ]
    assert loading_by_service(rows) == [
        {"service": "llm-inference", "nodes": [
            {"worker_id": "g1", "name": "G1", "progress": 40}, {"worker_id": "g2", "name": "G2", "progress": 95},
        ]},
        {"service": "vision-ocr", "nodes": [{"worker_id": "g1", "name": "G1", "progress": 5}]},
    ]
    assert loading_by_service([row("c1", "alive", [])]) == []
