"""Who may do what on a node's HTTP port (DESIGN "HTTP: one port, two audiences").

Every request passes these aiohttp middlewares, outermost first:

0. **relayed**: a request that reached a relayed node through its relay
   arrives on a connection the node itself opened from loopback (the splice
   of ``p2p.relay_client``); its ``remote`` becomes the address the relay saw,
   and never a loopback one (the relay's host is not ours), so nothing below
   mistakes a stranger on the relay for this host's operator.
1. **errors**: any refusal aiohttp raises (404, 405, 413 body too large...)
   becomes ``{"error": ...}`` JSON; a JSON body nested too deeply for the
   parser becomes a 400; a bug of ours becomes a logged 500 with a JSON body.
   Errors found by aiohttp's HTTP parser before any handler runs (an
   over-long request line, an over-long or too many headers, garbage) never
   reach a middleware: :class:`GuardedRunner` answers them with JSON (414,
   431 or 400) and logs one line, not a traceback.
2. **routes**: a request carrying ``X-Rmap2p-Route`` claims to come from a
   peer's gateway; it must carry a valid route signature from a current
   member (services/route_auth.py), else 403, counted per reason.
3. **coordinator**: ``/api/service/coordinator/…`` reaches this or another
   node's own HTTP port (the in-daemon coordinator service's port *is* the
   HTTP port) from the loopback address. Only the read-only admin views and
   job broadcast go through; anything else is 403 before it is forwarded.
4. **clients**: per-client rate limits (token id, else remote address; peers
   and anonymous loopback callers are not limited), then, in a pool with a
   keyring, a bearer token (p2p/tokens.py) for ``/api/service/…``,
   ``/api/coordinator/broadcast-job`` and ``/api/worker/job`` unless the
   request is a verified peer's or comes from loopback (this host's own
   services calling the overlay, and gateway self-forwards whose entry
   gateway already checked the token).
5. **operator**: leave, key management and any other state-changing admin
   call only from loopback without forwarding headers, or with the node's
   operator token (rmap2p/operator.py) in ``X-Rmap2p-Operator``.
6. **JSON bodies**: the endpoints that parse JSON get it checked first:
   at most ``client_max_size`` bytes, valid JSON, nested at most
   ``max_json_depth`` levels.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
import math
import socket
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web, web_protocol
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from allocator.scoring import canonical_service
from p2p.keyring import Keyring
from p2p.tokens import Token, TokenError, derive_token_key, verify_token
from rmap2p import operator
from rmap2p.ratelimit import RateLimit, RateLimiter
from services.route_auth import HOPS_HEADER, ROUTE_HEADER, WINDOW, RouteVerifier
from services.routing import HOLD_FOR

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_BODY = 1024 * 1024
MAX_JSON_DEPTH = 64
LOG_EVERY = 10.0
"""Seconds between two log lines about the same kind of refusal (floods stay readable)."""

COORDINATOR_READ_ONLY = frozenset(
    {"/health", "/api/admin/workers", "/api/admin/services", "/api/admin/gaps", "/api/admin/leaders", "/api/admin/stats"}
)
"""What ``/api/service/coordinator/…`` may reach with GET or HEAD: the read-only admin views."""
COORDINATOR_POST = frozenset({"/api/coordinator/broadcast-job"})
CLIENT_PATHS = ("/api/coordinator/broadcast-job", "/api/worker/job")
"""Besides ``/api/service/…``: what needs a client token in a pool with a keyring."""
OPERATOR_PATHS = frozenset({"/api/admin/leave", "/api/admin/keys"})
"""Operator-only with any method; every non-GET under ``/api/admin/`` is too."""
JSON_BODY_PATHS = frozenset({"/api/admin/keys", "/api/coordinator/broadcast-job", "/api/worker/job"})


@dataclass(frozen=True, slots=True)
class HttpPolicy:
    """Limits of a node's HTTP port."""

    rate_limit: RateLimit = field(default_factory=RateLimit)
    """Per client; ``RMAP2P_RATE_LIMIT=RATE[/BURST]`` in the daemon's environment (``off`` disables)."""
    route_window: float = WINDOW
    """Seconds a signed route stays fresh, either side of this node's clock."""
    max_body: int = MAX_BODY
    """Bytes of a request body this node reads itself (``/api/service`` bodies stream through)."""
    max_json_depth: int = MAX_JSON_DEPTH
    gateway_hold: float = HOLD_FOR
    """Seconds the gateway holds a request for a service with no reachable runner (services.routing,
    "Holding a request"); ``RMAP2P_GATEWAY_HOLD`` in the daemon's environment, 0 answers at once."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> HttpPolicy:
        text = env.get("RMAP2P_RATE_LIMIT", "").strip()
        policy = cls(rate_limit=RateLimit.parse(text)) if text else cls()
        hold = env.get("RMAP2P_GATEWAY_HOLD", "").strip()
        return dataclasses.replace(policy, gateway_hold=parse_hold(hold)) if hold else policy


MAX_GATEWAY_HOLD = 300.0


def parse_hold(text: str) -> float:
    """``RMAP2P_GATEWAY_HOLD``: seconds, 0 to ``MAX_GATEWAY_HOLD``; ValueError says what is wrong."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"RMAP2P_GATEWAY_HOLD must be a number of seconds, not {text!r}") from None
    if not 0.0 <= value <= MAX_GATEWAY_HOLD:  # also refuses nan and inf
        raise ValueError(f"RMAP2P_GATEWAY_HOLD must be between 0 and {MAX_GATEWAY_HOLD:g} seconds, not {text!r}")
    return value


@dataclass(slots=True)
class GuardStats:
    """Refusals by kind, for ``/api/admin/stats`` (``http``)."""

    route_refused: dict[str, int] = field(default_factory=dict)
    routes_accepted: int = 0
    token_refused: int = 0
    rate_limited: int = 0
    operator_refused: int = 0
    coordinator_refused: int = 0
    bad_requests: int = 0
    """Refused by aiohttp's parser or ours: malformed HTTP, over-long lines, bad JSON."""

    def to_json(self) -> dict[str, Any]:
        return {
            "route_refused": dict(sorted(self.route_refused.items())),
            "route_refused_total": sum(self.route_refused.values()),
            "routes_accepted": self.routes_accepted,
            "token_refused": self.token_refused,
            "rate_limited": self.rate_limited,
            "operator_refused": self.operator_refused,
            "coordinator_refused": self.coordinator_refused,
            "bad_requests": self.bad_requests,
        }


RELAYED_LOCAL = "relay-host"
"""``remote`` of a request a relay carried from a client on the relay's own host: not loopback, not ours."""


class NodeLike(Protocol):
    """What the guard reads from the daemon's Node (rmap2p/daemon.py)."""

    @property
    def machine(self) -> Any: ...

    @property
    def keyring(self) -> Keyring | None: ...

    @property
    def http_addr(self) -> tuple[str, int] | None: ...

    @property
    def gossip_addr(self) -> tuple[str, int] | None: ...


def is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        addr = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return bool((mapped or addr).is_loopback)


def _can_bind(host: str) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
    except OSError:
        return False
    return True


def is_operator_action(method: str, path: str) -> bool:
    if path in OPERATOR_PATHS:
        return True
    return path.startswith("/api/admin/") and method not in ("GET", "HEAD", "OPTIONS")


def coordinator_suffix(raw_path: str) -> str | None:
    """The raw path after ``/api/service/coordinator`` (service name in any case or encoding),
    or None when ``raw_path`` is not for the coordinator service."""
    path = raw_path.split("?", 1)[0]
    parts = path.split("/", 4)
    if len(parts) < 4 or parts[1] != "api" or parts[2] != "service":
        return None
    if canonical_service(urllib.parse.unquote(parts[3])) != "coordinator":
        return None
    return "/" + parts[4] if len(parts) == 5 else "/"


def coordinator_allows(method: str, suffix: str) -> bool:
    """Exact matches only: ``/api/admin/%6Ceave`` or ``/a/../leave`` must not slip through."""
    if method in ("GET", "HEAD"):
        return suffix in COORDINATOR_READ_ONLY
    return method == "POST" and suffix in COORDINATOR_POST


def needs_client_token(path: str) -> bool:
    return path.startswith("/api/service/") or path == "/api/service" or path in CLIENT_PATHS


def json_depth(doc: object, limit: int) -> int:
    """Nesting depth of a parsed JSON document, counting stops once past ``limit`` (iterative)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(doc, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("Authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def error(status: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status, headers=headers)


class Guard:
    """The middlewares of one node's HTTP app, their state (replay cache, buckets) and counters."""

    def __init__(
        self,
        node: NodeLike,
        policy: HttpPolicy,
        operator_token: str | None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self.policy = policy
        self.operator_token = operator_token
        self.stats = GuardStats()
        self._clock = clock
        self._monotonic = monotonic
        self._limiter = RateLimiter(policy.rate_limit)
        self._verifier: RouteVerifier | None = None
        self._token_keys: dict[bytes, bytes] = {}
        self._last_log: dict[str, float] = {}
        self._own_addresses: dict[str, bool] = {}

    @property
    def middlewares(self) -> list[Any]:
        return [self.relayed, self.errors, self.routes, self.coordinator, self.clients, self.operator, self.json_bodies]

    @web.middleware
    async def relayed(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        peers = getattr(self.node, "relayed_http_peers", None)
        if not peers:
            return await handler(request)
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        if not isinstance(peer, tuple) or len(peer) < 2:
            return await handler(request)
        seen = peers.get((str(peer[0]), int(peer[1])))
        if seen is None:
            return await handler(request)
        remote = seen[0]
        if is_loopback(remote) or self.from_this_host(remote):
            # A client on the relay's own host: no address of ours, whatever it looks like here.
            remote = RELAYED_LOCAL
        return await handler(request.clone(remote=remote))

    # ------------------------------------------------------------ helpers

    def _me(self) -> str:
        machine = self.node.machine
        return machine.id if machine is not None else "?"

    def _public_key_of(self, node_id: str) -> bytes | None:
        machine = self.node.machine
        if machine is None:
            return None
        status = machine.status_of(node_id)
        record = machine.alive_record(node_id)
        if status is None or status.is_down or record is None:
            return None
        return bytes(record.public_key)

    def _route_verifier(self) -> RouteVerifier:
        if self._verifier is None:
            self._verifier = RouteVerifier(self._me(), self._public_key_of, window=self.policy.route_window)
        return self._verifier

    def _keys(self) -> list[bytes]:
        ring = self.node.keyring
        current = ring.list() if ring is not None else []
        if set(self._token_keys) != set(current):
            self._token_keys = {k: self._token_keys.get(k) or derive_token_key(k) for k in current}
        return [self._token_keys[k] for k in current]

    def _log_limited(self, kind: str, level: int, msg: str, *args: object) -> None:
        now = self._monotonic()
        if now - self._last_log.get(kind, -math.inf) >= LOG_EVERY:
            self._last_log[kind] = now
            log.log(level, msg, *args)

    def from_this_host(self, remote: str | None) -> bool:
        """Loopback, or one of this node's own addresses (a service on this host calling the gateway
        at the address the node binds). Linux drops packets from outside that claim a local source
        address, and a TCP handshake cannot be completed with a forged one."""
        if is_loopback(remote):
            return True
        if remote is None or remote in ("0.0.0.0", "::", ""):
            return False
        own = {a[0] for a in (self.node.http_addr, self.node.gossip_addr) if a is not None}
        # An --advertise address may be a NAT's, not ours: only an address this host can bind counts.
        return remote in own and self._bindable(remote)

    def _bindable(self, host: str) -> bool:
        known = self._own_addresses.get(host)
        if known is None:
            known = _can_bind(host)
            if len(self._own_addresses) < 16:
                self._own_addresses[host] = known
        return known

    def client_token(self, request: web.Request) -> Token | str | None:
        """The verified token, the reason a presented one is refused, or None when none came."""
        text = bearer(request.headers)
        if text is None:
            return None
        try:
            return verify_token(text, self._keys(), self._clock())
        except TokenError as exc:
            return str(exc)

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """``app.on_response_prepare``: a plain-text error aiohttp raised outside the middlewares
        (an ``Expect`` header it does not know, before any handler) goes out as JSON too."""
        if not isinstance(response, web.HTTPException) or response.status < 400:
            return
        if (response.content_type or "").startswith("application/json"):
            return
        body = json.dumps({"error": response.text or response.reason}).encode()
        response.body = body
        response.headers["Content-Type"] = "application/json; charset=utf-8"
        if "Content-Length" in response.headers:
            response.headers["Content-Length"] = str(len(body))

    # ------------------------------------------------------------ middlewares

    @web.middleware
    async def errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if exc.status == 413:
                self.stats.bad_requests += 1
            keep = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
            return error(exc.status, exc.reason if exc.text is None or exc.text.startswith(f"{exc.status}:") else exc.text,
                         headers=keep, path=request.path)
        except RecursionError:
            self.stats.bad_requests += 1
            return error(400, "JSON nested too deeply", path=request.path)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception("node %s: internal error on %s %s", self._me(), request.method, request.path)
            return error(500, "internal error (logged on the node)")

    @web.middleware
    async def routes(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if ROUTE_HEADER not in request.headers:
            return await handler(request)
        check = self._route_verifier().check(request.method, request.raw_path, request.headers, self._clock())
        if not check.ok:
            self.stats.route_refused[check.reason] = self.stats.route_refused.get(check.reason, 0) + 1
            hint = " (do the hosts' clocks differ? keep them on NTP)" if check.reason == "stale" else ""
            self._log_limited(
                "route", logging.WARNING, "node %s: refused a routed %s %s from %s: %s%s (counted in /api/admin/stats)",
                self._me(), request.method, request.path[:200], request.remote, check.reason, hint,
            )
            return error(403, f"routed request refused: {check.reason}", reason=check.reason)
        self.stats.routes_accepted += 1
        request["rmap2p_peer"] = check.signer
        return await handler(request)

    @web.middleware
    async def coordinator(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # Both forms: the raw path is what the gateway forwards, the normalised one what the router
        # matched (``/api/service/x/../coordinator/…`` is the coordinator's to the router).
        suffixes = [s for s in (coordinator_suffix(request.raw_path), coordinator_suffix(request.path)) if s is not None]
        if any(not coordinator_allows(request.method, s) for s in suffixes):
            self.stats.coordinator_refused += 1
            self._log_limited(
                "coordinator", logging.WARNING, "node %s: refused %s %s from %s: not a read-only coordinator view",
                self._me(), request.method, request.path[:200], request.remote,
            )
            return error(
                403, "the coordinator service forwards only the read-only admin views "
                f"(GET {', '.join(sorted(COORDINATOR_READ_ONLY))}) and POST /api/coordinator/broadcast-job",
                service="coordinator",
            )
        return await handler(request)

    @web.middleware
    async def clients(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if "rmap2p_peer" in request:
            return await handler(request)
        token = self.client_token(request) if self.node.keyring is not None else None
        local = self.from_this_host(request.remote)
        if isinstance(token, Token):
            client: str | None = f"token:{token.token_id}"
        else:
            client = None if local else f"ip:{request.remote}"
        if client is not None:
            wait = self._limiter.take(client, self._monotonic())
            if wait > 0:
                self.stats.rate_limited += 1
                self._log_limited("rate", logging.INFO, "node %s: rate limit for %s (429)", self._me(), client)
                retry = max(1, math.ceil(wait))
                return error(429, f"rate limit: retry in {retry} s", headers={"Retry-After": str(retry)})
        if self.node.keyring is not None and not local and needs_client_token(request.path) and not isinstance(token, Token):
            self.stats.token_refused += 1
            why = token if isinstance(token, str) else "no token (send Authorization: Bearer <token from `rmap2p tokens create`>)"
            self._log_limited("token", logging.INFO, "node %s: client %s refused: %s", self._me(), request.remote, why)
            return error(401, f"this pool requires a client token: {why}", headers={"WWW-Authenticate": 'Bearer realm="rmap2p"'})
        if isinstance(token, Token):
            request["rmap2p_token"] = token.token_id
        return await handler(request)

    @web.middleware
    async def operator(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not is_operator_action(request.method, request.path):
            return await handler(request)
        presented = request.headers.get(operator.HEADER)
        if self.operator_token is not None and operator.matches(presented, self.operator_token):
            return await handler(request)
        forwarded = HOPS_HEADER in request.headers or ROUTE_HEADER in request.headers
        if is_loopback(request.remote) and not forwarded:
            return await handler(request)
        self.stats.operator_refused += 1
        self._log_limited(
            "operator", logging.WARNING, "node %s: refused operator action %s %s from %s%s", self._me(),
            request.method, request.path, request.remote, " (forwarded by a gateway)" if forwarded else "",
        )
        why = "it was forwarded by a gateway" if forwarded else "it did not come from this node's host"
        if presented is not None:
            why += " and its operator token is wrong"
        return error(
            403, f"operator action refused: {why}. Run it on the node's host, or send the node's operator "
            f"token ({operator.TOKEN_FILE} in its data dir) in {operator.HEADER}",
        )

    @web.middleware
    async def json_bodies(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "POST" or request.path not in JSON_BODY_PATHS:
            return await handler(request)
        raw = await request.read()  # cached: the handler's request.json() reads the same bytes
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            self.stats.bad_requests += 1
            what = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            return error(400, f"body is not JSON: {what}")
        if json_depth(doc, self.policy.max_json_depth) > self.policy.max_json_depth:
            self.stats.bad_requests += 1
            return error(400, f"JSON body nested deeper than {self.policy.max_json_depth} levels")
        return await handler(request)


# ---------------------------------------------------------------- parser errors


def parser_error(exc: BaseException | None, message: str | None) -> tuple[int, str]:
    """The status and JSON message for an error of aiohttp's HTTP parser (always a 400 there).

    An over-long line is the URL (414) when it looks like a request target
    (``/…``, ``http…``), else a header (431): aiohttp's LineTooLong carries
    only the line's first bytes.
    """
    text = (message or (str(exc) if exc else "") or "malformed HTTP request").strip()
    if isinstance(exc, LineTooLong):
        line = exc.args[0] if exc.args else b""
        head = bytes(line[:8]) if isinstance(line, (bytes, bytearray)) else str(line)[:8].encode(errors="replace")
        if head.startswith((b"/", b"http", b"*")):
            return 414, f"request line (URL) too long: {text}"
        return 431, f"request header too long: {text}"
    if "too many headers" in text.lower():
        return 431, f"too many request headers: {text}"
    return 400, f"malformed HTTP request: {text}"


class _JsonErrorHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler, answering parser errors with JSON and one log line."""

    def __init__(self, manager: web.Server, stats: GuardStats, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard_stats = stats

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError) or status < 500:
            status, text = parser_error(exc, message)
            self._guard_stats.bad_requests += 1
            log.info("HTTP %d to %s: %s", status, request.remote, text[:300])
        elif isinstance(exc, ConnectionError):
            # The client went away mid-request (e.g. while we read its body): nothing to answer.
            log.debug("client %s went away: %s", request.remote, exc)
            status, text = 400, "connection lost"
        else:
            log.error("internal error handling a request from %s", request.remote, exc_info=exc)
            text = "internal error (logged on the node)"
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send the error")
        resp = web.json_response({"error": text}, status=status)
        resp.force_close()
        return resp


class _JsonErrorServer(web.Server):
    def __init__(self, plain: web.Server, stats: GuardStats) -> None:
        # aiohttp has no public hook for parser errors: rebuild its server with our handler class.
        super().__init__(
            plain.request_handler, request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation, loop=plain._loop, **plain._kwargs,
        )
        self._guard_stats = stats

    def __call__(self) -> web_protocol.RequestHandler:
        return _JsonErrorHandler(self, self._guard_stats, loop=self._loop, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer HTTP parser errors with JSON (see module docstring)."""

    def __init__(self, app: web.Application, stats: GuardStats, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._guard_stats = stats

    async def _make_server(self) -> web.Server:
        return _JsonErrorServer(await super()._make_server(), self._guard_stats)
