"""The discrete-event driver: the real ``membership.Membership`` machines on a virtual clock.

One seed determines the whole run. Everything random comes from generators
derived from ``(seed, purpose)``: each node's protocol generator from
``(seed, "node", index, life)``, the network's from ``(seed, "net")``, the
scenario's choices (who crashes, who joins through whom) from
``(seed, "scenario")``. Events sit in one heap keyed by ``(time, sequence)``;
the sequence number breaks ties in insertion order, so the order of
simultaneous events never depends on anything but the run itself. Nothing
here iterates a set or reads a clock on a path that affects the run (wall
time is only measured for the report). ``Figures.events_hash`` digests the
event log; running a seed twice must give the same digest.

The machines are driven exactly as the daemon drives them: after every input
(a datagram, a TCP request or reply, a timer) the driver drains the
machine's datagrams, streams and events and re-arms its *single* deadline.
Each node has at most one live timer entry in the heap (``armed[i]``): an
entry whose time no longer matches is stale and skipped, which keeps the heap
at O(nodes + packets in flight).

Two ways to start:

- ``cold``: node 0 starts alone; the others start in ``join_waves`` waves,
  ``join_interval_s`` apart, each joining (push-pull) through a random node
  of an earlier wave, not all through one seed. ``join_convergence_s`` is the
  time from t=0 until every live node lists every live node as alive.
- ``warm``: every node starts knowing every other one, with nothing left to
  gossip: the state a cold start reaches once it has converged and its
  broadcast queues have drained. A cold start at 10,000 nodes is 10^8 member
  additions (every node learns every other) and as many gossip deliveries,
  which no single Python process does in reasonable time, so the steady-state
  figures at that size start warm, through ``Membership.install_view`` with
  one ``ConvergedView`` that every machine shares.

The run's options and its actions (crash, restart with the same identity,
graceful leave, metadata update) are plain data in ``simulations.options``,
scheduled here by time; ``SimOptions`` derives the usual ones (``kills``,
``leaves``, ``updates``, the metadata heartbeat) from counts.
"""

from __future__ import annotations

import gc
import hashlib
import heapq
import itertools
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import replace

from allocator.actions import NodeActions
from allocator.members import capabilities
from membership import (
    ConvergedView,
    Load,
    Membership,
    NodeMeta,
    SharedCaches,
    Status,
    StreamRequest,
)
from membership import wire
from membership.signing import UnsignedIdentity, accept_unsigned
from simulations.services import NodeServices, ServiceEmulation
from simulations.metrics import Figures, Recorder, UpdateCause, percentile
from simulations.network import (
    ActivePartition,
    Clog,
    NetworkModel,
    Partition,
    StallSchedule,
)
from simulations.options import (  # the options and actions lived here once: importable from here still
    WORKER_MIX,
    Action,
    Crash,
    CrashRunners,
    Leave,
    MetaUpdate,
    Restart,
    SimOptions,
    derive_seed,
    node_addr_of,
    node_id_of,
)

__all__ = [
    "WORKER_MIX",
    "Action",
    "Crash",
    "CrashRunners",
    "Leave",
    "MetaUpdate",
    "Restart",
    "SimOptions",
    "Simulation",
    "derive_seed",
    "node_addr_of",
    "node_id_of",
]

log = logging.getLogger(__name__)

# Event kinds in the heap: (time, seq, kind, ...).
_DGRAM = 0  # (t, seq, _DGRAM, dst, data, src_addr)
_TICK = 1  # (t, seq, _TICK, node, gen)
_SREQ = 2  # (t, seq, _SREQ, dst, src, src_gen, request, sealed_len)
_SREPLY = 3  # (t, seq, _SREPLY, node, gen, token, frame_or_None)
_ACTION = 4  # (t, seq, _ACTION, callable)


class Simulation:
    """One run: build it from ``SimOptions``, then ``run()`` (or ``run_until`` step by step in tests)."""

    def __init__(self, options: SimOptions, progress: Callable[[float], None] | None = None) -> None:
        self.options = options
        self.config = options.swim_config()
        n = options.nodes
        self.n = n
        self.now = 0.0
        self._progress = progress
        self._heap: list[tuple] = []
        self._seq = itertools.count()
        self.ids = [node_id_of(i) for i in range(n)]
        self.addrs = [node_addr_of(i) for i in range(n)]
        self.addr_index = {a: i for i, a in enumerate(self.addrs)}
        self.machines: list[Membership | None] = [None] * n
        self.gen = [0] * n
        self.life = [0] * n
        self.armed = [math.inf] * n
        self.leaving = [False] * n
        self.metas = [self._initial_meta(i) for i in range(n)]
        # Every node holds and decodes the same alive records: one set of caches for all.
        self.caches = SharedCaches()
        self._join_tokens: dict[int, int] = {}
        self._started: list[int] = []

        self.net_rng = random.Random(derive_seed(options.seed, "net"))
        self.scenario_rng = random.Random(derive_seed(options.seed, "scenario"))
        self.workload_rng = random.Random(derive_seed(options.seed, "workload"))
        self.net = NetworkModel(options.network, self.net_rng)
        for i in range(n):
            self.net.add_node(i)
        self.seal = options.network.seal_overhead

        # Traffic sent, per node, sealed: the bandwidth figures.
        self.udp_bytes = [0] * n
        self.tcp_bytes = [0] * n
        self.msgs = [0] * n
        self.node_seconds = 0.0
        # Bytes by message kind inside the bandwidth window (only with options.by_kind).
        self._by_kind: dict[str, int] | None = {} if options.by_kind else None
        self._kind_memo = wire.AliveMemo()
        self._window_start: float | None = None
        self._window_base = (0, 0, 0)
        self._node_seconds_mark = 0.0
        self._retired_probes = 0
        self.stuck_deadlines = 0
        """Ticks after which the machine's deadline was still due: a protocol bug (should be 0)."""
        self._retired_refutations = 0

        self.rec = Recorder(
            n, self.ids, self._status_of, self.config.gossip_interval, on_first_converged=self._on_converged_first
        )

        starved = options.network.starvation
        self.stall: list[StallSchedule | None] = [None] * n
        k = starved.how_many(n)
        if k:
            chosen = list(starved.nodes) if starved.nodes is not None else self.scenario_rng.sample(range(n), k)
            for i in chosen:
                rng = random.Random(derive_seed(options.seed, "stall", i))
                self.stall[i] = StallSchedule(rng, starved.run_mean_s, starved.stall_mean_s, 0.0)
        self.starved_nodes = sorted(i for i in range(n) if self.stall[i] is not None)
        self.rec.unhealthy.update(self.starved_nodes)
        self._timers_late = starved.timers_late

        self.services: ServiceEmulation | None = None
        if options.allocator:
            self.services = ServiceEmulation(self)

        self._sample_every = options.sample_every_s or max(0.5, options.seconds / 200)
        self._updates_scheduled = False
        self._schedule_scenario()

    # ------------------------------------------------------------ setup

    def _initial_meta(self, i: int) -> NodeMeta:
        weights = [w for _, w in WORKER_MIX]
        h = int.from_bytes(hashlib.blake2b(f"type-{i}".encode(), digest_size=4).digest(), "big")
        pick = h % sum(weights)
        wtype = WORKER_MIX[-1][0]
        for name, w in WORKER_MIX:
            if pick < w:
                wtype = name
                break
            pick -= w
        caps = capabilities(wtype)
        # Without the allocator each node runs one service of its type, so metadata has its real size.
        services = () if self.options.allocator or not caps else ((caps[i % len(caps)], "healthy"),)
        host, _ = self.addrs[i]
        return NodeMeta(
            name=f"sim-{i}",
            worker_type=wtype,
            http=f"{host}:8080",
            capabilities=caps,
            services=services,
            loaded_models=("llama-3-8b",) if wtype == "gpu" else (),
            specialization="",
        )

    def _push(self, t: float, kind: int, *payload: object) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, *payload))

    def at(self, t: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` at simulated time ``t`` (after everything already queued for ``t``)."""
        self._push(max(t, self.now), _ACTION, fn)

    def _schedule_scenario(self) -> None:
        o = self.options
        n = self.n
        T = o.seconds
        if o.start == "warm":
            self.at(0.0, self._warm_start)
        else:
            self.at(0.0, lambda: self._start_node(0, via=None))
            rest = list(range(1, n))
            waves = min(o.join_waves, max(1, len(rest)))
            when = 0.0
            for w in range(waves):
                members = rest[w * len(rest) // waves : (w + 1) * len(rest) // waves]
                when = 0.5 + w * o.join_interval_s
                self.at(when, lambda members=members: self._join_wave(members))
            self.at(when, lambda: self.rec.arm_convergence(self.now))

        # Crashes and leaves: distinct random non-starved nodes (a starved node's fate is its own figure).
        candidates = [i for i in range(n) if self.stall[i] is None and i != 0] or list(range(1, n))
        victims = self.scenario_rng.sample(candidates, min(len(candidates), o.kills + o.leaves))
        kill_at = o.kill_at_s if o.kill_at_s is not None else T / 3
        spread = o.kill_spread_s if o.kill_spread_s is not None else T / 6
        for j, i in enumerate(victims[: o.kills]):
            when = kill_at + (spread * j / max(1, o.kills - 1) if o.kills > 1 else 0.0)
            self.at(when, lambda i=i: self.crash(i))
            if o.restart_after_s is not None:
                self.at(when + o.restart_after_s, lambda i=i: self.restart(i))
        leave_at = o.leave_at_s if o.leave_at_s is not None else kill_at
        for j, i in enumerate(victims[o.kills :]):
            self.at(leave_at + j * 1.0, lambda i=i: self.leave(i))

        for a in o.actions:
            match a:
                case Crash():
                    self.at(a.at, lambda a=a: self.crash(a.node))
                case Restart():
                    self.at(a.at, lambda a=a: self.restart(a.node))
                case Leave():
                    self.at(a.at, lambda a=a: self.leave(a.node))
                case MetaUpdate():
                    self.at(a.at, lambda a=a: self.inject_update(a.node))
                case CrashRunners():
                    self.at(a.at, lambda a=a: self.crash_runners(a.service))

        for p in o.network.partitions:
            self.at(p.start_s, lambda p=p: self._open_partition(p))
        for c in o.network.clogs:
            self.at(c.start_s, lambda c=c: self._clog(c))

        t = self._sample_every
        while t < T:
            self.at(t, lambda: self.rec.sample(self.now))
            t += self._sample_every
        if o.measure_from_s is not None:
            self.at(o.measure_from_s, self._open_window)

    def _warm_start(self) -> None:
        now = self.now
        for i in range(self.n):
            self._make_machine(i)
        records = [m.alive_record(self.ids[i]) for i, m in enumerate(self.machines)]  # type: ignore[union-attr]
        self.caches.intern(records)  # type: ignore[arg-type]
        view = ConvergedView.of(records, accept_unsigned)  # type: ignore[arg-type]
        period = self.config.push_pull_period(self.n)
        load_period = self.config.load_gossip_period(self.n)
        first_round = math.ceil(self.options.seconds / self.config.probe_interval) + 2
        for i, m in enumerate(self.machines):
            assert m is not None
            others = self.ids[:i] + self.ids[i + 1 :]
            # The first probe round: an ordered random sample is distributed exactly like the
            # prefix of the shuffle the machine would draw, and long enough for the whole run; the
            # machine draws its own full shuffle once it is used up. (Letting 10,000 machines
            # each shuffle 10,000 members in the first second would cost minutes.)
            probe_order = self.workload_rng.sample(others, min(len(others), first_round))
            # Push-pull phases spread over the whole (N-scaled) period, as in a long-running pool,
            # and likewise the last load summary went out some time within its period.
            next_push_pull = now + self.workload_rng.uniform(0, period)
            last_load_gossip = now - self.workload_rng.uniform(0, load_period)
            m.install_view(
                view, now, probe_order=probe_order, next_push_pull=next_push_pull, last_load_gossip=last_load_gossip
            )
        self._started = list(range(self.n))
        self.rec.warm_start(now, range(self.n))
        for i in range(self.n):
            self._drain(i, self.machines[i])  # type: ignore[arg-type]
        if self.options.meta_interval_s > 0:
            for i in range(self.n):
                self._schedule_heartbeat(i)
        if self.services is not None:
            # No membership event will come to prompt the first allocation: every node runs it now.
            for i in range(self.n):
                self.services.mark_dirty(i)

    def _join_wave(self, members: list[int]) -> None:
        earlier = list(self._started)
        for i in members:
            live_earlier = [j for j in earlier if self.machines[j] is not None and not self.leaving[j]]
            via = live_earlier[self.scenario_rng.randrange(len(live_earlier))] if live_earlier else None
            self._start_node(i, via)
        if self.options.meta_interval_s > 0:
            for i in members:
                self._schedule_heartbeat(i)

    # ------------------------------------------------------------ node lifecycle

    def _make_machine(self, i: int, incarnation: int = 0) -> Membership:
        self.gen[i] += 1
        self.life[i] += 1
        self.armed[i] = math.inf
        self.leaving[i] = False
        m = Membership(
            self.config,
            UnsignedIdentity(self.ids[i]),
            accept_unsigned,
            self.addrs[i],
            self.metas[i],
            random.Random(derive_seed(self.options.seed, "node", i, self.life[i])),
            self.now,
            incarnation=incarnation,
            shared=self.caches,
        )
        self.machines[i] = m
        self._account_node_seconds()
        return m

    def _start_node(self, i: int, via: int | None) -> None:
        m = self._make_machine(i)
        self._started.append(i)
        self.rec.node_up(i, self.now)
        if via is not None:
            self._join_tokens[i] = m.join(self.addrs[via], self.now)
        self._drain(i, m)
        if i == 0 and self.options.meta_interval_s > 0 and self.options.start == "cold":
            self._schedule_heartbeat(0)

    def crash(self, i: int) -> None:
        """Stop node ``i`` at once: it sends, receives and ticks no more."""
        m = self.machines[i]
        if m is None:
            return
        was_live = not self.leaving[i]
        self._retire(i, m)
        if was_live:
            self.rec.node_down(i, self.now, "crash", m.incarnation)
            if self.services is not None:
                self.services.on_crash()
        self.rec.log(f"{self.now!r}|crash|{i}")

    def crash_runners(self, service: str) -> list[int]:
        """Crash every live node that runs ``service`` now; returns them."""
        victims = [
            i
            for i in range(self.n)
            if self._is_live(i) and service in self.machines[i].meta.service_names  # type: ignore[union-attr]
        ]
        for i in victims:
            self.crash(i)
        return victims

    def _retire(self, i: int, m: Membership) -> None:
        self._account_node_seconds()
        self._retired_probes += m.stats.probes
        self._retired_refutations += m.stats.refutations
        self.machines[i] = None
        self.gen[i] += 1
        self.armed[i] = math.inf
        self._join_tokens.pop(i, None)

    def restart(self, i: int) -> None:
        """Bring node ``i`` back with the same identity; it joins through a random live node and
        must refute its own death (it restarts at incarnation 0, so it learns a higher one)."""
        if self.machines[i] is not None:
            return
        if self.services is not None:
            # A restarted node runs nothing until the allocator gives it a row again.
            self.services.forget(i)
            self.metas[i] = replace(self.metas[i], services=())
        m = self._make_machine(i)
        self.rec.restarted(i, self.now)
        self.rec.node_up(i, self.now)
        live = [j for j in range(self.n) if j != i and self.machines[j] is not None and not self.leaving[j]]
        if live:
            via = live[self.scenario_rng.randrange(len(live))]
            self._join_tokens[i] = m.join(self.addrs[via], self.now)
        self.rec.log(f"{self.now!r}|restart|{i}")
        self._drain(i, m)

    def leave(self, i: int) -> None:
        """Graceful leave: announce, keep running ``leave_linger_s`` to gossip it, then stop."""
        m = self.machines[i]
        if m is None or self.leaving[i]:
            return
        m.leave(self.now)
        self.leaving[i] = True
        self.rec.node_down(i, self.now, "leave", m.incarnation)
        self.rec.log(f"{self.now!r}|leave|{i}")
        self._drain(i, m)
        gen = self.gen[i]
        self.at(self.now + self.options.leave_linger_s, lambda: self._stop_left(i, gen))

    def _stop_left(self, i: int, gen: int) -> None:
        m = self.machines[i]
        if m is not None and self.gen[i] == gen:
            self._retire(i, m)

    def inject_update(self, i: int | None) -> None:
        """Node ``i`` (or a random live, non-starved one) changes its metadata: a fresh update."""
        if i is None:
            live = [j for j in range(self.n) if self._is_live(j) and self.stall[j] is None]
            if not live:
                return
            i = live[self.workload_rng.randrange(len(live))]
        m = self.machines[i]
        if m is None or self.leaving[i]:
            return
        meta = m.meta
        load = Load(cpu_percent=(meta.load.cpu_percent + 37) % 101, memory_percent=meta.load.memory_percent)
        m.update_meta(replace(meta, load=load), self.now)
        self.metas[i] = m.meta
        self.rec.update_injected(i, m.incarnation, self.now, UpdateCause.INJECTED)
        self._drain(i, m)

    def _schedule_heartbeat(self, i: int) -> None:
        gen = self.gen[i]
        delay = self.workload_rng.expovariate(1.0 / self.options.meta_interval_s)
        self.at(self.now + delay, lambda: self._heartbeat(i, gen))

    def _heartbeat(self, i: int, gen: int) -> None:
        m = self.machines[i]
        if m is None or self.gen[i] != gen:
            return
        before = m.incarnation
        old = m.meta.load
        load = Load(cpu_percent=(old.cpu_percent + 30 + self.workload_rng.randrange(40)) % 101)
        m.update_load(load, self.now)
        if m.incarnation != before:
            self.metas[i] = m.meta
            self.rec.update_injected(i, m.incarnation, self.now, UpdateCause.HEARTBEAT)
        self._drain(i, m)
        self._schedule_heartbeat(i)

    def _is_live(self, i: int) -> bool:
        return self.machines[i] is not None and not self.leaving[i]

    # ------------------------------------------------------------ faults

    def _open_partition(self, p: Partition) -> None:
        present = [i for i in range(self.n) if self.machines[i] is not None]
        if p.nodes is not None:
            side = frozenset(p.nodes)
        else:
            k = max(1, min(len(present) - 1, round(p.fraction * len(present))))
            side = frozenset(self.scenario_rng.sample(present, k))
        active = self.net.open_partition(side, p.symmetric)
        self.rec.log(f"{self.now!r}|partition|{len(side)}|{p.symmetric}")
        if p.end_s is not None:
            self.at(p.end_s, lambda: self._heal(active))

    def _heal(self, active: ActivePartition) -> None:
        self.net.heal_partition(active)
        self.rec.partition_healed(self.now)

    def _clog(self, c: Clog) -> None:
        nodes = list(c.nodes) if c.nodes is not None else self.scenario_rng.sample(range(self.n), c.count)
        for i in nodes:
            self.net.clog(i, c.end_s)
            self.at(c.end_s, lambda i=i: self.net.unclog(i, self.now))
        self.rec.log(f"{self.now!r}|clog|{nodes}")

    # ------------------------------------------------------------ the pump

    def drain(self, i: int, m: Membership) -> None:
        """Move what machine ``i`` produced onto the network: for the node's other layers (services)."""
        self._drain(i, m)

    def _drain(self, i: int, m: Membership, after_tick: bool = False) -> None:
        """Move everything the machine produced onto the network and re-arm its deadline."""
        now = self.now
        out = m.take_datagrams()
        if out:
            seal = self.seal
            nbytes = 0
            heap = self._heap
            seq = self._seq
            src_addr = self.addrs[i]
            addr_index = self.addr_index
            net = self.net
            if net.path_faults_active:
                for data, addr in out:
                    nbytes += len(data) + seal
                    dst = addr_index.get(addr)
                    if dst is None:
                        continue
                    for d in net.datagram_delays(i, dst, now):
                        heapq.heappush(heap, (now + d, next(seq), _DGRAM, dst, data, src_addr))
            else:
                # The common case, inlined: uniform loss and per-link latency only.
                rnd = net.rng.random
                expo = net.rng.expovariate
                loss = net.options.loss
                base = net._base + net._offsets[i]
                offsets = net._offsets
                jr = net._jitter_rate
                for data, addr in out:
                    nbytes += len(data) + seal
                    dst = addr_index.get(addr)
                    if dst is None or (loss and rnd() < loss):
                        continue
                    d = base + offsets[dst]
                    if jr:
                        d += expo(jr)
                    heapq.heappush(heap, (now + d, next(seq), _DGRAM, dst, data, src_addr))
            self.udp_bytes[i] += nbytes
            self.msgs[i] += len(out)
            if self._by_kind is not None and self._window_start is not None:
                self._count_kinds(out)
        streams = m.take_streams()
        if streams:
            for req in streams:
                self._send_stream(i, req)
        events = m.take_events()
        if events:
            self.rec.on_events(i, events, now, after_tick)
            if self.services is not None:
                self.services.on_events(i, events)
        d = m.next_deadline()
        if after_tick and d is not None and d <= now:
            # tick(now) fired everything due, so a deadline still <= now is a protocol bug that
            # no later tick can clear: counted (tests assert 0) and left unarmed, so that the
            # node waits for its next input instead of spinning at this instant.
            self.stuck_deadlines += 1
            if self.stuck_deadlines == 1:
                log.warning("node %s: deadline %r still due after tick(%r)", self.ids[i], d, now)
            return
        if d is not None and d < self.armed[i]:
            if d < now:
                d = now
            self.armed[i] = d
            heapq.heappush(self._heap, (d, next(self._seq), _TICK, i, self.gen[i]))

    def _count_kinds(self, out: list[tuple[bytes, tuple[str, int]]]) -> None:
        """Attribute each datagram's bytes to the messages in it (piggybacked gossip included)."""
        kinds = self._by_kind
        assert kinds is not None
        for data, _ in out:
            parts = 0
            for msg in wire.decode_datagram(data, self._kind_memo):
                size = len(wire.encode_message(msg))
                parts += size
                key = f"udp {type(msg).__name__}"
                kinds[key] = kinds.get(key, 0) + size
            kinds["udp header+seal"] = kinds.get("udp header+seal", 0) + len(data) - parts + self.seal

    def _send_stream(self, i: int, req: StreamRequest) -> None:
        size = len(req.payload) + self.seal
        dst = self.addr_index.get(req.addr)
        net = self.net
        timeout = self.options.network.tcp.connect_timeout_s
        now = self.now
        if dst is None or self.machines[dst] is None or not net.stream_connects(i, dst):
            if req.expect_reply:
                self._push(now + timeout, _SREPLY, i, self.gen[i], req.token, None)
            return
        t = net.connect_time(i, dst)
        if t >= timeout:
            if req.expect_reply:
                self._push(now + timeout, _SREPLY, i, self.gen[i], req.token, None)
            return
        # Only a connection that opens carries the request: a failed connect costs a few SYNs.
        self.tcp_bytes[i] += size
        if self._by_kind is not None and self._window_start is not None:
            key = f"tcp {req.kind.value}"
            self._by_kind[key] = self._by_kind.get(key, 0) + size
        self.msgs[i] += 1
        t += net.transfer_time(i, dst, size, now)
        self._push(now + t, _SREQ, dst, i, self.gen[i], req)

    def _serve_stream(self, dst: int, src: int, src_gen: int, req: StreamRequest) -> None:
        m = self.machines[dst]
        now = self.now
        net = self.net
        if m is None or not net.stream_connects(src, dst):
            if req.expect_reply:
                # A host that went away resets or times out; either way the caller hears nothing useful.
                self._push(now + net.one_way(dst, src), _SREPLY, src, src_gen, req.token, None)
            return
        reply = m.handle_stream(req.payload, self.addrs[src], now)
        if reply is not None:
            size = len(reply) + self.seal
            self.tcp_bytes[dst] += size
            if self._by_kind is not None and self._window_start is not None:
                key = f"tcp {req.kind.value} reply"
                self._by_kind[key] = self._by_kind.get(key, 0) + size
            self.msgs[dst] += 1
        self._drain(dst, m)
        if req.expect_reply:
            if reply is None:
                self._push(now + net.one_way(dst, src), _SREPLY, src, src_gen, req.token, None)
            else:
                t = net.transfer_time(dst, src, len(reply) + self.seal, now)
                self._push(now + t, _SREPLY, src, src_gen, req.token, reply)

    def _deliver_reply(self, i: int, gen: int, token: int, frame: bytes | None) -> None:
        m = self.machines[i]
        if m is None or self.gen[i] != gen:
            return
        ok = m.stream_reply(token, frame, self.now)
        self._drain(i, m)
        if self._join_tokens.get(i) == token:
            del self._join_tokens[i]
            if not ok:
                # The daemon tries the next address it knows; here: another random live node, soon.
                self.at(self.now + 1.0, lambda: self._retry_join(i, gen))

    def _retry_join(self, i: int, gen: int) -> None:
        m = self.machines[i]
        if m is None or self.gen[i] != gen or m.num_active() > 1:
            return
        live = [j for j in range(self.n) if j != i and self._is_live(j)]
        if not live:
            return
        via = live[self.scenario_rng.randrange(len(live))]
        self._join_tokens[i] = m.join(self.addrs[via], self.now)
        self._drain(i, m)

    def run_until(self, until: float) -> None:
        """Process every event up to simulated time ``until`` (inclusive)."""
        heap = self._heap
        pop = heapq.heappop
        machines = self.machines
        armed = self.armed
        gen = self.gen
        stall = self.stall
        timers_late = self._timers_late
        drain = self._drain
        progress = self._progress
        next_progress = self.now
        progress_step = max(1.0, self.options.seconds / 200)
        while heap and heap[0][0] <= until:
            ev = pop(heap)
            t = ev[0]
            self.now = t
            kind = ev[2]
            if kind == _DGRAM:
                dst = ev[3]
                m = machines[dst]
                if m is None:
                    continue
                sched = stall[dst]
                if sched is not None:
                    r = sched.release(t)
                    if r > t:
                        heapq.heappush(heap, (r, next(self._seq), _DGRAM, dst, ev[4], ev[5]))
                        continue
                m.receive(ev[4], ev[5], t)
                drain(dst, m)
            elif kind == _TICK:
                i = ev[3]
                if ev[4] != gen[i] or armed[i] != t:
                    continue  # stale: the node re-armed or restarted since
                m = machines[i]
                armed[i] = math.inf
                if m is None:
                    continue
                if timers_late:
                    sched = stall[i]
                    if sched is not None:
                        r = sched.release(t)
                        if r > t:
                            armed[i] = r
                            heapq.heappush(heap, (r, next(self._seq), _TICK, i, gen[i]))
                            continue
                d = m.next_deadline()
                if d is None:
                    continue
                if d > t:
                    # The deadline moved later (an ack arrived): re-arm without a pointless drain.
                    armed[i] = d
                    heapq.heappush(heap, (d, next(self._seq), _TICK, i, ev[4]))
                    continue
                m.tick(t)
                drain(i, m, True)
            elif kind == _SREQ:
                dst = ev[3]
                sched = stall[dst]
                if sched is not None and machines[dst] is not None:
                    r = sched.release(t)
                    if r > t:
                        heapq.heappush(heap, (r, next(self._seq), *ev[2:]))
                        continue
                self._serve_stream(dst, ev[4], ev[5], ev[6])
            elif kind == _SREPLY:
                i = ev[3]
                sched = stall[i]
                if sched is not None and machines[i] is not None:
                    r = sched.release(t)
                    if r > t:
                        heapq.heappush(heap, (r, next(self._seq), *ev[2:]))
                        continue
                self._deliver_reply(i, ev[4], ev[5], ev[6])
            else:
                ev[3]()
            if progress is not None and t >= next_progress:
                progress(t)
                next_progress = t + progress_step
        self.now = max(self.now, until)

    # ------------------------------------------------------------ views and accounting

    def _status_of(self, observer: int, node_id: str) -> Status | None:
        m = self.machines[observer]
        return None if m is None else m.status_of(node_id)

    def status(self, observer: int, subject: int) -> Status | None:
        return self._status_of(observer, self.ids[subject])

    def live_nodes(self) -> list[int]:
        return [i for i in range(self.n) if self._is_live(i)]

    def _account_node_seconds(self) -> None:
        # Node-seconds inside the bandwidth window, integrated piecewise between membership changes.
        if self._window_start is not None:
            running = sum(1 for m in self.machines if m is not None)
            self.node_seconds += running * (self.now - self._node_seconds_mark)
            self._node_seconds_mark = self.now

    def _open_window(self) -> None:
        if self._window_start is not None:
            return
        self._window_start = self.now
        self._node_seconds_mark = self.now
        self.node_seconds = 0.0
        self._window_base = (sum(self.udp_bytes), sum(self.tcp_bytes), sum(self.msgs))

    def _on_converged_first(self, now: float) -> None:
        if self.options.measure_from_s is None:
            self._open_window()
        self._schedule_updates(now)

    def _schedule_updates(self, now: float) -> None:
        if self._updates_scheduled:
            return
        self._updates_scheduled = True
        k = self.options.updates
        if k <= 0:
            return
        # Leave the last 15 s for the last update to spread (14 rounds at 200 ms is under 3 s).
        begin = now + 1.0
        end = max(begin, self.options.seconds - 15.0)
        for j in range(k):
            when = begin + (end - begin) * (j + 0.5) / k
            self.at(when, lambda: self.inject_update(None))

    # ------------------------------------------------------------ allocator

    @property
    def alloc(self) -> list[NodeServices] | None:
        """With the allocator on: what each node runs (``simulations.services``)."""
        return self.services.nodes if self.services is not None else None

    def decide(self, i: int) -> NodeActions:
        """What node ``i`` should do now: the daemon's ``allocator.actions.node_actions`` on its view."""
        assert self.services is not None
        return self.services.decide(i)

    # ------------------------------------------------------------ the run

    def run(self) -> Figures:
        wall0 = time.perf_counter()
        o = self.options
        T = o.seconds
        step = max(0.5, T / 200)
        t = 0.0
        # Ten thousand machines hold ~10^8 references in long-lived dicts; letting the cyclic
        # collector rescan them on every full collection made runs several times slower. The
        # run creates no reference cycles worth collecting, so long-lived objects are frozen
        # out of collection while it runs (and handed back afterwards).
        gc.collect()
        gc.freeze()
        try:
            while t < T:
                t = min(T, t + step)
                self.run_until(t)
                gc.freeze()
                if not self._updates_scheduled and t >= T / 2:
                    # Never converged: measure what can be measured from here on.
                    self._on_converged_first(t)
        finally:
            gc.unfreeze()
        wall = time.perf_counter() - wall0
        return self.figures(wall)

    def figures(self, wall_s: float) -> Figures:
        o = self.options
        rec = self.rec
        now = self.now
        rec.finish(now)
        self._account_node_seconds()
        probes = self._retired_probes + sum(m.stats.probes for m in self.machines if m is not None)
        refutations = self._retired_refutations + sum(m.stats.refutations for m in self.machines if m is not None)
        first, mid, last, worst, incomplete = rec.detection()
        bw = udp_bw = tcp_bw = msgs = None
        if self._window_start is not None and self.node_seconds > 0:
            u0, t0, m0 = self._window_base
            udp = sum(self.udp_bytes) - u0
            tcp = sum(self.tcp_bytes) - t0
            udp_bw = udp / self.node_seconds
            tcp_bw = tcp / self.node_seconds
            bw = udp_bw + tcp_bw
            msgs = (sum(self.msgs) - m0) / self.node_seconds * self.config.probe_interval
        by_kind = None
        if self._by_kind is not None and self.node_seconds > 0:
            by_kind = {k: v / self.node_seconds for k, v in sorted(self._by_kind.items(), key=lambda kv: -kv[1])}
        rounds = rec.update_rounds
        uncovered = covered_s = moved = None
        if self.services is not None:
            uncovered, covered_s, moved = self.services.figures()
        return Figures(
            nodes=self.n,
            seed=o.seed,
            sim_s=now,
            wall_s=wall_s,
            start=o.start,
            profile=o.profile,
            lifeguard=o.lifeguard,
            loss=o.network.loss,
            starved=len(self.starved_nodes),
            # A warm start has no join to time.
            join_convergence_s=rec.first_converged_at if o.start == "cold" else None,
            dissemination_rounds_p50=percentile(rounds, 50),
            dissemination_rounds_p99=percentile(rounds, 99),
            dissemination_rounds_max=max(rounds) if rounds else None,
            dissemination_samples=len(rounds),
            dissemination_incomplete=rec.updates_incomplete,
            detection_first_s=first,
            detection_p50_s=mid,
            detection_all_s=last,
            detection_all_max_s=worst,
            kills=len(rec.kills_done),
            detection_incomplete=incomplete,
            false_suspicions=rec.false_suspicions,
            imported_suspicions=rec.imported_suspicions,
            probe_rounds=probes,
            false_suspicion_rate=rec.false_suspicions / probes if probes else None,
            false_deaths=len(rec.false_death_keys),
            false_deaths_healthy=sum(1 for s, _ in rec.false_death_keys if s not in rec.unhealthy),
            false_death_views=rec.false_death_views,
            bytes_per_node_per_s=bw,
            udp_bytes_per_node_per_s=udp_bw,
            tcp_bytes_per_node_per_s=tcp_bw,
            msgs_per_node_per_period=msgs,
            measure_from_s=self._window_start if self._window_start is not None else now,
            partition_merge_s=rec.merged_after_heal_s,
            refutations=refutations,
            events=rec.events,
            events_hash=rec.events_hash(),
            sim_speed=now / wall_s if wall_s > 0 else None,
            services_covered_s=covered_s,
            services_moved=moved,
            uncovered_at_end=uncovered,
            stuck_deadlines=self.stuck_deadlines,
            bytes_by_kind=by_kind,
        )
