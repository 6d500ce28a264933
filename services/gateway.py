"""The HTTP gateway every node serves: any request for any service, sent to the best node (seed 003).

Routing
-------
``/api/service/{service}/{path}`` (any method; ``service`` a catalog name or an
alias such as ``ocr``) reaches whichever gateway the client knows. That
gateway, the *router*, orders the candidates and tries them in turn:

1. candidates are the alive or suspect members that list the service and
   advertise a port for it; those reporting it ``healthy`` if there are any,
   otherwise the ones still starting (or unhealthy): a request that may work
   beats a certain 503;
2. each candidate's gossiped load is replaced by what the router saw first
   hand, if less than ``FIRST_HAND_MAX_AGE`` old (DESIGN "Load travels
   differently": gossip is a hint, first-hand figures the truth), and
   ``allocator.scoring.rank`` orders them by the seed-003 score with
   ``in_flight`` = this router's own requests in flight per target and a
   ``random.Random`` seeded from the node id for the tie-break;
3. that order is then stably partitioned: alive members first, suspect ones
   next, members this router failed to connect to in the last
   ``UNREACHABLE_FOR`` seconds last. A suspect is usually alive, so it stays
   a candidate, but a dead one would cost a connect timeout per request until
   SWIM declares it; the first-hand connect failure is fresher than gossip.

The router tries at most ``MAX_ATTEMPTS`` candidates. It moves on only when
nothing reached a service: the connect failed, or the target gateway said
``X-Rmap2p-Unserved`` (it could not reach its own service) and the request
body can still be replayed (``ReplayableBody``). Any other failure is a 502
listing the attempts; once the response has started, an error aborts the
client connection, because a truncated body must not look complete.

Hops
----
A router does not connect to another node's service port: it sends the
request to that node's gateway with ``X-Rmap2p-Route: <node id>`` and
``X-Rmap2p-Hops: n + 1``. A gateway that finds its own id in the route
header serves the request from its local service port, and routes it afresh
only if it no longer runs the service (a hand-over the router had not heard
of yet). Going through the serving node's gateway is what lets that node
count the request in ``node.active_requests`` (the figure its acks and
gossip carry) and answer with its load in ``X-Rmap2p-Load: cpu,mem,gpu,active``
and ``X-Rmap2p-Node: <id>``; the cost is one loopback hop on the serving
host. When the router picks itself it calls its own service port directly.
A request that arrives with ``HOP_LIMIT`` hops or more is refused with 508,
so gateways with diverging views cannot pass a request around forever.

First-hand load
---------------
``active`` in the load header is the serving node's count *including* the
request being answered and every other request it is serving, some of them
from this router. The router already adds its own in-flight requests in
``rank``, so it records ``active − in_flight[node]`` (what the others send
there) and lets ``in_flight`` add its own current count back at the next
decision: nothing is counted twice.

Job broadcast
-------------
``POST /api/coordinator/broadcast-job`` fans a job out, concurrently and
with a bounded timeout, to every capable alive node's
``POST /api/worker/job`` (served by this module on every node). Capable: the
node runs ``required_capability`` (name or alias) and reports it healthy;
with no capability named, every GPU or CPU node (tier ≤ 2, seed 003). A
worker hands a job with a capability to its local service as
``POST /jobs`` with the job as JSON; a job without one is accepted and
logged (no generic job runner exists yet). The answer has the seed's shape.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import ChainMap
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from allocator.catalog import CATALOG, TIER_OF_TYPE, by_name
from allocator.gaps import gaps
from allocator.scoring import canonical_service, detect_required_model, rank
from allocator.view import NodeView
from membership import Load, MemberView, RemoteProtocolError
from rmap2p.views import node_view

if TYPE_CHECKING:  # services/ stays importable without the daemon (as services/manager.py does)
    from rmap2p.daemon import Node

log = logging.getLogger(__name__)

HOPS_HEADER = "X-Rmap2p-Hops"
ROUTE_HEADER = "X-Rmap2p-Route"
LOAD_HEADER = "X-Rmap2p-Load"
NODE_HEADER = "X-Rmap2p-Node"
UNSERVED_HEADER = "X-Rmap2p-Unserved"
ATTEMPTS_HEADER = "X-Rmap2p-Attempts"

HOP_LIMIT = 4
"""A request arriving with this many gateway-to-gateway forwards or more gets 508. One is the
normal case (router → serving node); a re-route after a hand-over makes two."""
MAX_ATTEMPTS = 3
CONNECT_TIMEOUT = 2.0
"""Seconds to wait for a TCP connect before trying the next node (a dead host on a LAN)."""
READ_TIMEOUT = 300.0
"""Seconds of silence tolerated from a service: LLM generation can be slow to start."""
FIRST_HAND_MAX_AGE = 5.0
"""Load seen in a response header overrides gossip for this long (the sampler runs every 2 s)."""
UNREACHABLE_FOR = 5.0
"""After a failed connect, the node is tried last for this long (or until it answers again)."""
REPLAY_LIMIT = 256 * 1024
"""Request body bytes kept so an attempt that reached no service can be replayed elsewhere."""
MAX_BOOK_ENTRIES = 4096
"""Bound on per-node first-hand records (one per member; stale ones go first)."""
CONNECTION_LIMIT = 512
BROADCAST_TIMEOUT = 10.0
BROADCAST_CONCURRENCY = 64
WORKER_JOB_PATH = "/api/worker/job"
SERVICE_JOB_PATH = "/jobs"
MAX_JOB_TYPE = 200

HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
        "te", "trailer", "trailers", "transfer-encoding", "upgrade",
    }
)
"""RFC 9110 §7.6.1: meaningful for one connection only, never forwarded."""

# Set by the forwarder itself, never copied from the client: Host and our own routing headers;
# Expect, because this gateway already answered the client's 100-continue.
_REQUEST_DROP = ("host", "expect", HOPS_HEADER.lower(), ROUTE_HEADER.lower())
_WILDCARD_HOSTS = ("0.0.0.0", "", "::")
_JSON = {"Content-Type": "application/json"}  # the session skips automatic Content-Type (pass-through)


# ---------------------------------------------------------------- pure helpers


def parse_hops(value: str | None) -> int | None:
    """The hop count a request arrived with: 0 when the header is absent, None when malformed."""
    if value is None:
        return 0
    text = value.strip()
    if not text or len(text) > 6 or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def format_load(load: Load) -> str:
    """``cpu,mem,gpu,active``: integers, the first three in percent (the wire order of ``Load``)."""
    return ",".join(str(v) for v in load.to_wire())


def parse_load(value: str | None) -> Load | None:
    """A ``format_load`` header back to a ``Load``; None when absent, malformed or out of range."""
    if value is None or len(value) > 64:
        return None
    parts = [p.strip() for p in value.split(",")]
    if len(parts) != 4 or not all(p.isascii() and p.isdigit() for p in parts):
        return None
    try:
        return Load.from_wire([int(p) for p in parts])
    except RemoteProtocolError:
        return None


def forward_headers(headers: Mapping[str, str], drop: Iterable[str] = ()) -> CIMultiDict[str]:
    """``headers`` without hop-by-hop ones (also those named in ``Connection``) and without ``drop``."""
    items = list(headers.items())
    skip = set(HOP_BY_HOP) | {d.lower() for d in drop}
    for name, value in items:
        if name.lower() == "connection":
            skip |= {token.strip().lower() for token in value.split(",") if token.strip()}
    return CIMultiDict((name, value) for name, value in items if name.lower() not in skip)


@dataclass(frozen=True, slots=True)
class FirstHand:
    """Load a router saw itself, at loop time ``at``.

    ``load.active_requests`` counts only what *other* routers had in flight at
    the node (see the module docstring), so ``rank`` can add this router's own
    current count without counting anything twice.
    """

    load: Load
    at: float


def apply_first_hand(view: NodeView, seen: FirstHand | None, now: float, max_age: float = FIRST_HAND_MAX_AGE) -> NodeView:
    """``view`` with its load fields replaced by ``seen`` when that is at most ``max_age`` seconds old."""
    if seen is None or not 0.0 <= now - seen.at <= max_age:
        return view
    return replace(
        view,
        current_load=seen.load.cpu_percent / 100.0,
        gpu_utilization=float(seen.load.gpu_utilization),
        active_requests=seen.load.active_requests,
    )


def order_candidates(
    views: Iterable[NodeView],
    service: str,
    required_model: str | None,
    in_flight: Mapping[str, int],
    first_hand: Mapping[str, FirstHand],
    unreachable: Mapping[str, float],
    now: float,
    rng: random.Random,
) -> list[NodeView]:
    """The nodes to try for ``service``, best first (steps 1–3 of the module docstring).

    ``views`` should hold only nodes that advertise a port for the service;
    ``unreachable`` maps a node to the loop time of its last failed connect.
    """
    name = canonical_service(service)
    running = [v for v in views if v.is_alive and name in v.services]
    healthy = [v for v in running if name in v.healthy_services]
    pool = [apply_first_hand(v, first_hand.get(v.node_id), now) for v in (healthy or running)]
    ranked = rank(pool, name, required_model, in_flight, rng)

    def tier(v: NodeView) -> tuple[bool, bool]:
        failed_at = unreachable.get(v.node_id)
        recently_failed = failed_at is not None and 0.0 <= now - failed_at < UNREACHABLE_FOR
        return recently_failed, v.status != "alive"

    return sorted(ranked, key=tier)  # stable: the score order survives within each group


@dataclass(slots=True)
class RouterBook:
    """What this router knows first hand about each target: requests in flight, reported load, failed connects."""

    in_flight: dict[str, int] = field(default_factory=dict)
    first_hand: dict[str, FirstHand] = field(default_factory=dict)
    unreachable: dict[str, float] = field(default_factory=dict)
    max_entries: int = MAX_BOOK_ENTRIES

    def sent(self, node: str) -> None:
        self.in_flight[node] = self.in_flight.get(node, 0) + 1

    def done(self, node: str) -> None:
        left = self.in_flight.get(node, 0) - 1
        if left > 0:
            self.in_flight[node] = left
        else:
            self.in_flight.pop(node, None)

    def saw_load(self, node: str, load: Load, now: float) -> None:
        """``node`` answered with ``load``; its count includes our requests still in flight there."""
        others = max(0, load.active_requests - self.in_flight.get(node, 0))
        self.first_hand[node] = FirstHand(replace(load, active_requests=others), now)
        self.unreachable.pop(node, None)
        self._bound(now)

    def saw_unreachable(self, node: str, now: float) -> None:
        self.unreachable[node] = now
        self._bound(now)

    def _bound(self, now: float) -> None:
        if len(self.first_hand) > self.max_entries:
            stale = [n for n, fh in self.first_hand.items() if now - fh.at > FIRST_HAND_MAX_AGE]
            for n in stale:
                del self.first_hand[n]
            while len(self.first_hand) > self.max_entries:
                oldest = min(self.first_hand, key=lambda n: self.first_hand[n].at)
                del self.first_hand[oldest]
        if len(self.unreachable) > self.max_entries:
            for n in [n for n, t in self.unreachable.items() if now - t >= UNREACHABLE_FOR]:
                del self.unreachable[n]
            while len(self.unreachable) > self.max_entries:
                del self.unreachable[min(self.unreachable, key=self.unreachable.__getitem__)]


class ReplayableBody:
    """A request body streamed once, with its first ``limit`` bytes kept for a replay.

    Every attempt iterates a fresh ``chunks()``: it yields what earlier attempts
    already read from the client, then goes on reading the client. Once more
    than ``limit`` bytes have been read the copy is dropped and ``replayable``
    turns False: a large upload is streamed, never buffered whole.
    """

    def __init__(self, source: aiohttp.StreamReader, limit: int = REPLAY_LIMIT) -> None:
        self._source = source
        self._limit = limit
        self._kept: list[bytes] = []
        self._read = 0
        self._replayable = True

    @property
    def replayable(self) -> bool:
        return self._replayable

    async def chunks(self) -> AsyncIterator[bytes]:
        if not self._replayable:
            raise RuntimeError("body already streamed past the replay limit")
        for chunk in list(self._kept):
            yield chunk
        while True:
            chunk = await self._source.readany()
            if not chunk:
                return
            self._read += len(chunk)
            if self._replayable:
                if self._read <= self._limit:
                    self._kept.append(chunk)
                else:
                    self._kept.clear()
                    self._replayable = False
            yield chunk


@dataclass(frozen=True, slots=True)
class Job:
    """A broadcast job; ``capability`` is a catalog service name (aliases resolved) or None."""

    job_type: str
    job_data: dict[str, Any]
    capability: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"job_type": self.job_type, "job_data": self.job_data, "required_capability": self.capability}


def parse_job(doc: object) -> Job:
    """A ``{"job_type", "job_data", "required_capability"?}`` document; ValueError says what is wrong."""
    if not isinstance(doc, dict):
        raise ValueError('expected a JSON object {"job_type": str, "job_data": object, "required_capability"?: str}')
    job_type = doc.get("job_type")
    if not isinstance(job_type, str) or not job_type.strip():
        raise ValueError("job_type must be a non-empty string")
    if len(job_type) > MAX_JOB_TYPE:
        raise ValueError(f"job_type must be at most {MAX_JOB_TYPE} characters")
    if "job_data" not in doc:
        raise ValueError("job_data is required (a JSON object)")
    job_data = doc["job_data"]
    if not isinstance(job_data, dict):
        raise ValueError("job_data must be a JSON object")
    raw_cap = doc.get("required_capability")
    if raw_cap is None or raw_cap == "":
        return Job(job_type, job_data)
    if not isinstance(raw_cap, str):
        raise ValueError("required_capability must be a string (a service name or alias)")
    cap = canonical_service(raw_cap)
    if by_name(cap) is None:
        known = ", ".join(s.name for s in CATALOG)
        raise ValueError(f"unknown required_capability {raw_cap!r}; known services: {known}")
    return Job(job_type, job_data, cap)


def capable(views: Iterable[NodeView], capability: str | None) -> list[NodeView]:
    """The alive nodes a job goes to, by node id: running ``capability`` healthy, or GPU/CPU nodes when None."""
    if capability is None:
        chosen = (v for v in views if v.is_alive and TIER_OF_TYPE.get(v.worker_type, 99) <= 2)
    else:
        chosen = (v for v in views if v.is_alive and capability in v.healthy_services)
    return sorted(chosen, key=lambda v: v.node_id)


def split_host_port(text: str) -> tuple[str, int] | None:
    """``host:port`` (IPv6 with or without brackets) from gossiped metadata; None when unusable."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    value = int(port)
    if not 0 < value < 65536:
        return None
    return host.strip("[]"), value


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in _WILDCARD_HOSTS else host


def _error(status: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status, headers=headers)


def _abort(request: web.BaseRequest) -> None:
    # aiohttp would finish a started response with its last chunk, making a
    # truncated body look complete; closing the connection tells the client.
    if request.transport is not None:
        request.transport.close()


# ---------------------------------------------------------------- the gateway


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try that produced no response for the client."""

    node: str
    target: str
    error: str
    retryable: bool

    def to_json(self) -> dict[str, object]:
        return {"worker_id": self.node, "target": self.target, "error": self.error}


@dataclass(frozen=True, slots=True)
class _Target:
    node: str
    host: str
    port: int
    is_self: bool

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


class Gateway:
    """The gateway of one node: its routes, its client session and its first-hand book."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.book = RouterBook()
        self._session: aiohttp.ClientSession | None = None
        self._rng: random.Random | None = None

    # ------------------------------------------------------------ lifecycle

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp ``cleanup_ctx``: one client session for the app's lifetime."""
        me = self._me()
        self._rng = random.Random(int.from_bytes(hashlib.blake2b(me.encode(), digest_size=8).digest(), "big"))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONNECTION_LIMIT),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT),
            # Bytes pass through untouched: no decompression, no headers the client did not send.
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        try:
            yield
        finally:
            await self._session.close()
            self._session = None

    def _me(self) -> str:
        machine = self.node.machine
        if machine is None:
            raise RuntimeError("gateway used before the node started")
        return machine.id

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("gateway session used outside the app's lifetime")
        return self._session

    # ------------------------------------------------------------ /api/service

    async def handle_service(self, request: web.Request) -> web.StreamResponse:
        asked = request.match_info["service"]
        service = canonical_service(asked)
        me = self._me()
        if by_name(service) is None:
            return _error(404, f"unknown service {asked!r}", service=asked)
        hops = parse_hops(request.headers.get(HOPS_HEADER))
        if hops is None:
            return _error(400, f"malformed {HOPS_HEADER} header", service=service)
        if hops >= HOP_LIMIT:
            log.warning("node %s: %s %s refused: %d hops (limit %d), a routing loop?", me, service, request.path, hops, HOP_LIMIT)
            return _error(508, f"hop limit {HOP_LIMIT} reached: the request went round the pool", service=service, hops=hops)
        if request.headers.get(ROUTE_HEADER) == me:
            port = self.node.machine.meta.port_of(service)  # type: ignore[union-attr]
            if port is not None:
                return await self._serve_routed(request, service, port, hops)
            log.info("node %s: %s %s was routed here but no longer runs here; routing afresh", me, service, request.path)
        return await self._route(request, service, hops)

    async def _route(self, request: web.Request, service: str, hops: int) -> web.StreamResponse:
        me = self._me()
        now = asyncio.get_running_loop().time()
        members = self.node.machine.members()  # type: ignore[union-attr]
        views, targets = self._candidates(members, service)
        assert self._rng is not None
        ranked = order_candidates(
            views, service, detect_required_model(service, request.match_info.get("path", "")),
            self.book.in_flight, ChainMap({me: self._own_first_hand(now)}, self.book.first_hand),
            self.book.unreachable, now, self._rng,
        )
        if not ranked:
            gap = next(e for e in gaps([node_view(m) for m in members])["gaps"] if e["service"] == service)
            log.warning("node %s: %s %s: no alive node serves it (%s)", me, service, request.path, gap["status"])
            return _error(503, f"no alive node serves {service}", service=service, gap=gap)
        body = ReplayableBody(request.content) if request.body_exists else None
        attempts: list[Attempt] = []
        for number, view in enumerate(ranked[:MAX_ATTEMPTS], start=1):
            target = targets[view.node_id]
            outcome = await self._attempt(request, service, target, hops, body, number)
            if isinstance(outcome, web.StreamResponse):
                return outcome
            attempts.append(outcome)
            if not outcome.retryable or (body is not None and not body.replayable):
                break
        log.warning(
            "node %s: %s %s failed on %s", me, service, request.path,
            "; ".join(f"node {a.node} at {a.target}: {a.error}" for a in attempts),
        )
        return _error(
            502, f"no node could serve {service} ({len(attempts)} attempted)",
            service=service, attempts=[a.to_json() for a in attempts],
        )

    def _candidates(self, members: list[MemberView], service: str) -> tuple[list[NodeView], dict[str, _Target]]:
        """Views of the members that advertise a port for ``service``, and where to send each one's requests."""
        me = self._me()
        views: list[NodeView] = []
        targets: dict[str, _Target] = {}
        for m in members:
            if m.status.is_down:
                continue
            port = m.meta.port_of(service)
            http = split_host_port(m.meta.http)
            if port is None or http is None:
                continue
            if m.node == me:
                targets[m.node] = _Target(m.node, _connect_host(http[0]), port, True)
            else:
                # A wildcard HTTP host is no address for others; the gossip host is where that node is.
                host = m.addr[0] if http[0] in _WILDCARD_HOSTS else http[0]
                targets[m.node] = _Target(m.node, host, http[1], False)
            views.append(node_view(m))
        return views, targets

    def _own_load(self) -> Load:
        machine = self.node.machine  # type: ignore[union-attr]
        sampled = machine.load if machine is not None else Load()
        return replace(sampled, active_requests=self.node.active_requests)

    def _own_first_hand(self, now: float) -> FirstHand:
        own = self._own_load()
        others = max(0, own.active_requests - self.book.in_flight.get(self._me(), 0))
        return FirstHand(replace(own, active_requests=others), now)

    async def _attempt(
        self, request: web.Request, service: str, target: _Target, hops: int, body: ReplayableBody | None, number: int
    ) -> web.StreamResponse | Attempt:
        suffix, query = _suffix(request)
        if target.is_self:
            url = URL.build(scheme="http", host=target.host, port=target.port, path=suffix, query_string=query, encoded=True)
            headers = forward_headers(request.headers, drop=_REQUEST_DROP)
            headers[HOPS_HEADER] = str(hops)
        else:
            url = URL.build(
                scheme="http", host=target.host, port=target.port,
                path=f"/api/service/{service}{suffix}", query_string=query, encoded=True,
            )
            headers = forward_headers(request.headers, drop=_REQUEST_DROP)
            headers[HOPS_HEADER] = str(hops + 1)
            headers[ROUTE_HEADER] = target.node
        self.book.sent(target.node)
        try:
            return await self._exchange(request, service, target, url, headers, body, serve_here=target.is_self, attempt=number)
        finally:
            self.book.done(target.node)

    async def _serve_routed(self, request: web.Request, service: str, port: int, hops: int) -> web.StreamResponse:
        """Serve a request another router sent here, from the local service port."""
        me = self._me()
        http = split_host_port(self.node.machine.meta.http)  # type: ignore[union-attr]
        target = _Target(me, _connect_host(http[0] if http else "127.0.0.1"), port, True)
        suffix, query = _suffix(request)
        url = URL.build(scheme="http", host=target.host, port=port, path=suffix, query_string=query, encoded=True)
        headers = forward_headers(request.headers, drop=_REQUEST_DROP)
        headers[HOPS_HEADER] = str(hops)
        body = ReplayableBody(request.content, limit=0) if request.body_exists else None
        outcome = await self._exchange(request, service, target, url, headers, body, serve_here=True, attempt=0)
        if isinstance(outcome, web.StreamResponse):
            return outcome
        if outcome.retryable:
            # Nothing reached the service and we read nothing of the body: the router may try elsewhere.
            return _error(
                503, f"{service} is not reachable on node {me}: {outcome.error}", {UNSERVED_HEADER: "1"}, service=service,
            )
        return _error(502, f"{service} on node {me} failed: {outcome.error}", service=service)

    async def _exchange(
        self,
        request: web.Request,
        service: str,
        target: _Target,
        url: URL,
        headers: CIMultiDict[str],
        body: ReplayableBody | None,
        *,
        serve_here: bool,
        attempt: int,
    ) -> web.StreamResponse | Attempt:
        """Send the request to ``url`` and stream the answer back; an Attempt when no response was started."""
        me = self._me()
        loop = asyncio.get_running_loop()
        started: web.StreamResponse | None = None
        t0 = time.perf_counter()
        if serve_here:
            self.node.active_requests += 1
        try:
            async with self._client().request(
                request.method, url, headers=headers, data=body.chunks() if body is not None else None,
                allow_redirects=False,
            ) as upstream:
                if not serve_here:
                    load = parse_load(upstream.headers.get(LOAD_HEADER))
                    served_by = upstream.headers.get(NODE_HEADER) or target.node
                    if load is not None:
                        self.book.saw_load(served_by, load, loop.time())
                    if upstream.headers.get(UNSERVED_HEADER):
                        return Attempt(target.node, target.where, f"{upstream.status}: its service was not reachable", True)
                out_headers = forward_headers(upstream.headers)
                if serve_here:
                    out_headers[LOAD_HEADER] = format_load(self._own_load())
                    out_headers[NODE_HEADER] = me
                if attempt:
                    out_headers[ATTEMPTS_HEADER] = str(attempt)
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=out_headers)
                started = response
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                log.debug(
                    "node %s: %s %s %s -> node %s at %s: %d in %.1f ms (%s)",
                    me, service, request.method, request.path, target.node, target.where, upstream.status,
                    (time.perf_counter() - t0) * 1000, f"attempt {attempt}" if attempt else "routed here by another node",
                )
                return response
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            if not serve_here:
                self.book.saw_unreachable(target.node, loop.time())
            log.warning(
                "node %s: %s %s -> node %s at %s: cannot connect (%s)%s",
                me, service, request.path, target.node, target.where, exc, "; trying the next best" if attempt else "",
            )
            return Attempt(target.node, target.where, f"connect failed: {exc}", True)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            if started is not None:
                log.warning(
                    "node %s: %s %s -> node %s at %s broke after the response started: %r",
                    me, service, request.path, target.node, target.where, exc,
                )
                _abort(request)
                return started
            log.warning("node %s: %s %s -> node %s at %s failed: %r", me, service, request.path, target.node, target.where, exc)
            return Attempt(target.node, target.where, f"{type(exc).__name__}: {exc}", False)
        finally:
            if serve_here:
                self.node.active_requests -= 1

    # ------------------------------------------------------------ broadcast

    async def handle_broadcast(self, request: web.Request) -> web.Response:
        me = self._me()
        job = await _read_job(request)
        if isinstance(job, web.Response):
            return job
        members = self.node.machine.members()  # type: ignore[union-attr]
        by_id = {m.node: m for m in members}
        targets = capable((node_view(m) for m in members), job.capability)
        shape: dict[str, Any] = {"job_type": job.job_type, "broadcasted_to": len(targets)}
        if not targets:
            what = f"running {job.capability} healthy" if job.capability else "of GPU or CPU tier"
            log.warning("node %s: broadcast %s: no alive node %s", me, job.job_type, what)
            return web.json_response(
                {"error": f"no alive node {what}", **shape, "successful": 0, "failed": 0, "workers": []}, status=503
            )
        results: dict[str, int | None] = {}
        gate = asyncio.Semaphore(BROADCAST_CONCURRENCY)
        # One deadline for the whole fan-out, waiting for the gate included: a pool of thousands
        # answers within BROADCAST_TIMEOUT too, the slowest nodes counted as failed.
        deadline = asyncio.get_running_loop().time() + BROADCAST_TIMEOUT

        async def send(node: str) -> None:
            results[node] = await self._send_job(job, by_id[node], gate, deadline)

        async with asyncio.TaskGroup() as tg:
            for t in targets:
                tg.create_task(send(t.node_id))
        workers = []
        for t in targets:
            code = results.get(t.node_id)
            ok = code is not None and 200 <= code < 300
            workers.append({"worker_id": t.node_id, "status": "accepted" if ok else "failed", "status_code": code})
        successful = sum(1 for w in workers if w["status"] == "accepted")
        log.info(
            "node %s: broadcast %s (capability %s) to %d nodes: %d accepted", me, job.job_type, job.capability or "tier<=2",
            len(targets), successful,
        )
        return web.json_response({**shape, "successful": successful, "failed": len(targets) - successful, "workers": workers})

    async def _send_job(self, job: Job, member: MemberView, gate: asyncio.Semaphore, deadline: float) -> int | None:
        """POST the job to one node's worker endpoint (in-process for this node); its status code, or None."""
        me = self._me()
        try:
            async with asyncio.timeout_at(deadline), gate:
                if member.node == me:
                    status, _ = await self._take_job(job)
                    return status
                http = split_host_port(member.meta.http)
                if http is None:
                    log.warning(
                        "node %s: job %s -> node %s: no usable HTTP address %r", me, job.job_type, member.node, member.meta.http,
                    )
                    return None
                host = member.addr[0] if http[0] in _WILDCARD_HOSTS else http[0]
                url = URL.build(scheme="http", host=host, port=http[1], path=WORKER_JOB_PATH)
                async with self._client().post(url, json=job.to_json(), headers=_JSON) as resp:
                    await resp.read()
                log.debug(
                    "node %s: job %s (%s) -> node %s at %s: %d", me, job.job_type, job.capability or "tier<=2",
                    member.node, url.authority, resp.status,
                )
                return resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning(
                "node %s: job %s (%s) -> node %s failed: %r", me, job.job_type, job.capability or "tier<=2", member.node, exc,
            )
            return None

    async def handle_job(self, request: web.Request) -> web.Response:
        job = await _read_job(request)
        if isinstance(job, web.Response):
            return job
        status, doc = await self._take_job(job)
        return web.json_response(doc, status=status)

    async def _take_job(self, job: Job) -> tuple[int, dict[str, Any]]:
        """This node's answer to a broadcast job: hand it to the local service, or accept it."""
        me = self._me()
        meta = self.node.machine.meta  # type: ignore[union-attr]
        if job.capability is None:
            tier = TIER_OF_TYPE.get(meta.worker_type, 99)
            if tier > 2:
                why = f"a {meta.worker_type} node (tier {tier}) takes only jobs naming a service it runs"
                return 409, {"error": why, "worker_id": me}
            log.info("node %s: accepted job %s (no capability named; recorded, no job runner yet)", me, job.job_type)
            return 200, {"worker_id": me, "status": "accepted", "job_type": job.job_type}
        service = job.capability
        port = meta.port_of(service)
        http = split_host_port(meta.http)
        if service not in meta.healthy_services or port is None:
            return 409, {"error": f"{service} does not run healthy on node {me}", "worker_id": me}
        url = URL.build(scheme="http", host=_connect_host(http[0] if http else "127.0.0.1"), port=port, path=SERVICE_JOB_PATH)
        self.node.active_requests += 1
        try:
            async with asyncio.timeout(BROADCAST_TIMEOUT):
                async with self._client().post(url, json=job.to_json(), headers=_JSON) as resp:
                    await resp.read()
                    code = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("node %s: job %s -> %s on node %s at %s failed: %r", me, job.job_type, service, me, url.authority, exc)
            return 502, {"error": f"{service} on node {me} failed: {type(exc).__name__}", "worker_id": me}
        finally:
            self.node.active_requests -= 1
        log.info("node %s: job %s -> %s on node %s at %s: %d", me, job.job_type, service, me, url.authority, code)
        if 200 <= code < 300:
            return 200, {
                "worker_id": me, "status": "accepted", "job_type": job.job_type, "service": service, "service_status": code,
            }
        return 502, {"error": f"{service} answered {code}", "worker_id": me, "service_status": code}


async def _read_job(request: web.Request) -> Job | web.Response:
    try:
        doc = await request.json()
    except ValueError as exc:
        return _error(400, f"body is not JSON: {exc}")
    try:
        return parse_job(doc)
    except ValueError as exc:
        return _error(400, str(exc))


def _suffix(request: web.Request) -> tuple[str, str]:
    """The still-encoded path after ``/api/service/{service}`` (at least ``/``) and the raw query."""
    parts = request.rel_url.raw_path.split("/", 4)
    suffix = "/" + parts[4] if len(parts) == 5 else "/"
    return suffix, request.rel_url.raw_query_string


GATEWAY_KEY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)


def add_routes(app: web.Application, node: Node) -> Gateway:
    """Register the gateway's routes and its session's lifetime on ``app``."""
    gateway = Gateway(node)
    app[GATEWAY_KEY] = gateway
    app.cleanup_ctx.append(gateway.lifecycle)
    app.router.add_route("*", "/api/service/{service}", gateway.handle_service)
    app.router.add_route("*", "/api/service/{service}/{path:.*}", gateway.handle_service)
    app.router.add_post("/api/coordinator/broadcast-job", gateway.handle_broadcast)
    app.router.add_post(WORKER_JOB_PATH, gateway.handle_job)
    return gateway
