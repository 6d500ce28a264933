"""How a router picks the node for a request, and what it learns first hand: pure, no I/O.

The gateway (``services.gateway``) does the proxying; this module holds the
header formats, the candidate order and the router's first-hand book, so each
can be tested as a function.

Routing
-------
``/api/service/{service}/{path}`` (any method; ``service`` a catalog name or an
alias such as ``ocr``) reaches whichever gateway the client knows. That
gateway, the *router*, orders the candidates and tries them in turn:

1. candidates are the alive or suspect members that list the service and
   advertise a port for it; those reporting it ``healthy`` if there are any
   that this router has not failed to reach in the last ``UNREACHABLE_FOR``
   seconds, otherwise all of them, the ones still starting (or unhealthy)
   too: a request that may work beats a certain 503;
2. each candidate's gossiped load is replaced by what the router saw first
   hand, if less than ``FIRST_HAND_MAX_AGE`` old (DESIGN "Load travels
   differently": gossip is a hint, first-hand figures the truth), and
   ``allocator.scoring.rank`` orders them by the seed-003 score with
   ``in_flight`` = this router's own requests in flight per target and a
   ``random.Random`` seeded from the node id for the tie-break; a member
   reached through a relay (its metadata names ``relays``, issue 16) scores
   ``allocator.scoring.RELAYED`` points less for the extra hop, and is
   forwarded to at its advertised ``http``, the relay's allocation, like any
   other member;
3. that order is then stably partitioned: alive members first, suspect ones
   next, members this router failed to connect to in the last
   ``UNREACHABLE_FOR`` seconds last. A suspect is usually alive, so it stays
   a candidate, but a dead one would cost a connect timeout per request until
   SWIM declares it; the first-hand connect failure is fresher than gossip.

The router tries at most ``MAX_ATTEMPTS`` candidates per round. It moves on
only when nothing reached a service (the connect failed, or the target
gateway said ``X-Rmap2p-Unserved``: it could not reach its own service), or
when the connection broke before the first response byte and the request is
``retry_safe`` (an idempotent method, or a service without side effects),
and only while the request body can still be replayed (``ReplayableBody``).
Any other failure is a 502 listing the attempts; once the response has
started, an error aborts the client connection, because a truncated body
must not look complete.

Holding a request
-----------------
A refused connect to the only runner, or no runner at all in the view, is
what a client sees for a few seconds after a runner's node dies: until SWIM
declares it dead, then until the allocator's new runner is healthy. The
router does not pass that on at once. While ``worth_holding`` (some up member
runs the service or the allocation on this view gives it to one, or this
router reached a runner of it moments ago) it holds the request for at most
``hold`` seconds (``HOLD_FOR`` by default; the daemon reads
``RMAP2P_GATEWAY_HOLD``), looks again at every view change and every
``HOLD_POLL`` seconds, and tries a runner that already failed this request
again after ``HOLD_RETRY`` seconds, or at once when its incarnation changed
(it restarted). A runner reported ``starting`` (a new runner loading its
model answers 503) is tried only in the last ``HOLD_RETRY`` seconds of the
hold: until then it may report healthy. Only
then does it answer 503 with ``Retry-After``. A service
that nothing in the pool can run is answered 503 at once. At most
``MAX_HELD`` requests are held at a time; beyond that the answer is
immediate. This is a per-router decision from first-hand evidence, never a
membership verdict: the member stays alive in every view until SWIM says
otherwise.

First-hand load
---------------
``active`` in the load header is the serving node's count *including* the
request being answered and every other request it is serving, some of them
from this router. The router already adds its own in-flight requests in
``rank``, so it records ``active − in_flight[node]`` (what the others send
there) and lets ``in_flight`` add its own current count back at the next
decision: nothing is counted twice.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from multidict import CIMultiDict

from allocator.allocate import allocate
from allocator.scoring import canonical_service, rank
from allocator.view import NodeView
from membership import Load, MemberView, RemoteProtocolError

HOPS_HEADER = "X-Rmap2p-Hops"
ROUTE_HEADER = "X-Rmap2p-Route"
LOAD_HEADER = "X-Rmap2p-Load"
NODE_HEADER = "X-Rmap2p-Node"
UNSERVED_HEADER = "X-Rmap2p-Unserved"
ATTEMPTS_HEADER = "X-Rmap2p-Attempts"
OPERATOR_HEADER = "X-Rmap2p-Operator"
"""Carries a node's operator token (rmap2p/operator.py); a gateway never forwards it."""

HOP_LIMIT = 4
"""A request arriving with this many gateway-to-gateway forwards or more gets 508. One is the
normal case (router → serving node); a re-route after a hand-over makes two."""
FIRST_HAND_MAX_AGE = 5.0
"""Load seen in a response header overrides gossip for this long (the sampler runs every 2 s)."""
UNREACHABLE_FOR = 5.0
"""After a failed connect, the node is tried last for this long (or until it answers again)."""
HOLD_FOR = 15.0
"""Default longest wait, in seconds, for a runner when a service has none the router can reach: one
failure detection (about 5 s with ``--profile local``, about 10 s on a LAN) plus a restart."""
HOLD_POLL = 0.25
"""A held request looks at the view at least this often (and at every view change)."""
HOLD_RETRY = 1.0
"""A runner that failed a held request is tried again after this long (at once if it restarted)."""
MAX_HELD = 1024
"""Requests held at a time per gateway; more are answered at once."""
RETRY_AFTER = 5
"""Seconds in the ``Retry-After`` of a 503 given after holding."""
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
"""RFC 9110 §9.2.2: repeating one of these has the effect of sending it once."""
SIDE_EFFECT_FREE = frozenset({"rag-embeddings", "ner-extraction", "document-processing", "vision-ocr"})
"""Services whose every endpoint computes an answer from the request alone (no state, no job is
queued): a POST to them may be sent again. LLM calls are left out (costly, and not repeatable
answers); storage services change state."""
MAX_BOOK_ENTRIES = 4096
"""Bound on per-node first-hand records (one per member; stale ones go first)."""
HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
        "te", "trailer", "trailers", "transfer-encoding", "upgrade",
    }
)
"""RFC 9110 §7.6.1: meaningful for one connection only, never forwarded."""

# Set by the forwarder itself, never copied from the client: Host and our own routing headers;
# Expect, because this gateway already answered the client's 100-continue.
WILDCARD_HOSTS = ("0.0.0.0", "", "::")


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

    def recently_failed(v: NodeView) -> bool:
        failed_at = unreachable.get(v.node_id)
        return failed_at is not None and 0.0 <= now - failed_at < UNREACHABLE_FOR

    running = [v for v in views if v.is_alive and name in v.services]
    healthy = [v for v in running if name in v.healthy_services]
    # A runner that says healthy but just failed a connect is worth less than one still starting:
    # the starting ones stay candidates unless a healthy runner has not failed.
    pool = [
        apply_first_hand(v, first_hand.get(v.node_id), now)
        for v in (healthy if any(not recently_failed(v) for v in healthy) else running)
    ]
    ranked = rank(pool, name, required_model, in_flight, rng)
    return sorted(ranked, key=lambda v: (recently_failed(v), v.status != "alive"))  # stable: score order within a group


def retry_safe(method: str, service: str) -> bool:
    """May a request whose connection broke before any response byte be sent to another runner?"""
    return method.upper() in IDEMPOTENT_METHODS or canonical_service(service) in SIDE_EFFECT_FREE


def worth_holding(views: Iterable[NodeView], service: str, recently_reached: bool) -> bool:
    """Is a runner of ``service`` likely to appear soon (see "Holding a request")?

    True when an up member lists the service (it may be starting, or dead and
    not yet declared), when ``allocate`` on this view gives it to an up member
    (a runner is about to start), or when ``recently_reached`` says this router
    had a runner of it moments ago (its node may be restarting).
    """
    if recently_reached:
        return True
    name = canonical_service(service)
    up = [v for v in views if v.is_alive]
    if any(name in v.services for v in up):
        return True
    return any(name in row for row in allocate(up).values())


@dataclass(slots=True)
class RouterBook:
    """What this router knows first hand about each target: requests in flight, reported load, failed connects."""

    in_flight: dict[str, int] = field(default_factory=dict)
    first_hand: dict[str, FirstHand] = field(default_factory=dict)
    unreachable: dict[str, float] = field(default_factory=dict)
    reached: dict[str, float] = field(default_factory=dict)
    """service -> loop time this router last had a runner of it (answered, or refused: it was there)."""
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

    def saw_service(self, service: str, now: float) -> None:
        # Bounded by the catalog: the gateway calls it for catalog services only.
        self.reached[service] = now

    def reached_within(self, service: str, now: float, window: float) -> bool:
        at = self.reached.get(service)
        return at is not None and 0.0 <= now - at <= window

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


def split_host_port(text: str) -> tuple[str, int] | None:
    """``host:port`` (IPv6 with or without brackets) from gossiped metadata; None when unusable."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    value = int(port)
    if not 0 < value < 65536:
        return None
    return host.strip("[]"), value


@dataclass(frozen=True, slots=True)
class Serving:
    """A member that advertises ``service``: its service port and, as this node reaches it, its host
    and HTTP port (loopback for this node itself)."""

    member: MemberView
    host: str
    http_port: int
    service_port: int
    is_self: bool


def serving_members(
    members: Iterable[MemberView], service: str, me: str, own_host: str | None = None
) -> list[Serving]:
    """The up members that advertise a port for ``service`` and a usable HTTP address.

    ``own_host`` is where this node's services listen (its HTTP bind host). It
    matters for a relayed node, whose advertised ``http`` is an allocation on
    its relay: its own services are not there."""
    out = []
    for m in members:
        if m.status.is_down:
            continue
        port = m.meta.port_of(service)
        http = split_host_port(m.meta.http)
        if port is None or http is None:
            continue
        if m.node == me:
            host = connect_host(own_host if own_host is not None else http[0])
        else:
            # A wildcard HTTP host is no address for others; the gossip host is where that node is.
            host = m.addr[0] if http[0] in WILDCARD_HOSTS else http[0]
        out.append(Serving(m, host, http[1], port, m.node == me))
    return out


def connect_host(host: str) -> str:
    return "127.0.0.1" if host in WILDCARD_HOSTS else host

