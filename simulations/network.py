"""The simulated network: faults as plain data, and the model that applies them.

Every fault the simulator can inject is a field of ``NetworkOptions`` (frozen
dataclasses all the way down, in the spirit of TigerBeetle's
``PacketSimulatorOptions``): a run is fully described by its options and its
seed, so a failing run is replayed by passing the same two again.

What is modelled, and why this way:

- **Latency** per link is ``base + link offset + jitter``. Each node draws a
  fixed offset in ``[0, link_spread_s]`` once (half of it on each end of a
  link), so links differ from each other but stay stable over time without an
  N² table; each datagram adds exponential jitter of mean ``jitter_s``.
- **Loss** is uniform and independent per datagram; **duplication** sends a
  second copy with its own latency (exercises idempotence of acks and gossip).
- **Partitions** split the nodes into a side and the rest for a time window;
  symmetric ones cut both directions, asymmetric ones only side → rest (the
  case where A hears B but B never hears A). Datagrams across are dropped and
  TCP connections across fail.
- **Clogging** (FoundationDB's term) holds every datagram to or from a node
  until the clog lifts, then delivers it: the node is slow, not lossy.
- **Starved nodes** model a stalled event loop (Lifeguard's slow node): the
  node alternates running and stalled phases; while stalled it reads no
  packet (they are read, in arrival order, when the stall ends) and, with
  ``timers_late``, fires no timer either. With ``timers_late=False`` timers
  fire on time while packets wait, which is what happens when a process keeps
  its timers but drains its socket behind a backlog (memberlist's goroutines;
  asyncio's datagram transport reads one datagram per loop iteration).
- **TCP** is reliable but slower under loss: a lost SYN costs the initial RTO
  (1 s, doubling), a lost data segment costs one RTO (``min_rto_s``) when the
  window is too short for fast retransmit, else one round trip. A connection
  across a partition, or to a crashed host, fails after ``connect_timeout_s``.

``NetworkModel`` turns the options into per-packet decisions using one
``random.Random`` owned by the engine; it holds no clock, so the engine's
event order alone fixes every draw.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field

SEAL_OVERHEAD = 29
"""Bytes a keyring adds to every datagram and frame: 1 version + 12 nonce + 16 tag (AES-256-GCM)."""


@dataclass(frozen=True, slots=True)
class Latency:
    """One-way delay of a datagram: ``base_s + offset(src) + offset(dst) + Exp(jitter_s)``."""

    base_s: float = 0.001
    link_spread_s: float = 0.0005
    jitter_s: float = 0.0002

    def __post_init__(self) -> None:
        if min(self.base_s, self.link_spread_s, self.jitter_s) < 0:
            raise ValueError("latency figures must be >= 0")


@dataclass(frozen=True, slots=True)
class Partition:
    """A split that opens at ``start_s`` and heals at ``end_s`` (None: never).

    The side is ``nodes`` when given, else a seeded random ``fraction`` of the
    nodes present when the partition opens. Symmetric partitions cut both
    directions; asymmetric ones drop only traffic from the side to the rest.
    """

    start_s: float
    end_s: float | None
    fraction: float = 0.5
    nodes: tuple[int, ...] | None = None
    symmetric: bool = True

    def __post_init__(self) -> None:
        if self.end_s is not None and self.end_s < self.start_s:
            raise ValueError("a partition must heal after it opens")
        if self.nodes is None and not 0 < self.fraction < 1:
            raise ValueError("partition fraction must be in (0, 1)")


@dataclass(frozen=True, slots=True)
class Clog:
    """Hold all datagrams to and from ``count`` random nodes (or ``nodes``) from start to end."""

    start_s: float
    end_s: float
    count: int = 1
    nodes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.end_s < self.start_s:
            raise ValueError("a clog must lift after it starts")


@dataclass(frozen=True, slots=True)
class Starvation:
    """Slow nodes: a stalled event loop, in phases of Exp(run_mean_s) running, Exp(stall_mean_s) stalled.

    ``count`` nodes (or ``fraction`` of N, rounded, at least one when
    fraction > 0) are starved for the whole run, or the explicit ``nodes``.
    """

    fraction: float = 0.0
    count: int | None = None
    nodes: tuple[int, ...] | None = None
    stall_mean_s: float = 2.0
    run_mean_s: float = 2.0
    timers_late: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.fraction <= 1:
            raise ValueError("starved fraction must be in [0, 1]")
        if self.stall_mean_s <= 0 or self.run_mean_s <= 0:
            raise ValueError("stall and run means must be > 0")

    def how_many(self, n: int) -> int:
        if self.nodes is not None:
            return len(self.nodes)
        if self.count is not None:
            return min(n, self.count)
        if self.fraction <= 0:
            return 0
        return min(n, max(1, round(self.fraction * n)))


@dataclass(frozen=True, slots=True)
class TcpOptions:
    connect_timeout_s: float = 10.0
    """memberlist's LAN TCPTimeout: how long a failed connect takes to be noticed."""
    syn_rto_s: float = 1.0
    """Initial retransmission timeout for a lost SYN (Linux: 1 s, doubling)."""
    min_rto_s: float = 0.2
    """Retransmission timeout for a lost data segment without fast retransmit (Linux: 200 ms)."""
    mss: int = 1448
    bandwidth_bytes_per_s: float = 125_000_000.0
    """Serialisation rate of one link (1 Gbit/s)."""


@dataclass(frozen=True, slots=True)
class NetworkOptions:
    latency: Latency = field(default_factory=Latency)
    loss: float = 0.0
    """Probability that a datagram is dropped (and that a TCP segment must be retransmitted)."""
    duplicate: float = 0.0
    """Probability that a datagram is delivered twice."""
    partitions: tuple[Partition, ...] = ()
    clogs: tuple[Clog, ...] = ()
    starvation: Starvation = field(default_factory=Starvation)
    tcp: TcpOptions = field(default_factory=TcpOptions)
    seal_overhead: int = SEAL_OVERHEAD
    """Counted on top of every datagram and frame in the bandwidth figures (keyring on)."""

    def __post_init__(self) -> None:
        if not 0 <= self.loss < 1:
            raise ValueError("loss must be in [0, 1)")
        if not 0 <= self.duplicate < 1:
            raise ValueError("duplicate must be in [0, 1)")

    @property
    def faulty_paths(self) -> bool:
        """True when per-packet checks beyond loss and latency are ever needed."""
        return bool(self.partitions or self.clogs or self.duplicate)


@dataclass(slots=True)
class ActivePartition:
    """A partition while it is open (what ``heal_partition`` takes back)."""

    side: frozenset[int]
    symmetric: bool


class StallSchedule:
    """The stalled phases of one starved node, drawn lazily from its own generator.

    Queries must come in non-decreasing time (the engine's clock), so windows
    that ended are discarded and memory stays O(1).
    """

    __slots__ = ("_rng", "_run", "_stall", "_windows", "_horizon")

    def __init__(self, rng: random.Random, run_mean_s: float, stall_mean_s: float, start: float) -> None:
        self._rng = rng
        self._run = run_mean_s
        self._stall = stall_mean_s
        self._windows: deque[tuple[float, float]] = deque()
        self._horizon = start

    def release(self, t: float) -> float:
        """When an event due at ``t`` can run: ``t`` itself, or the end of the stall covering it."""
        while self._horizon <= t:
            begin = self._horizon + self._rng.expovariate(1.0 / self._run)
            end = begin + self._rng.expovariate(1.0 / self._stall)
            self._windows.append((begin, end))
            self._horizon = end
        windows = self._windows
        while windows and windows[0][1] <= t:
            windows.popleft()
        for begin, end in windows:
            if begin > t:
                break
            if t < end:
                return end
        return t


class NetworkModel:
    """Per-packet decisions for one run: drop, delay, duplicate, hold, or fail a connection."""

    def __init__(self, options: NetworkOptions, rng: random.Random) -> None:
        self.options = options
        self.rng = rng
        self._offsets: list[float] = []
        self._partitions: list[ActivePartition] = []
        self._clogged: dict[int, float] = {}  # node -> when its clog lifts
        lat = options.latency
        self._base = lat.base_s
        self._jitter_rate = 1.0 / lat.jitter_s if lat.jitter_s > 0 else 0.0

    # ------------------------------------------------------------ topology

    def add_node(self, index: int) -> None:
        """Draw the node's link offset (its share of each link's fixed latency)."""
        while len(self._offsets) <= index:
            self._offsets.append(self.rng.uniform(0.0, self.options.latency.link_spread_s) / 2)

    def offsets(self) -> list[float]:
        return self._offsets

    def open_partition(self, side: frozenset[int], symmetric: bool) -> ActivePartition:
        active = ActivePartition(side, symmetric)
        self._partitions.append(active)
        return active

    def heal_partition(self, active: ActivePartition) -> None:
        self._partitions.remove(active)

    def clog(self, node: int, until: float) -> None:
        self._clogged[node] = max(until, self._clogged.get(node, 0.0))

    def unclog(self, node: int, now: float) -> None:
        if self._clogged.get(node, math.inf) <= now:
            del self._clogged[node]

    @property
    def path_faults_active(self) -> bool:
        return bool(self._partitions or self._clogged or self.options.duplicate)

    def cut(self, src: int, dst: int) -> bool:
        """True when a partition drops traffic from ``src`` to ``dst``."""
        for p in self._partitions:
            a = src in p.side
            if a != (dst in p.side) and (p.symmetric or a):
                return True
        return False

    # ------------------------------------------------------------ datagrams

    def one_way(self, src: int, dst: int) -> float:
        d = self._base + self._offsets[src] + self._offsets[dst]
        if self._jitter_rate:
            d += self.rng.expovariate(self._jitter_rate)
        return d

    def datagram_delays(self, src: int, dst: int, now: float) -> tuple[float, ...]:
        """Delays of the copies of one datagram that arrive: () if it is lost or cut."""
        if self._partitions and self.cut(src, dst):
            return ()
        rng = self.rng
        loss = self.options.loss
        if loss and rng.random() < loss:
            return ()
        delays = [self.one_way(src, dst)]
        dup = self.options.duplicate
        if dup and rng.random() < dup:
            delays.append(self.one_way(src, dst))
        if self._clogged:
            hold = max(self._clogged.get(src, 0.0), self._clogged.get(dst, 0.0)) - now
            if hold > 0:
                delays = [hold + d for d in delays]
        return tuple(delays)

    # ------------------------------------------------------------ TCP

    def stream_connects(self, src: int, dst: int) -> bool:
        """A TCP connection needs both directions."""
        return not (self._partitions and (self.cut(src, dst) or self.cut(dst, src)))

    def connect_time(self, src: int, dst: int) -> float:
        """Handshake: one round trip, plus the SYN retransmission timeouts of lost SYNs or SYN-ACKs."""
        t = self.one_way(src, dst) + self.one_way(dst, src)
        rto = self.options.tcp.syn_rto_s
        loss = self.options.loss
        # Each attempt loses the SYN or the SYN-ACK with probability 1 - (1 - loss)^2.
        while loss and self.rng.random() < 1 - (1 - loss) ** 2:
            t += rto
            rto *= 2
            if t > self.options.tcp.connect_timeout_s:
                break
        return t

    def transfer_time(self, src: int, dst: int, nbytes: int, now: float) -> float:
        """One message over an open connection: latency, serialisation and retransmissions."""
        tcp = self.options.tcp
        t = self.one_way(src, dst) + nbytes / tcp.bandwidth_bytes_per_s
        segments = max(1, -(-nbytes // tcp.mss))
        loss = self.options.loss
        if loss:
            rtt = 2 * (self._base + self._offsets[src] + self._offsets[dst])
            # Short transfers cannot trigger fast retransmit (3 dup acks): a lost segment costs an RTO.
            penalty = tcp.min_rto_s if segments < 4 else max(rtt, 0.001)
            lost = self._binomial(segments, loss)
            t += lost * penalty
        if self._clogged:
            hold = max(self._clogged.get(src, 0.0), self._clogged.get(dst, 0.0)) - now
            if hold > 0:
                t += hold
        return t

    def _binomial(self, n: int, p: float) -> int:
        if n <= 32:
            rnd = self.rng.random
            return sum(1 for _ in range(n) if rnd() < p)
        # Large transfers: a normal approximation keeps a 300 kB push-pull O(1).
        k = round(self.rng.gauss(n * p, math.sqrt(n * p * (1 - p))))
        return min(n, max(0, k))
