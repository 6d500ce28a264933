"""The HTTP gateway every node serves: any request for any service, sent to the best node (seed 003).

``/api/service/{service}/{path}`` (any method; ``service`` a catalog name or
an alias such as ``ocr``) reaches whichever gateway the client knows. That
gateway, the *router*, orders the candidates (``services.routing``: score,
first-hand load, recent connect failures) and tries them in turn, at most
``MAX_ATTEMPTS`` per round. It moves on only when nothing reached a service
(the connect failed, or the target gateway said ``X-Rmap2p-Unserved``: it
could not reach its own service), or the connection broke before any
response byte and the request is safe to repeat (``routing.retry_safe``),
and only while the request body can still be replayed (``ReplayableBody``).
When no runner could be reached but one may appear, the request is held for
at most ``hold`` seconds (``routing``, "Holding a request") and answered 503
with ``Retry-After`` only after that. Any other failure is a 502 listing the
attempts; once the response has started, an error aborts the client
connection, because a truncated body must not look complete. A request in flight to another node
ends when the pool declares that node dead or gone (``services.member_watch``):
a dead host sends no reset, and the wait would otherwise last ``READ_TIMEOUT``.
Job broadcast is ``services.jobs``.

Hops
----
A router does not connect to another node's service port: it sends the
request to that node's gateway with ``X-Rmap2p-Route: <node id>`` and
``X-Rmap2p-Hops: n + 1``. A gateway that finds its own id in the route
header serves the request from its local service port, and routes it afresh
only if it no longer runs the service (a hand-over the router had not heard
of yet). Going through the serving node's gateway is what lets that node
count the request in its ``RequestCounter`` (the figure its acks and
gossip carry) and answer with its load in ``X-Rmap2p-Load: cpu,mem,gpu,active``
and ``X-Rmap2p-Node: <id>``; the cost is one loopback hop on the serving
host. When the router picks itself it calls its own service port directly.
A request that arrives with ``HOP_LIMIT`` hops or more is refused with 508,
so gateways with diverging views cannot pass a request around forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections import ChainMap
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from allocator.catalog import by_name
from allocator.gaps import gaps
from allocator.members import node_view
from allocator.scoring import canonical_service, detect_required_model
from allocator.view import NodeView
from membership import Load, MemberEvent, MemberView
from services.handle import PoolHandle
from services.jobs import WORKER_JOB_PATH, JobDesk
from services.log_limits import LogLimiter, suppressed_note
from services.member_watch import MemberWatch
from services.request_metrics import RequestMetrics, outcome_of, request_metrics
from services.responses import json_error
from services.route_auth import SIGNATURE_HEADER, sign_route_headers
from services.routing import (
    ATTEMPTS_HEADER,
    HOLD_FOR,
    HOLD_POLL,
    HOLD_RETRY,
    HOP_LIMIT,
    HOPS_HEADER,
    LOAD_HEADER,
    MAX_HELD,
    NODE_HEADER,
    OPERATOR_HEADER,
    RETRY_AFTER,
    ROUTE_HEADER,
    UNSERVED_HEADER,
    FirstHand,
    RouterBook,
    connect_host,
    format_load,
    forward_headers,
    order_candidates,
    parse_hops,
    parse_load,
    retry_safe,
    serving_members,
    split_host_port,
    worth_holding,
)

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
CONNECT_TIMEOUT = 2.0
"""Seconds to wait for a TCP connect before trying the next node (a dead host on a LAN)."""
READ_TIMEOUT = 300.0
"""Seconds of silence tolerated from a service: LLM generation can be slow to start."""
REPLAY_LIMIT = 256 * 1024
"""Request body bytes kept so an attempt that reached no service can be replayed elsewhere."""
CONNECTION_LIMIT = 512

# Set by the forwarder itself, never copied from the client: Host and our own routing headers;
# Expect, because this gateway already answered the client's 100-continue.
_REQUEST_DROP = (
    "host", "expect", HOPS_HEADER.lower(), ROUTE_HEADER.lower(), SIGNATURE_HEADER.lower(), OPERATOR_HEADER.lower(),
)


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


@dataclass(slots=True)
class _Exchange:
    """What a running exchange has sent the client: its response once prepared."""

    started: web.StreamResponse | None = None


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

    def __init__(self, node: PoolHandle, hold: float = HOLD_FOR) -> None:
        if hold < 0:
            raise ValueError(f"hold must be >= 0 seconds, not {hold}")
        self.node = node
        self.hold = hold
        """Longest wait for a runner when none can be reached (services.routing, "Holding a request")."""
        self._held = 0
        self._holding: dict[str, tuple[float, bool]] = {}
        self._changed: asyncio.Event | None = None
        node.on_view_change(self._on_view_change)
        self.book = RouterBook()
        self.jobs = JobDesk(node, self._client)
        self._quiet = LogLimiter()
        self.metrics = RequestMetrics()
        self._session: aiohttp.ClientSession | None = None
        self._rng: random.Random | None = None
        self.watch = MemberWatch()

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
        self.node.on_view_change(self.watch.on_events)
        try:
            yield
        finally:
            await self._session.close()
            self._session = None

    def _me(self) -> str:
        return self.node.node_id

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("gateway session used outside the app's lifetime")
        return self._session

    # ------------------------------------------------------------ /api/service

    async def handle_service(self, request: web.Request) -> web.StreamResponse:
        """Route or serve one request; counted in ``metrics`` by service and outcome, whole stream timed."""
        started = time.monotonic()
        status: int | None = None
        try:
            response = await self._handle_service(request)
            status = response.status
            return response
        finally:  # an exception (client gone, stream aborted) leaves status None: "aborted"
            service = canonical_service(request.match_info["service"])
            if by_name(service) is not None:  # catalog services only: a client cannot grow the table
                self.metrics.observe(service, outcome_of(status), time.monotonic() - started)

    async def _handle_service(self, request: web.Request) -> web.StreamResponse:
        asked = request.match_info["service"]
        service = canonical_service(asked)
        me = self._me()
        if by_name(service) is None:
            return json_error(404, f"unknown service {asked!r}", service=asked)
        hops = parse_hops(request.headers.get(HOPS_HEADER))
        if hops is None:
            return json_error(400, f"malformed {HOPS_HEADER} header", service=service)
        if hops >= HOP_LIMIT:
            log.warning("node %s: %s %s refused: %d hops (limit %d), a routing loop?", me, service, request.path, hops, HOP_LIMIT)
            return json_error(508, f"hop limit {HOP_LIMIT} reached: the request went round the pool", service=service, hops=hops)
        if request.headers.get(ROUTE_HEADER) == me:
            port = self.node.meta.port_of(service)
            if port is not None:
                return await self._serve_routed(request, service, port, hops)
            log.info("node %s: %s %s was routed here but no longer runs here; routing afresh", me, service, request.path)
        return await self._route(request, service, hops)

    async def _route(self, request: web.Request, service: str, hops: int) -> web.StreamResponse:
        """Try the ranked runners; while none could be reached and one may appear, hold (routing's "Holding a request")."""
        me = self._me()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.hold
        body = ReplayableBody(request.content) if request.body_exists else None
        attempts: list[Attempt] = []
        tried: dict[tuple[str, int], float] = {}
        number = 0
        held = False
        try:
            while True:
                now = loop.time()
                members = self.node.members()
                views, targets = self._candidates(members, service)
                assert self._rng is not None
                ranked = order_candidates(
                    views, service, detect_required_model(service, request.match_info.get("path", "")),
                    self.book.in_flight, ChainMap({me: self._own_first_hand(now)}, self.book.first_hand),
                    self.book.unreachable, now, self._rng,
                )
                if ranked:
                    self.book.saw_service(service, now)
                # A runner that failed this request waits HOLD_RETRY; one that restarted since is new.
                due = [v for v in ranked if now - tried.get((v.node_id, v.incarnation), float("-inf")) >= HOLD_RETRY]
                if now < deadline - HOLD_RETRY:
                    # A runner still starting (a model loading answers 503) waits for the hold's last
                    # second: until then it may report healthy, or a failed runner come back. One
                    # reported unhealthy is tried at once, as before: it may never recover.
                    starting = {m.node for m in members if dict(m.meta.services).get(service) == "starting"}
                    due = [v for v in due if v.node_id not in starting]
                for view in due[:MAX_ATTEMPTS]:
                    number += 1
                    outcome = await self._attempt(request, service, targets[view.node_id], hops, body, number)
                    if isinstance(outcome, web.StreamResponse):
                        if attempts:
                            log.warning(
                                "node %s: %s %s answered by node %s after %s%s", me, service, request.path, view.node_id,
                                _describe(attempts[-MAX_ATTEMPTS:]),
                                f" (held {loop.time() - deadline + self.hold:.1f} s)" if held else "",
                            )
                        return outcome
                    attempts.append(outcome)
                    tried[(view.node_id, view.incarnation)] = loop.time()
                    if not outcome.retryable or (body is not None and not body.replayable):
                        log.warning("node %s: %s %s failed: %s", me, service, request.path, _describe(attempts[-MAX_ATTEMPTS:]))
                        return json_error(
                            502, f"no node could serve {service} ({len(attempts)} attempted)",
                            service=service, attempts=[a.to_json() for a in attempts[-MAX_ATTEMPTS:]],
                        )
                now = loop.time()
                if now >= deadline or not self._worth_holding(members, service, now):
                    break
                if not held:
                    if self._held >= MAX_HELD:
                        break
                    held = True
                    self._held += 1
                await self._view_change(min(HOLD_POLL, deadline - now))
        finally:
            if held:
                self._held -= 1
        return self._unavailable(request, service, members, attempts, held)

    def _worth_holding(self, members: list[MemberView], service: str, now: float) -> bool:
        # worth_holding may run the allocation over the whole view: once per service per HOLD_POLL,
        # however many requests are held (keys: catalog services only).
        cached = self._holding.get(service)
        if cached is not None and 0.0 <= now - cached[0] < HOLD_POLL:
            return cached[1]
        worth = worth_holding([node_view(m) for m in members], service, self.book.reached_within(service, now, self.hold))
        self._holding[service] = (now, worth)
        return worth

    def _unavailable(
        self, request: web.Request, service: str, members: list[MemberView], attempts: list[Attempt], held: bool
    ) -> web.StreamResponse:
        """The 503 after nothing could be reached: at once, or after holding (then with Retry-After)."""
        me = self._me()
        retry = {"Retry-After": str(RETRY_AFTER)} if held else None
        waited = f" after holding it {self.hold:g} s" if held else ""
        if attempts:
            log.warning("node %s: %s %s failed%s: %s", me, service, request.path, waited, _describe(attempts[-MAX_ATTEMPTS:]))
            return json_error(
                503, f"no node could serve {service}{waited} ({len(attempts)} attempted)", retry,
                service=service, attempts=[a.to_json() for a in attempts[-MAX_ATTEMPTS:]],
            )
        gap = next(e for e in gaps([node_view(m) for m in members])["gaps"] if e["service"] == service)
        quiet = self._quiet.allow(("unserved", service), asyncio.get_running_loop().time())
        if quiet is not None:
            log.warning(
                "node %s: %s %s: no alive node serves it (%s)%s%s",
                me, service, request.path, gap["status"], waited, suppressed_note(quiet),
            )
        return json_error(503, f"no alive node serves {service}", retry, service=service, gap=gap)

    async def _view_change(self, timeout: float) -> None:
        """Return at the next view change, or after ``timeout`` seconds."""
        if self._changed is None:
            self._changed = asyncio.Event()
        try:
            await asyncio.wait_for(self._changed.wait(), max(0.0, timeout))
        except TimeoutError:
            pass

    def _on_view_change(self, events: Sequence[MemberEvent]) -> None:
        # Wake every held request, then arm a fresh event for the next change.
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _candidates(self, members: list[MemberView], service: str) -> tuple[list[NodeView], dict[str, _Target]]:
        """Views of the members that advertise a port for ``service``, and where to send each one's requests."""
        views: list[NodeView] = []
        targets: dict[str, _Target] = {}
        for at in serving_members(members, service, self._me(), self.node.service_host):
            node = at.member.node
            # This node calls its own service port; another node's requests go to its gateway.
            targets[node] = _Target(node, at.host, at.service_port if at.is_self else at.http_port, at.is_self)
            views.append(node_view(at.member))
        return views, targets

    def _own_load(self) -> Load:
        return replace(self.node.load, active_requests=self.node.requests.active)

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
            # The target serves a routed request only if a current member signed it (services/route_auth.py).
            headers.update(sign_route_headers(self.node.identity, request.method, url.raw_path_qs, target.node, hops + 1, time.time()))
        self.book.sent(target.node)
        try:
            if target.is_self:
                return await self._exchange(request, service, target, url, headers, body, serve_here=True, attempt=number)
            return await self._exchange_watched(request, service, target, url, headers, body, number)
        finally:
            self.book.done(target.node)

    async def _exchange_watched(
        self, request: web.Request, service: str, target: _Target, url: URL, headers: CIMultiDict[str],
        body: ReplayableBody | None, number: int,
    ) -> web.StreamResponse | Attempt:
        """``_exchange`` with another node, ended as soon as the pool declares that node down
        (``services.member_watch``): a dead host sends no reset, and the wait would last ``READ_TIMEOUT``."""
        state = _Exchange()
        gone = self.watch.watch(target.node)
        exchange = asyncio.ensure_future(
            self._exchange(request, service, target, url, headers, body, serve_here=False, attempt=number, state=state)
        )
        try:
            waits: set[asyncio.Future[object]] = {exchange} | ({gone} if gone is not None else set())  # type: ignore[arg-type]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if exchange.done():
                return exchange.result()
        finally:
            self.watch.forget(target.node, gone)
            if not exchange.done():
                exchange.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await exchange
        assert gone is not None
        how = gone.result()
        self.book.saw_unreachable(target.node, asyncio.get_running_loop().time())
        log.warning(
            "node %s: %s %s -> node %s at %s: that node was declared %s while it answered",
            self._me(), service, request.path, target.node, target.where, how,
        )
        if state.started is not None:
            _abort(request)
            return state.started
        # It may have reached the service: not replayed elsewhere, the client decides.
        return Attempt(target.node, target.where, f"declared {how} while answering", False)

    async def _serve_routed(self, request: web.Request, service: str, port: int, hops: int) -> web.StreamResponse:
        """Serve a request another router sent here, from the local service port."""
        me = self._me()
        # Our services listen on our HTTP bind host; a relayed node's advertised http is on its relay.
        target = _Target(me, connect_host(self.node.service_host), port, True)
        suffix, query = _suffix(request)
        url = URL.build(scheme="http", host=target.host, port=port, path=suffix, query_string=query, encoded=True)
        headers = forward_headers(request.headers, drop=_REQUEST_DROP)
        headers[HOPS_HEADER] = str(hops)
        body = ReplayableBody(request.content, limit=0) if request.body_exists else None
        outcome = await self._exchange(request, service, target, url, headers, body, serve_here=True, attempt=0)
        if isinstance(outcome, web.StreamResponse):
            return outcome
        # A router holding a request retries every HOLD_RETRY seconds: one line per service and interval.
        quiet = self._quiet.allow(("routed-unreachable", service), asyncio.get_running_loop().time())
        if quiet is not None:
            log.warning(
                "node %s: %s %s (routed here by another node): local service at %s: %s%s",
                me, service, request.path, target.where, outcome.error, suppressed_note(quiet),
            )
        if outcome.retryable:
            # Nothing reached the service and we read nothing of the body: the router may try elsewhere.
            return json_error(
                503, f"{service} is not reachable on node {me}: {outcome.error}", {UNSERVED_HEADER: "1"}, service=service,
            )
        return json_error(502, f"{service} on node {me} failed: {outcome.error}", service=service)

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
        state: _Exchange | None = None,
    ) -> web.StreamResponse | Attempt:
        """Send the request to ``url`` and stream the answer back; an Attempt when no response was started.

        ``state.started`` is the client's response once it is prepared (for a caller that cancels this)."""
        me = self._me()
        loop = asyncio.get_running_loop()
        started: web.StreamResponse | None = None
        t0 = time.perf_counter()
        if serve_here:
            self.node.requests.begin()
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
                if state is not None:
                    state.started = response
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
                # First-hand evidence: membership probes the node now rather than in its turn.
                self.node.probe_soon(target.node)
            # The caller logs the outcome of the whole request once (it may still succeed elsewhere).
            log.debug("node %s: %s %s -> node %s at %s: cannot connect (%s)", me, service, request.path, target.node, target.where, exc)
            return Attempt(target.node, target.where, f"connect failed: {exc}", True)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            if started is not None:
                log.warning(
                    "node %s: %s %s -> node %s at %s broke after the response started: %r",
                    me, service, request.path, target.node, target.where, exc,
                )
                _abort(request)
                return started
            # The connection broke before any byte of an answer: the request may have reached the
            # service, so only a request that is safe to repeat goes to another runner. A break
            # (not a slow answer) is also first-hand evidence against the node, as a refused connect is.
            broke = isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError)
            if broke and not serve_here:
                self.book.saw_unreachable(target.node, loop.time())
                self.node.probe_soon(target.node)
            log.debug("node %s: %s %s -> node %s at %s failed: %r", me, service, request.path, target.node, target.where, exc)
            return Attempt(
                target.node, target.where, f"{type(exc).__name__}: {exc}", broke and retry_safe(request.method, service),
            )
        finally:
            if serve_here:
                self.node.requests.end()


def _describe(attempts: list[Attempt]) -> str:
    return "; ".join(f"node {a.node} at {a.target}: {a.error}" for a in attempts)


def _suffix(request: web.Request) -> tuple[str, str]:
    """The still-encoded path after ``/api/service/{service}`` (at least ``/``) and the raw query."""
    parts = request.rel_url.raw_path.split("/", 4)
    suffix = "/" + parts[4] if len(parts) == 5 else "/"
    return suffix, request.rel_url.raw_query_string


GATEWAY_KEY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)


def add_routes(app: web.Application, node: PoolHandle, hold: float = HOLD_FOR) -> Gateway:
    """Register the gateway's routes and its session's lifetime on ``app``; ``hold`` as in ``Gateway``."""
    gateway = Gateway(node, hold)
    gateway.metrics = request_metrics(app)
    app[GATEWAY_KEY] = gateway
    app.cleanup_ctx.append(gateway.lifecycle)
    app.router.add_route("*", "/api/service/{service}", gateway.handle_service)
    app.router.add_route("*", "/api/service/{service}/{path:.*}", gateway.handle_service)
    app.router.add_post("/api/coordinator/broadcast-job", gateway.jobs.handle_broadcast)
    app.router.add_post(WORKER_JOB_PATH, gateway.jobs.handle_job)
    return gateway
