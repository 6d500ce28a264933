"""N membership machines on a manual clock and an in-memory network (h11's ConnectionPair, scaled up).

Nothing sleeps: ``run_until(pred, max_time)`` jumps from one event to the
next (a datagram delivery, a stream exchange, a machine's deadline), so
tests assert exact protocol behaviour in milliseconds of real time.
Faults are plain data: ``loss`` (probability per datagram), ``blocked``
(directed pairs of node indexes whose datagrams and streams vanish),
``crashed`` (nodes that neither receive nor tick).

Every tick is checked against the machine's promise that ``next_deadline()``
is None or later than ``now`` afterwards: a breach is recorded in
``late_deadlines`` (and the node is not re-armed at that instant, so a bug
shows up as a failed assertion, not as a simulation that spins forever).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from membership import Membership, NodeMeta, Status, SwimConfig
from membership.messages import Addr
from membership.signing import UnsignedIdentity, accept_unsigned


@dataclass
class Cluster:
    n: int
    seed: int = 1
    config: SwimConfig = field(default_factory=SwimConfig.lan)
    latency: float = 0.002
    loss: float = 0.0
    now: float = 0.0
    blocked: set[tuple[int, int]] = field(default_factory=set)
    crashed: set[int] = field(default_factory=set)
    auto_join: bool = True
    ids: list[str] | None = None
    """Node ids by index (default ``node-000``, ``node-001``, ...)."""

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.nodes: list[Membership] = []
        self.addr_index: dict[Addr, int] = {}
        self._heap: list[tuple[float, int, str, object]] = []
        self._seq = 0
        self._armed: dict[int, float] = {}
        self.events: list[tuple[int, object]] = []
        self.late_deadlines: list[tuple[int, float, float]] = []
        """(node, now, deadline) for each tick after which the deadline was still <= now."""
        self.delivered = 0
        for i in range(self.n):
            self.add_node(i)
        if self.auto_join:
            for i in range(1, self.n):
                self.nodes[i].join(self.nodes[0].addr, self.now)
            self.flush()

    def add_node(self, i: int, incarnation: int = 0, port: int | None = None) -> Membership:
        addr = ("10.0.0.1", port or 7000 + i)
        node = Membership(
            self.config,
            UnsignedIdentity(self.ids[i] if self.ids is not None else f"node-{i:03d}"),
            accept_unsigned,
            addr,
            NodeMeta(name=f"node-{i}", worker_type="cpu"),
            random.Random(self.seed * 1_000_003 + i),
            self.now,
            incarnation=incarnation,
        )
        if i < len(self.nodes):
            self.nodes[i] = node
        else:
            self.nodes.append(node)
        self.addr_index[addr] = i
        self._schedule_tick(i)
        return node

    # ------------------------------------------------------------ event loop

    def _push(self, when: float, kind: str, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, kind, payload))

    def _schedule_tick(self, i: int) -> None:
        # One live timer per node, as the daemon re-arms a single call_at: a tick event
        # whose time no longer matches the node's armed deadline is stale and ignored.
        deadline = self.nodes[i].next_deadline()
        if deadline is None:
            return
        when = max(deadline, self.now)
        if self._armed.get(i) != when:
            self._armed[i] = when
            self._push(when, "tick", (i, id(self.nodes[i])))

    def _cut(self, a: int, b: int) -> bool:
        return (a, b) in self.blocked or a in self.crashed or b in self.crashed

    def flush(self, i: int | None = None) -> None:
        """Move every machine's outbox onto the network."""
        for j in range(len(self.nodes)) if i is None else [i]:
            node = self.nodes[j]
            for data, addr in node.take_datagrams():
                dst = self.addr_index.get(addr)
                if dst is None or self._cut(j, dst) or self.rng.random() < self.loss:
                    continue
                self._push(self.now + self.latency, "dgram", (dst, data, node.addr))
            for req in node.take_streams():
                self._push(self.now + 2 * self.latency, "stream", (j, id(node), req))
            for ev in node.take_events():
                self.events.append((j, ev))
            self._schedule_tick(j)

    def step(self) -> bool:
        if not self._heap:
            return False
        when, _, kind, payload = heapq.heappop(self._heap)
        self.now = max(self.now, when)
        if kind == "tick":
            i, ident = payload  # type: ignore[misc]
            node = self.nodes[i]
            if id(node) != ident or i in self.crashed or self._armed.get(i) != when:
                return True
            del self._armed[i]
            node.tick(self.now)
            late = node.next_deadline()
            if late is not None and late <= self.now:
                self.late_deadlines.append((i, self.now, late))
                self._armed[i] = self.now  # what flush would re-arm: left alone, not re-pushed
            self.flush(i)
        elif kind == "dgram":
            dst, data, src = payload  # type: ignore[misc]
            if dst in self.crashed:
                return True
            self.delivered += 1
            self.nodes[dst].receive(data, src, self.now)
            self.flush(dst)
        elif kind == "stream":
            i, ident, req = payload  # type: ignore[misc]
            node = self.nodes[i]
            if id(node) != ident:
                return True
            dst = self.addr_index.get(req.addr)
            reply = None
            if dst is not None and not self._cut(i, dst) and not self._cut(dst, i):
                reply = self.nodes[dst].handle_stream(req.payload, node.addr, self.now)
                self.flush(dst)
            if req.expect_reply and i not in self.crashed:
                node.stream_reply(req.token, reply, self.now)
                self.flush(i)
        return True

    def run_until(self, pred: Callable[[], bool], max_time: float) -> bool:
        """Advance until ``pred()`` holds (True) or ``max_time`` simulated seconds pass (False)."""
        limit = self.now + max_time
        steps = 0
        while not pred():
            if not self._heap or self._heap[0][0] > limit:
                self.now = limit
                return pred()
            self.step()
            steps += 1
            assert steps < 5_000_000, "runaway simulation"
        return True

    def run_for(self, seconds: float) -> None:
        self.run_until(lambda: False, seconds)

    # ------------------------------------------------------------ faults and views

    def crash(self, i: int) -> None:
        self.crashed.add(i)

    def leave(self, i: int) -> None:
        """Node ``i`` announces a graceful leave and keeps running (to gossip it) until crashed."""
        self.nodes[i].leave(self.now)
        self.flush(i)

    def restart(self, i: int, incarnation: int = 0, port: int | None = None) -> Membership:
        """Bring node ``i`` back with the same identity (a fresh machine, as after a reboot)."""
        self.crashed.discard(i)
        old_addr = self.nodes[i].addr
        node = self.add_node(i, incarnation=incarnation, port=port)
        if port is not None:
            self.addr_index.pop(old_addr, None)
        seed = next(j for j in range(len(self.nodes)) if j != i and j not in self.crashed)
        node.join(self.nodes[seed].addr, self.now)
        self.flush(i)
        return node

    def partition(self, a: list[int], b: list[int]) -> None:
        for x in a:
            for y in b:
                self.blocked.add((x, y))
                self.blocked.add((y, x))

    def heal(self) -> None:
        self.blocked.clear()

    def status(self, observer: int, subject: int) -> Status | None:
        return self.nodes[observer].status_of(self.nodes[subject].id)

    def live(self) -> list[int]:
        return [i for i in range(len(self.nodes)) if i not in self.crashed]

    def all_see(self, subject: int, status: Status, observers: list[int] | None = None) -> bool:
        obs = [o for o in (observers if observers is not None else self.live()) if o != subject]
        return all(self.status(o, subject) is status for o in obs)

    def converged(self) -> bool:
        live = self.live()
        return all(self.status(o, s) is Status.ALIVE for o in live for s in live)
