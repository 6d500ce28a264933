"""The gateway: pure helpers, failover between in-process gateways, and a mixed pool of real processes."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from cluster import Cluster
from pool_handles import MachineHandle
from procs import NodeProc, wait_for

from allocator.view import NodeView
from membership import Load, NodeMeta, Status
from services import gateway as gw
from services import jobs
from services import routing as rt
from services.runner import PlaceholderRunner

# ---------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("raw", "hops"),
    [
        (None, 0), ("0", 0), ("3", 3), (" 2 ", 2),
        ("", None), ("-1", None), ("x", None), ("1.5", None), ("²", None), ("9999999", None),
    ],
)
def test_parse_hops(raw: str | None, hops: int | None) -> None:
    assert rt.parse_hops(raw) == hops


def test_load_header_round_trips_and_rejects_garbage() -> None:
    load = Load(37, 52, 80, 4)
    assert rt.format_load(load) == "37,52,80,4"
    assert rt.parse_load(rt.format_load(load)) == load
    assert rt.parse_load(" 1, 2 ,3,0") == Load(1, 2, 3, 0)
    for bad in (None, "", "1,2,3", "1,2,3,4,5", "a,b,c,d", "101,0,0,0", "-1,0,0,0", "1.5,0,0,0", "1," * 40 + "1"):
        assert rt.parse_load(bad) is None, bad


def test_forward_headers_drop_hop_by_hop_and_connection_listed_ones() -> None:
    headers = CIMultiDict(
        [
            ("Content-Type", "application/json"), ("Connection", "keep-alive, X-Private"), ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"), ("x-private", "secret"), ("Host", "a:1"), ("X-Trace", "1"), ("X-Trace", "2"),
            ("Upgrade", "h2c"),
        ]
    )
    out = rt.forward_headers(headers, drop=("host",))
    assert list(out.items()) == [("Content-Type", "application/json"), ("X-Trace", "1"), ("X-Trace", "2")]


def _cpu(node_id: str, *, load: float = 0.0, active: int = 0, healthy: bool = True, status: str = "alive", **kw: Any) -> NodeView:
    return NodeView(
        node_id=node_id, worker_type="cpu", services=("ner-extraction",), status=status,
        current_load=load, active_requests=active, healthy_services=("ner-extraction",) if healthy else (), **kw,
    )


def _order(views: list[NodeView], *, in_flight: dict[str, int] | None = None, first_hand: dict[str, rt.FirstHand] | None = None,
           unreachable: dict[str, float] | None = None, now: float = 100.0, seed: int = 1) -> list[str]:
    ranked = rt.order_candidates(
        views, "ner", None, in_flight or {}, first_hand or {}, unreachable or {}, now, random.Random(seed)
    )
    return [v.node_id for v in ranked]


def test_first_hand_load_overrides_gossip_while_fresh() -> None:
    # Gossip says a is idle and b busy; a's own answer two seconds ago says the opposite.
    views = [_cpu("a", load=0.0, active=0), _cpu("b", load=0.9, active=6)]
    assert _order(views) == ["a", "b"]
    seen = {"a": rt.FirstHand(Load(95, 50, 0, 8), at=98.0), "b": rt.FirstHand(Load(5, 50, 0, 0), at=98.0)}
    assert _order(views, first_hand=seen) == ["b", "a"]
    # Older than FIRST_HAND_MAX_AGE: gossip is all we have again.
    assert _order(views, first_hand=seen, now=98.0 + rt.FIRST_HAND_MAX_AGE + 0.1) == ["a", "b"]
    # The router's own requests in flight count on top of what the node reported.
    assert _order([_cpu("a"), _cpu("b")], in_flight={"a": 3}) == ["b", "a"]


def test_book_does_not_count_the_routers_own_requests_twice() -> None:
    book = rt.RouterBook()
    for _ in range(3):
        book.sent("a")
    # a serves 5 requests, 3 of them ours: others send it 2.
    book.saw_load("a", Load(40, 10, 0, 5), now=1.0)
    assert book.first_hand["a"] == rt.FirstHand(Load(40, 10, 0, 2), 1.0)
    for _ in range(3):
        book.done("a")
    assert book.in_flight == {}
    book.saw_unreachable("b", now=2.0)
    book.saw_load("b", Load(0, 0, 0, 0), now=3.0)
    assert "b" not in book.unreachable, "an answer clears the failed-connect mark"


def test_book_stays_bounded() -> None:
    book = rt.RouterBook(max_entries=10)
    for i in range(50):
        book.saw_load(f"n{i}", Load(), now=float(i))
        book.saw_unreachable(f"n{i}", now=float(i))
    assert len(book.first_hand) <= 10 and len(book.unreachable) <= 10
    assert "n49" in book.first_hand


def test_candidates_healthy_first_then_alive_then_suspect_then_unreachable() -> None:
    assert _order([_cpu("a", healthy=False), _cpu("b")]) == ["b"], "a starting runner is no candidate while one is healthy"
    assert _order([_cpu("a", healthy=False)]) == ["a"], "but better than nothing"
    assert _order([_cpu("a", status="dead")]) == []
    # a outscores b and c by far, yet a suspect goes after alive nodes and a failed connect after all.
    views = [_cpu("a", specialization="ner"), _cpu("b"), _cpu("c", status="suspect", specialization="ner")]
    assert _order(views) == ["a", "b", "c"]
    assert _order(views, unreachable={"a": 99.0}) == ["b", "c", "a"]
    assert _order(views, unreachable={"a": 99.0 - rt.UNREACHABLE_FOR}) == ["a", "b", "c"], "the mark expires"
    starting, failed = _cpu("s", healthy=False), _cpu("f", specialization="ner")
    assert _order([starting, failed]) == ["f"]
    assert _order([starting, failed], unreachable={"f": 99.0}) == ["s", "f"], "a starting runner beats one that refused"


@pytest.mark.parametrize(
    ("method", "service", "safe"),
    [
        ("GET", "llm", True), ("head", "notes-coa", True), ("PUT", "chromadb", True), ("DELETE", "redis", True),
        ("POST", "ner", True), ("POST", "embeddings", True), ("POST", "document-processing", True), ("POST", "ocr", True),
        ("POST", "llm-inference", False), ("POST", "notes-coa", False), ("POST", "chromadb", False), ("PATCH", "ner", True),
        ("PATCH", "notes", False),
    ],
)
def test_retry_safe(method: str, service: str, safe: bool) -> None:
    assert rt.retry_safe(method, service) is safe


def test_worth_holding_only_while_a_runner_may_appear() -> None:
    runner = _cpu("a", healthy=False)
    assert rt.worth_holding([runner], "ner", recently_reached=False), "a runner that is starting"
    assert rt.worth_holding([_cpu("a", status="dead")], "ner", recently_reached=True), "its node may be restarting"
    idle_cpu = NodeView("b", "cpu", ())
    assert rt.worth_holding([idle_cpu], "ner", recently_reached=False), "the allocation on this view gives ner to b"
    assert not rt.worth_holding([idle_cpu], "redis", recently_reached=False), "no node here can run redis"
    unable = NodeView("b", "cpu", (), can_run=())
    assert not rt.worth_holding([unable, _cpu("a", status="dead")], "ner", recently_reached=False)
    # Seed scenario 1: a lone GPU node runs llm-inference and vision-ocr, never rag-embeddings.
    gpu = NodeView("g", "gpu", ("llm-inference", "vision-ocr"))
    assert not rt.worth_holding([gpu], "embeddings", recently_reached=False)


def test_book_remembers_when_a_service_last_had_a_runner() -> None:
    book = rt.RouterBook()
    assert not book.reached_within("ner-extraction", 10.0, 15.0)
    book.saw_service("ner-extraction", 10.0)
    assert book.reached_within("ner-extraction", 25.0, 15.0) and not book.reached_within("ner-extraction", 25.1, 15.0)


def test_parse_job_and_capable_nodes() -> None:
    data = {"documents": ["a text"], "collection": "manuals"}
    job = jobs.parse_job({"job_type": "rag_ingestion", "job_data": data, "required_capability": "embeddings"})
    assert job == jobs.Job("rag_ingestion", data, "rag-embeddings")
    assert jobs.parse_job({"job_type": "rag_ingestion", "job_data": data}).capability == "rag-embeddings"
    assert jobs.parse_job({"job_type": "x", "job_data": {}, "workers": ["a", "b"]}).workers == ("a", "b")
    assert jobs.parse_job({"job_type": "x", "job_data": {}}).capability is None
    for bad, says in [
        ([], "JSON object"), ({"job_data": {}}, "job_type"), ({"job_type": " ", "job_data": {}}, "job_type"),
        ({"job_type": "x"}, "job_data"), ({"job_type": "x", "job_data": [1]}, "job_data"),
        ({"job_type": "x", "job_data": {}, "required_capability": 3}, "required_capability"),
        ({"job_type": "x", "job_data": {}, "required_capability": "teleport"}, "unknown required_capability"),
        ({"job_type": "x", "job_data": {}, "workers": "a"}, "workers must be a list"),
        ({"job_type": "rag_ingestion", "job_data": {"documents": ["a"]}}, "collection"),
        ({"job_type": "rag_ingestion", "job_data": {"documents": [], "collection": "c"}}, "documents"),
        ({"job_type": "rag_ingestion", "job_data": data, "required_capability": "ner"}, "needs required_capability"),
    ]:
        with pytest.raises(ValueError, match=says):
            jobs.parse_job(bad)
    views = [
        NodeView("g", "gpu", ("rag-embeddings",), healthy_services=("rag-embeddings",)),
        NodeView("c", "cpu", ("ner-extraction",), healthy_services=()),
        NodeView("s", "storage", ("chromadb",), healthy_services=("chromadb",)),
        NodeView("e", "edge", ("coordinator",), healthy_services=("coordinator",)),
        NodeView("d", "cpu", status="dead"),
    ]
    assert [v.node_id for v in jobs.capable(views, None)] == ["c", "g"]
    assert [v.node_id for v in jobs.capable(views, "chromadb")] == ["s"]
    assert [v.node_id for v in jobs.capable(views, "ner-extraction")] == [], "running but not healthy"


@dataclass
class _Source:
    chunks: list[bytes]

    async def readany(self) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


async def _collect(body: gw.ReplayableBody, upto: int | None = None) -> bytes:
    out = b""
    async for chunk in body.chunks():
        out += chunk
        if upto is not None and len(out) >= upto:
            break
    return out


async def test_replayable_body_replays_what_was_read_then_streams_on() -> None:
    body = gw.ReplayableBody(_Source([b"ab", b"cd", b"ef"]), limit=4)  # type: ignore[arg-type]
    assert await _collect(body, upto=2) == b"ab", "an attempt that failed after reading one chunk"
    assert body.replayable
    assert await _collect(body) == b"abcdef", "the next attempt gets it all"
    assert not body.replayable, "6 bytes read > limit 4"
    with pytest.raises(RuntimeError):
        await _collect(body)


# ---------------------------------------------------------------- gateways in one process

SERVICE = "ner-extraction"
HOLD = 2.0
"""The trio's routers hold a request this long for a runner (the daemon's default is longer)."""


def _meta(http: str, port: int | None, specialization: str = "", services: tuple[str, ...] = (SERVICE,)) -> NodeMeta:
    return NodeMeta(
        name="t", worker_type="cpu", http=http, services=tuple((s, "healthy") for s in services) if port else (),
        service_ports=tuple((s, port) for s in services) if port else (), specialization=specialization,
    )


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def trio() -> AsyncIterator[dict[str, Any]]:
    """Router r (runs nothing); live l (gateway + echo service); dead d (specialized, so ranked first; nothing listens).

    Three real membership machines on a manual clock; each gateway sees its own through a ``PoolHandle``.
    """
    cluster = Cluster(3, ids=["r", "l", "d"])
    assert cluster.run_until(cluster.converged, 30.0)
    handles = {name: MachineHandle.of_cluster(cluster, i) for i, name in enumerate("rld")}
    service = PlaceholderRunner(SERVICE, "127.0.0.1", 0, "l")
    await service.start()
    runners: list[web.AppRunner] = []
    try:
        l_app = web.Application()
        gw.add_routes(l_app, handles["l"], hold=HOLD)
        l_runner, l_port = await _serve(l_app)
        runners.append(l_runner)
        r_app = web.Application()
        router = gw.add_routes(r_app, handles["r"], hold=HOLD)
        r_runner, r_port = await _serve(r_app)
        runners.append(r_runner)
        dead = _closed_port()
        handles["l"].update_meta(lambda m: _meta(f"127.0.0.1:{l_port}", service.port))
        handles["d"].update_meta(lambda m: _meta(f"127.0.0.1:{dead}", dead, "ner"))
        handles["r"].update_meta(lambda m: _meta(f"127.0.0.1:{r_port}", None))

        def gossiped() -> bool:
            seen = {m.node: m.meta for m in handles["r"].members()}
            return seen["l"].port_of(SERVICE) == service.port and seen["d"].port_of(SERVICE) == dead

        assert cluster.run_until(gossiped, 30.0), "the metadata reaches the router by gossip"
        async with aiohttp.ClientSession() as client:
            yield {"client": client, "r": f"http://127.0.0.1:{r_port}", "l": f"http://127.0.0.1:{l_port}",
                   "router": router, "l_node": handles["l"], "service": service, "cluster": cluster,
                   "handles": handles, "l_port": l_port}
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        await service.stop()


async def test_a_failed_connect_moves_on_to_the_next_best_node(trio: dict[str, Any]) -> None:
    client: aiohttp.ClientSession = trio["client"]
    cluster: Cluster = trio["cluster"]
    async with client.post(trio["r"] + "/api/service/ner/extract?x=1", data=b"hello") as resp:
        assert resp.status == 200
        doc = await resp.json()
        assert resp.headers[rt.ATTEMPTS_HEADER] == "2", "d (ranked first) refused, l answered"
        assert resp.headers[rt.NODE_HEADER] == "l"
        assert rt.parse_load(resp.headers[rt.LOAD_HEADER]) is not None
    assert doc == {"service": SERVICE, "node_id": "l", "runner": "placeholder", "method": "POST", "path": "/extract", "bytes": 5}
    router: gw.Gateway = trio["router"]
    assert "d" in router.book.unreachable and "l" in router.book.first_hand
    # The refused connect went to r's membership as evidence: d is probed next, so a second
    # report within the gap is refused; nobody suspects d for it.
    assert not cluster.nodes[0].probe_soon("d", cluster.now)
    assert cluster.nodes[0].probe_soon("l", cluster.now), "l had no report"
    assert cluster.status(0, 2) is Status.ALIVE
    assert router.book.in_flight == {} and trio["l_node"].requests.active == 0
    async with client.post(trio["r"] + "/api/service/ner/extract", data=b"again") as resp:
        assert resp.status == 200 and resp.headers[rt.ATTEMPTS_HEADER] == "1", "d is tried last while marked"


async def test_an_unreachable_service_behind_a_live_gateway_is_retried_elsewhere(trio: dict[str, Any]) -> None:
    client: aiohttp.ClientSession = trio["client"]
    await trio["service"].stop()  # l's gateway is up, its service is not
    async with client.post(trio["l"] + "/api/service/ner-extraction/x", data=b"b", headers={rt.ROUTE_HEADER: "l"}) as resp:
        assert resp.status == 503 and resp.headers.get(rt.UNSERVED_HEADER) == "1"
    t0 = time.monotonic()
    async with client.post(trio["r"] + "/api/service/ner-extraction/x", data=b"body") as resp:
        assert resp.status == 503, "nothing reached a service: unavailable, after holding the request"
        assert resp.headers["Retry-After"] == str(rt.RETRY_AFTER)
        doc = await resp.json()
    held = time.monotonic() - t0
    assert HOLD <= held < HOLD + 1.5, f"held {held:.2f} s for a runner, then gave up"
    assert doc["service"] == SERVICE and "after holding it" in doc["error"]
    assert {a["worker_id"] for a in doc["attempts"]} == {"d", "l"}, "both tried, the body replayed for the second"
    router: gw.Gateway = trio["router"]
    assert router._held == 0, "a request that gave up is no longer counted as held"


def _advertise(trio: dict[str, Any], node: str, meta: NodeMeta) -> None:
    """``node`` gossips ``meta``; returns once the router has it (the manual clock runs the gossip)."""
    handles = trio["handles"]
    handles[node].update_meta(lambda m: meta)

    def heard() -> bool:
        return {m.node: m.meta for m in handles["r"].members()}[node] == meta

    assert trio["cluster"].run_until(heard, 30.0), f"{node}'s metadata reaches the router"


async def test_a_request_with_no_reachable_runner_is_held_until_one_appears(trio: dict[str, Any]) -> None:
    client: aiohttp.ClientSession = trio["client"]
    await trio["service"].stop()  # d refuses, l's service is gone: nothing can answer now
    fresh = PlaceholderRunner(SERVICE, "127.0.0.1", 0, "l")

    async def ask() -> tuple[int, dict[str, str], Any]:
        async with client.post(trio["r"] + "/api/service/ner/extract", data=b"held body") as resp:
            return resp.status, dict(resp.headers), await resp.json()

    t0 = time.monotonic()
    pending = asyncio.create_task(ask())
    await asyncio.sleep(0.6)
    assert not pending.done(), "no 502/503 while a runner may still appear"
    assert trio["router"]._held == 1
    await fresh.start()  # l's runner is back on a new port: the view change reaches the held request
    try:
        _advertise(trio, "l", _meta(f"127.0.0.1:{trio['l_port']}", fresh.port))
        status, headers, doc = await asyncio.wait_for(pending, HOLD)
        took = time.monotonic() - t0
    finally:
        await fresh.stop()
    assert status == 200 and headers[rt.NODE_HEADER] == "l", doc
    assert doc["bytes"] == len(b"held body"), "the body was replayed to the runner that appeared"
    assert int(headers[rt.ATTEMPTS_HEADER]) >= 3, "d and l failed first"
    assert 0.6 <= took < HOLD, f"answered {took:.2f} s after it was sent, before the hold ran out"
    assert trio["router"]._held == 0


async def test_a_held_request_waits_for_a_starting_runner_to_report_healthy(trio: dict[str, Any]) -> None:
    client: aiohttp.ClientSession = trio["client"]
    l_http = f"127.0.0.1:{trio['l_port']}"
    port = trio["service"].port
    starting = NodeMeta(name="t", worker_type="cpu", http=l_http, services=((SERVICE, "starting"),),
                        service_ports=((SERVICE, port),))
    _advertise(trio, "l", starting)  # l's runner is loading its model; d refuses

    async def ask() -> tuple[int, dict[str, str]]:
        async with client.post(trio["r"] + "/api/service/ner/extract", data=b"x") as resp:
            return resp.status, dict(resp.headers)

    t0 = time.monotonic()
    pending = asyncio.create_task(ask())
    await asyncio.sleep(0.5)
    assert not pending.done(), "not sent to a runner that may still answer 'loading'"
    _advertise(trio, "l", _meta(l_http, port))
    status, headers = await asyncio.wait_for(pending, HOLD)
    assert status == 200 and headers[rt.NODE_HEADER] == "l"
    assert 0.5 <= time.monotonic() - t0 < HOLD - rt.HOLD_RETRY, "sent once l reported healthy, not at the end of the hold"
    # A runner that never reports healthy is still better than a 503: tried in the hold's last second.
    _advertise(trio, "l", starting)
    t0 = time.monotonic()
    status, headers = await ask()
    assert status == 200 and headers[rt.NODE_HEADER] == "l"
    assert HOLD - rt.HOLD_RETRY - 0.1 <= time.monotonic() - t0 < HOLD + 0.5


async def _reset_server() -> tuple[asyncio.AbstractServer, int]:
    """A 'gateway' that reads the request and drops the connection before any response byte."""

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.transport.abort()  # RST: a process killed while it held the connection

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_connection_broken_before_the_answer_is_retried_only_when_safe_to_repeat(trio: dict[str, Any]) -> None:
    client: aiohttp.ClientSession = trio["client"]
    server, port = await _reset_server()
    both = (SERVICE, "notes-coa")
    try:
        # d (ranked first by its specialization) now accepts and drops; l answers both services.
        _advertise(trio, "l", _meta(f"127.0.0.1:{trio['l_port']}", trio["service"].port, services=both))
        _advertise(trio, "d", _meta(f"127.0.0.1:{port}", port, "ner", services=both))
        async with client.post(trio["r"] + "/api/service/ner/extract", data=b"text") as resp:
            assert resp.status == 200, "NER has no side effects: the POST is sent again to l"
            assert (resp.headers[rt.NODE_HEADER], resp.headers[rt.ATTEMPTS_HEADER]) == ("l", "2")
        router: gw.Gateway = trio["router"]
        assert "d" in router.book.unreachable, "a dropped connection is first-hand evidence, as a refused connect is"
        router.book.unreachable.clear()
        _advertise(trio, "d", _meta(f"127.0.0.1:{port}", port, "notes-coa", services=both))  # d first for notes
        t0 = time.monotonic()
        async with client.post(trio["r"] + "/api/service/notes/notes", data=b"{}") as resp:
            assert resp.status == 502, "a POST to notes-coa may have reached it: never sent twice"
            doc = await resp.json()
        assert [a["worker_id"] for a in doc["attempts"]] == ["d"]
        assert time.monotonic() - t0 < HOLD, "a failure that may have reached a service is not held"
        router.book.unreachable.clear()
        async with client.get(trio["r"] + "/api/service/notes/status") as resp:
            assert resp.status == 200 and resp.headers[rt.ATTEMPTS_HEADER] == "2", "a GET is safe to repeat"
    finally:
        server.close()
        await server.wait_closed()


async def test_a_request_routed_to_a_node_that_no_longer_runs_the_service_is_routed_afresh(trio: dict[str, Any]) -> None:
    client: aiohttp.ClientSession = trio["client"]
    # r runs nothing (as after a hand-over the sender had not heard of): it routes on, one hop more.
    headers = {rt.ROUTE_HEADER: "r", rt.HOPS_HEADER: "1"}
    async with client.post(trio["r"] + "/api/service/ner/y", data=b"z", headers=headers) as resp:
        assert resp.status == 200 and resp.headers[rt.NODE_HEADER] == "l"
    headers = {rt.ROUTE_HEADER: "r", rt.HOPS_HEADER: str(rt.HOP_LIMIT - 1)}
    async with client.post(trio["r"] + "/api/service/ner/y", data=b"z", headers=headers) as resp:
        assert resp.status == 508, "the next gateway refuses the forward that reaches the limit; its answer comes back"


async def test_hop_limit_and_errors_in_process(trio: dict[str, Any]) -> None:
    client: aiohttp.ClientSession = trio["client"]
    async with client.get(trio["r"] + "/api/service/ner/x", headers={rt.HOPS_HEADER: str(rt.HOP_LIMIT)}) as resp:
        assert resp.status == 508
    async with client.get(trio["r"] + "/api/service/ner/x", headers={rt.HOPS_HEADER: "lots"}) as resp:
        assert resp.status == 400
    t0 = time.monotonic()
    async with client.get(trio["r"] + "/api/service/redis/x") as resp:
        assert resp.status == 503 and "Retry-After" not in resp.headers
        assert (await resp.json())["gap"]["status"] == "critical"
    assert time.monotonic() - t0 < HOLD / 2, "no node can run redis here: nothing to wait for"


# ---------------------------------------------------------------- real processes

TYPES = [("e0", "edge"), ("c0", "cpu"), ("c1", "cpu"), ("c2", "cpu"), ("c3", "cpu"), ("s0", "storage")]
CPU_SERVICES = ("ner-extraction", "document-processing", "notes-coa")


def call(node: NodeProc, path: str, body: bytes | None = b"{}", headers: dict[str, str] | None = None,
         method: str = "POST", timeout: float = 10.0) -> tuple[int, dict[str, str], Any]:
    req = urllib.request.Request(f"http://{node.http}{path}", data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


def runners_of(view: dict[str, dict], service: str) -> set[str]:
    return {w["worker_id"] for w in view.values()
            if w["status"] == "alive" and w["services_status"].get(service) == "healthy"}


def ready(nodes: list[NodeProc]) -> bool:
    """Every node sees everyone alive, the same services everywhere, all healthy, every CPU service covered."""
    views = [n.view() for n in nodes]
    names = {n.name for n in nodes}
    if any({k for k, w in v.items() if w["status"] == "alive"} != names for v in views):
        return False
    placed = [{k: sorted(w["services_status"].items()) for k, w in v.items()} for v in views]
    if any(p != placed[0] for p in placed):
        return False
    if any(h != "healthy" for w in views[0].values() for h in w["services_status"].values()):
        return False
    return all(runners_of(views[0], s) for s in CPU_SERVICES) and any(len(runners_of(views[0], s)) >= 2 for s in CPU_SERVICES)


def steady(nodes: list[NodeProc], hold: float = 2.0) -> bool:
    """The placement stays the same for ``hold`` seconds: longer than a node's re-allocation
    debounce, so a view that agrees only because the last joiner has not re-allocated yet
    does not pass for settled."""
    before = {k: sorted(w["services_status"].items()) for k, w in nodes[0].view().items()}
    time.sleep(hold)
    return ready(nodes) and before == {k: sorted(w["services_status"].items()) for k, w in nodes[0].view().items()}


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProc]]:
    tmp = tmp_path_factory.mktemp("gateway")
    nodes = [NodeProc(name, tmp, extra=["--type", kind], services=True) for name, kind in TYPES]
    try:
        nodes[0].start().wait_healthy()
        for n in nodes[1:]:
            n.start(join=[nodes[0].gossip]).wait_healthy()
        took = wait_for(lambda: ready(nodes) and steady(nodes), 40, "the pool to settle with every CPU service healthy")
        print(f"pool settled in {took:.1f}s")
        yield nodes
    except BaseException:
        for n in nodes:
            print(f"----- {n.name}\n{n.tail(60)}")
        raise
    finally:
        for n in nodes:
            n.terminate()


def ids(nodes: list[NodeProc]) -> dict[str, str]:
    return {name: w["worker_id"] for name, w in nodes[0].view().items()}


@pytest.mark.slow
def test_any_node_forwards_to_a_node_that_runs_the_service(pool: list[NodeProc]) -> None:
    ner = runners_of(pool[0].view(), "ner-extraction")
    for node in pool:
        for name in ("ner-extraction", "ner", "NER"):
            status, headers, doc = call(node, f"/api/service/{name}/extract?lang=en", b'{"text": "Jane Doe"}')
            assert status == 200, (node.name, name, doc)
            assert doc["service"] == "ner-extraction" and doc["node_id"] in ner, doc
            assert doc["path"] == "/extract" and doc["bytes"] == len(b'{"text": "Jane Doe"}')
            assert headers[rt.NODE_HEADER] == doc["node_id"]
            assert rt.parse_load(headers[rt.LOAD_HEADER]) is not None
    status, _, doc = call(pool[0], "/api/service/document-processing/health", None, method="GET")
    assert status == 200 and doc["service"] == "document-processing"


@pytest.mark.slow
def test_error_answers(pool: list[NodeProc]) -> None:
    status, _, doc = call(pool[1], "/api/service/teleport/x")
    assert (status, doc["service"]) == (404, "teleport") and "unknown service" in doc["error"]
    status, _, doc = call(pool[1], "/api/service/llm/v1/chat/completions")  # no GPU node in this pool
    assert status == 503 and doc["service"] == "llm-inference"
    assert doc["gap"]["status"] == "critical" and doc["gap"]["current_workers"] == 0
    status, _, doc = call(pool[2], "/api/service/ner/extract", headers={rt.HOPS_HEADER: str(rt.HOP_LIMIT)})
    assert status == 508 and "hop limit" in doc["error"]
    # The forward to the serving node adds one hop: two below the limit still arrives under it.
    status, _, doc = call(pool[2], "/api/service/ner/extract", headers={rt.HOPS_HEADER: str(rt.HOP_LIMIT - 2)})
    assert status == 200, doc


@pytest.mark.slow
def test_concurrent_requests_spread_over_the_runners(pool: list[NodeProc]) -> None:
    view = pool[0].view()
    service = next(s for s in CPU_SERVICES if len(runners_of(view, s)) >= 2)
    entry = pool[0]
    with ThreadPoolExecutor(16) as ex:
        results = list(ex.map(lambda i: call(entry, f"/api/service/{service}/work", b"x" * i), range(48)))
    assert all(status == 200 for status, _, _ in results), [r[0] for r in results]
    served = {doc["node_id"] for _, _, doc in results}
    assert served == runners_of(view, service), f"{service}: served by {served}"


@pytest.mark.slow
def test_broadcast_job_reaches_every_capable_node(pool: list[NodeProc]) -> None:
    view = pool[0].view()
    cpus = {w["worker_id"] for w in view.values() if w["worker_type"] in ("gpu", "cpu")}
    # No capability named: every GPU/CPU node (seed 003). rag_ingestion itself is tested for real in test_rag_ingestion.
    body = json.dumps({"job_type": "cache_warmup", "job_data": {"keys": ["a"]}}).encode()
    status, _, doc = call(pool[5], "/api/coordinator/broadcast-job", body, {"Content-Type": "application/json"})
    assert status == 200, doc
    assert set(doc) == {"job_type", "broadcasted_to", "successful", "failed", "workers"}
    assert (doc["job_type"], doc["broadcasted_to"], doc["successful"], doc["failed"]) == ("cache_warmup", len(cpus), len(cpus), 0)
    assert {w["worker_id"] for w in doc["workers"]} == cpus
    assert all(w == {"worker_id": w["worker_id"], "status": "accepted", "status_code": 200} for w in doc["workers"])

    body = json.dumps({"job_type": "ner_batch", "job_data": {"ids": [1, 2]}, "required_capability": "ner"}).encode()
    status, _, doc = call(pool[0], "/api/coordinator/broadcast-job", body)
    ner = runners_of(view, "ner-extraction")
    assert status == 200 and (doc["broadcasted_to"], doc["successful"]) == (len(ner), len(ner))
    assert {w["worker_id"] for w in doc["workers"]} == ner

    status, _, doc = call(pool[0], "/api/coordinator/broadcast-job", b'{"job_data": {}}')
    assert status == 400 and "job_type" in doc["error"]
    status, _, doc = call(pool[0], "/api/coordinator/broadcast-job", b"not json")
    assert status == 400 and "JSON" in doc["error"]


@pytest.mark.slow
def test_requests_survive_a_sigkilled_runner_before_and_after_detection(pool: list[NodeProc]) -> None:
    # Last in the file: it kills a node of the module's pool.
    view = pool[0].view()
    service = next(s for s in CPU_SERVICES if len(runners_of(view, s)) >= 2)
    by_id = {w["worker_id"]: name for name, w in view.items()}
    victim_id = sorted(runners_of(view, service))[0]
    victim = next(n for n in pool if n.name == by_id[victim_id])
    survivors = [n for n in pool if n is not victim]
    victim.kill()
    t0 = time.monotonic()
    failovers = 0
    for node in survivors:
        for _ in range(3):
            status, headers, doc = call(node, f"/api/service/{service}/after-kill")
            assert status == 200, (node.name, doc)
            assert doc["node_id"] != victim_id
            failovers += headers.get(rt.ATTEMPTS_HEADER) != "1"
    before = time.monotonic() - t0
    still_listed = survivors[0].view()[victim.name]["status"]
    print(f"{len(survivors) * 3} requests in {before:.2f}s after SIGKILL, {failovers} needed a second node; "
          f"victim still {still_listed} in {survivors[0].name}'s view")
    wait_for(lambda: all(n.view()[victim.name]["status"] == "dead" for n in survivors), 30, "the victim to be dead everywhere")
    for node in survivors:
        status, headers, doc = call(node, f"/api/service/{service}/after-detection")
        assert status == 200 and doc["node_id"] != victim_id, doc
        assert headers[rt.ATTEMPTS_HEADER] == "1", "a dead member is no candidate"


def test_log_limiter_says_once_per_interval_and_counts_what_it_held() -> None:
    from services.log_limits import LogLimiter

    quiet = LogLimiter(interval=10.0, max_keys=2)
    assert quiet.allow("a", 0.0) == 0
    assert quiet.allow("a", 1.0) is None and quiet.allow("a", 9.9) is None
    assert quiet.allow("b", 2.0) == 0, "keys are apart"
    assert quiet.allow("a", 10.0) == 2, "the next line says how many were left out"
    assert quiet.allow("c", 11.0) == 0 and len(quiet._last) == 2, "bounded: the oldest key goes"
