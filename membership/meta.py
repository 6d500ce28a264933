"""Per-node metadata that rides on the signed alive message.

Metadata changes rarely (a service starts, a model loads), so gossiping it
to everyone is cheap; each change bumps the node's incarnation, which is the
metadata's version. Fast-changing load travels elsewhere (acks, response
headers); ``load`` here is only the coarse summary re-gossiped at most every
``load_gossip_interval`` seconds and only on a marked change.

Encoding is a msgpack array with fields in a fixed order; decoders accept
longer arrays and ignore what they do not know, so a newer node can add
trailing fields without breaking older ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from membership.errors import RemoteProtocolError

HEALTH_STATES = ("starting", "healthy", "unhealthy", "stopping")
REPLICATION_ROLES = ("", "primary", "replica")
"""A copy's role as its engine reports it; "" while unknown (not started, not answering)."""
MAX_REPLICATION_ENTRIES = 16
MAX_LOADING_ENTRIES = 32
"""Bound on services reported loading at once (the catalog has 14)."""
MAX_EPOCH = 2**40
MAX_RELAYS = 4
"""Relays one member may name (field 14): it keeps one or two, a few more during a move."""
MAX_RELAY_ADDR = 261
"""Longest relay listener "host:port" (field 13): a bracketed IPv6 literal or a DNS name and a port."""
MAX_NODE_ID = 64


@dataclass(frozen=True, slots=True)
class ReplicationClaim:
    """What a node says about its copy of a stateful service (``services.replication``).

    ``epoch`` is the history its data belongs to (0: no data), ``primary``
    that it is the primary of that epoch; ``role`` is what the engine reports
    now, for the admin view (it may lag the claim briefly).
    """

    service: str
    epoch: int = 0
    primary: bool = False
    role: str = ""

    def to_wire(self) -> list[object]:
        return [self.service, self.epoch, self.primary, self.role]

    @classmethod
    def from_wire(cls, raw: object) -> ReplicationClaim:
        if not isinstance(raw, list) or len(raw) < 4:
            raise RemoteProtocolError("replication claim: expected [service, epoch, primary, role]")
        service, epoch, primary, role = raw[:4]
        if not isinstance(service, str) or not 0 < len(service) <= 64:
            raise RemoteProtocolError("replication claim: service must be a name of 1 to 64 characters")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch < MAX_EPOCH:
            raise RemoteProtocolError("replication claim: epoch out of range")
        if not isinstance(primary, bool):
            raise RemoteProtocolError("replication claim: primary must be a boolean")
        if role not in REPLICATION_ROLES:
            raise RemoteProtocolError("replication claim: unknown role")
        return cls(service, epoch, primary, role)


@dataclass(frozen=True, slots=True)
class Load:
    """A load figure: CPU and memory in percent, GPU utilization in percent, requests in flight."""

    cpu_percent: int = 0
    memory_percent: int = 0
    gpu_utilization: int = 0
    active_requests: int = 0

    def to_wire(self) -> list[int]:
        return [self.cpu_percent, self.memory_percent, self.gpu_utilization, self.active_requests]

    @classmethod
    def from_wire(cls, raw: object) -> Load:
        if not isinstance(raw, (list, tuple)) or len(raw) < 4:
            raise RemoteProtocolError("load: expected an array of 4 integers")
        values = raw[:4]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise RemoteProtocolError("load: non-integer field")
        cpu, mem, gpu, active = values
        if not (0 <= cpu <= 100 and 0 <= mem <= 100 and 0 <= gpu <= 100 and 0 <= active < 2**31):
            raise RemoteProtocolError("load: value out of range")
        return cls(cpu, mem, gpu, active)

    def differs_markedly(self, other: Load, threshold: float) -> bool:
        """True when any figure moved by at least ``threshold`` points (requests count as points)."""
        return (
            abs(self.cpu_percent - other.cpu_percent) >= threshold
            or abs(self.gpu_utilization - other.gpu_utilization) >= threshold
            or abs(self.memory_percent - other.memory_percent) >= threshold
            or abs(self.active_requests - other.active_requests) >= max(1.0, threshold / 5)
        )


@dataclass(frozen=True, slots=True)
class NodeMeta:
    name: str = ""
    worker_type: str = "cpu"
    http: str = ""
    capabilities: tuple[str, ...] = ()
    services: tuple[tuple[str, str], ...] = ()
    """(service, health) pairs for what the node runs now."""
    loaded_models: tuple[str, ...] = ()
    specialization: str = ""
    load: Load = Load()
    edge_public: bool = False
    service_ports: tuple[tuple[str, int], ...] = ()
    """(service, port) where each running service listens, on the host of ``http``."""
    started_at: int = 0
    """Unix time the daemon started: when two daemons share an identity, the younger one yields."""
    replication: tuple[ReplicationClaim, ...] = ()
    """One claim per stateful service this node holds a copy of (``services.replication``)."""
    relay: str = ""
    """``host:port`` of this node's relay listener when it offers to carry unreachable members
    (an edge node, ``p2p.relay_server``); "" when it does not."""
    relays: tuple[str, ...] = ()
    """Node ids of the edges carrying this member, the one its address is allocated on first;
    empty: the member is reached directly (``rmap2p.relay_agent``)."""
    loading: tuple[tuple[str, int], ...] = ()
    """(service, percent 0-100) for services still loading their model whose runner can tell how far
    it got (``services.load_progress``); a starting service without a figure is not listed."""

    def encode(self) -> bytes:
        return msgpack.packb(
            [
                self.name,
                self.worker_type,
                self.http,
                list(self.capabilities),
                [list(s) for s in self.services],
                list(self.loaded_models),
                self.specialization,
                self.load.to_wire(),
                self.edge_public,
                [list(p) for p in self.service_ports],
                self.started_at,
                [c.to_wire() for c in self.replication],
                self.relay,
                list(self.relays),
                [list(p) for p in self.loading],
            ],
            use_bin_type=True,
        )

    @classmethod
    def decode(cls, data: bytes, max_bytes: int = 4096) -> NodeMeta:
        if len(data) > max_bytes:
            raise RemoteProtocolError(f"metadata of {len(data)} bytes exceeds {max_bytes}")
        try:
            raw = msgpack.unpackb(data, raw=False, strict_map_key=True, max_map_len=0)
        except Exception as exc:  # msgpack raises several unrelated types on bad input
            raise RemoteProtocolError(f"metadata: undecodable ({type(exc).__name__})") from None
        if not isinstance(raw, list) or len(raw) < 9:
            raise RemoteProtocolError("metadata: expected an array of at least 9 fields")
        name, wtype, http, caps, services, models, spec, load, edge = raw[:9]
        if not all(isinstance(v, str) for v in (name, wtype, http, spec)):
            raise RemoteProtocolError("metadata: text field of wrong type")
        if not _str_list(caps) or not _str_list(models):
            raise RemoteProtocolError("metadata: capabilities and models must be lists of text")
        if not isinstance(services, list) or not all(
            isinstance(s, list) and len(s) == 2 and isinstance(s[0], str) and isinstance(s[1], str)
            for s in services
        ):
            raise RemoteProtocolError("metadata: services must be [name, health] pairs")
        if not isinstance(edge, bool):
            raise RemoteProtocolError("metadata: edge flag must be a boolean")
        # Field 10 arrived after the first release: absent means no ports advertised.
        ports = raw[9] if len(raw) > 9 else []
        if not isinstance(ports, list) or not all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
            and isinstance(p[1], int) and not isinstance(p[1], bool) and 0 < p[1] < 65536
            for p in ports
        ):
            raise RemoteProtocolError("metadata: service ports must be [name, port] pairs")
        started = raw[10] if len(raw) > 10 else 0
        if not isinstance(started, int) or isinstance(started, bool) or not 0 <= started < 2**40:
            raise RemoteProtocolError("metadata: start time must be a non-negative integer")
        # Field 12 arrived with stateful services: absent means no copy of any.
        claims = raw[11] if len(raw) > 11 else []
        if not isinstance(claims, list) or len(claims) > MAX_REPLICATION_ENTRIES:
            raise RemoteProtocolError(f"metadata: replication claims must be a list of at most {MAX_REPLICATION_ENTRIES}")
        replication = tuple(ReplicationClaim.from_wire(c) for c in claims)
        if len({c.service for c in replication}) != len(replication):
            raise RemoteProtocolError("metadata: two replication claims for one service")
        # Fields 13 and 14 arrived with relays (issue 16): absent means no relay offered, reached directly.
        relay = raw[12] if len(raw) > 12 else ""
        if not isinstance(relay, str) or len(relay) > MAX_RELAY_ADDR:
            raise RemoteProtocolError(f"metadata: relay must be a host:port of at most {MAX_RELAY_ADDR} characters")
        relays = raw[13] if len(raw) > 13 else []
        if not _str_list(relays) or len(relays) > MAX_RELAYS or not all(0 < len(r) <= MAX_NODE_ID for r in relays):
            raise RemoteProtocolError(f"metadata: relays must be a list of at most {MAX_RELAYS} node ids")
        # Field 15 arrived with load progress: absent means nothing reported loading.
        loading = raw[14] if len(raw) > 14 else []
        if not isinstance(loading, list) or len(loading) > MAX_LOADING_ENTRIES or not all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and 0 < len(p[0]) <= 64
            and isinstance(p[1], int) and not isinstance(p[1], bool) and 0 <= p[1] <= 100
            for p in loading
        ):
            raise RemoteProtocolError(f"metadata: loading must be at most {MAX_LOADING_ENTRIES} [service, percent] pairs")
        return cls(
            name=name,
            worker_type=wtype,
            http=http,
            capabilities=tuple(caps),
            services=tuple((s[0], s[1]) for s in services),
            loaded_models=tuple(models),
            specialization=spec,
            load=Load.from_wire(load),
            edge_public=edge,
            service_ports=tuple((p[0], p[1]) for p in ports),
            started_at=started,
            replication=replication,
            relay=relay,
            relays=tuple(relays),
            loading=tuple((p[0], p[1]) for p in loading),
        )

    @property
    def relayed(self) -> bool:
        """Whether peers reach this member through a relay (its address is an allocation on an edge)."""
        return bool(self.relays)

    @property
    def service_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.services)

    def port_of(self, service: str) -> int | None:
        return next((port for name, port in self.service_ports if name == service), None)

    def loading_of(self, service: str) -> int | None:
        """How far ``service`` got loading its model, in percent; None when not reported."""
        return next((pct for name, pct in self.loading if name == service), None)

    def claim_of(self, service: str) -> ReplicationClaim | None:
        return next((c for c in self.replication if c.service == service), None)

    @property
    def reach(self) -> str:
        """How peers reach this member: "relayed" through its ``relays``, else "direct"."""
        return "relayed" if self.relays else "direct"

    @property
    def healthy_services(self) -> tuple[str, ...]:
        return tuple(name for name, health in self.services if health == "healthy")


def _str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
