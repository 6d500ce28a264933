"""The daemon's side of the reachability check: answer edges' probes and checks, check itself on a schedule.

At start (once the first join round is over) and every ``interval``
seconds a node asks up to two edge nodes of its view to reach it back at
its own gossip address (``Node.gossip_addr``: the address it would be
reached at directly, whatever a relay later advertises for it) and logs
the verdict. While the verdict is unknown (no edge in the view, none
answering) it asks again sooner, at ``retry`` seconds doubling up to
``interval``. The protocol and the verdict are in ``membership/reach.py``,
the sockets in ``p2p/reachability.py``.

For the rest of the daemon: ``Node.reachability`` is the latest verdict
(``membership.reach.Reachability``: ``.reachable`` True/False/None for
unknown, ``.needs_relay``, ``.observed``...) and ``Node.on_reachability(callback)`` calls
``callback(verdict)`` whenever the verdict changes (unknown → direct,
direct → unreachable...). ``--relay auto`` reads them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from membership import wire
from membership.messages import Addr, ReachCheck, ReachProbe
from membership.reach import UNKNOWN, Reachability, Verdict, pick_edges, should_answer
from p2p.discovery import format_host_port
from p2p.reachability import (
    MAX_CHECKS_IN_FLIGHT,
    ProbeInbox,
    check_reachability,
    probe_back,
)

if TYPE_CHECKING:
    from rmap2p.daemon import Node

log = logging.getLogger(__name__)

RETRY_INTERVAL = 15.0
"""First retry while the verdict is unknown; doubles up to the check interval."""


class ReachMonitor:
    def __init__(self, node: Node, interval: float, retry: float = RETRY_INTERVAL) -> None:
        self.node = node
        self.interval = interval
        self.retry = min(retry, interval) if interval > 0 else retry
        self.inbox = ProbeInbox()
        self.address: Addr | None = None
        """The address edges are asked to reach: ``Node.gossip_addr`` as it is when the monitor
        starts (the node's own, direct address), so a node a relay re-addresses later keeps
        checking whether it could do without."""
        self.verdict: Reachability = UNKNOWN
        self.checked_at: float | None = None
        """Unix time of the latest check (None before the first)."""
        self.checks = 0
        self._listeners: list[Callable[[Reachability], None]] = []
        self._in_flight = 0
        self._rng = random.Random()

    def on_change(self, callback: Callable[[Reachability], None]) -> None:
        self._listeners.append(callback)

    def to_json(self) -> dict[str, object]:
        return {**self.verdict.to_json(), "checked_at": self.checked_at, "checks": self.checks}

    # ------------------------------------------------------------ inbound

    def datagram(self, probe: ReachProbe) -> None:
        """A probe datagram reached our gossip socket."""
        if not self.inbox.arrived(probe, "udp"):
            log.debug("node %s: probe datagram from edge %s for no check in flight (a late copy, or not ours)", self._me(), probe.edge)

    async def frame(self, msg: ReachCheck | ReachProbe, peer: Addr) -> bytes | None:
        """A check (we act as the edge) or a probe frame (an edge reaching us) on our gossip port."""
        if isinstance(msg, ReachProbe):
            # Echoed so the edge knows its frame got through; unexpected nonces are echoed too
            # (they prove nothing to us, and the edge learns only that our port answers).
            self.inbox.arrived(msg, "tcp")
            return wire.encode_frame(msg)
        machine = self.node.machine
        if machine is None:
            return None
        why = should_answer(machine.alive_record(msg.node) is not None, self._in_flight, MAX_CHECKS_IN_FLIGHT)
        if why is not None:
            log.debug("node %s: ignored a reachability check from %s (%s): %s", machine.id, msg.node, format_host_port(*peer), why)
            return None
        self._in_flight += 1
        try:
            result = await probe_back(
                msg, machine.id, peer, bind_host=self.node.config.bind[0], sealer=self.node.sealer,
                cluster=self.node.config.cluster, max_frame=self.node.config.swim.max_stream_frame + 64,
            )
        finally:
            self._in_flight -= 1
        log.debug(
            "node %s: reachability check for %s at %s: udp sent %s, tcp %s%s", machine.id, msg.node,
            format_host_port(msg.host, msg.port), result.udp_sent, result.tcp_reached,
            f" ({result.error})" if result.error else "",
        )
        return wire.encode_frame(result)

    # ------------------------------------------------------------ our own check

    def edges(self) -> list[tuple[str, Addr]]:
        machine = self.node.machine
        if machine is None:
            return []
        candidates = [
            (m.node, m.addr) for m in machine.members() if m.meta.worker_type == "edge" and m.status.label == "alive"
        ]
        return pick_edges(candidates, machine.id, self._rng)

    async def check_now(self) -> Reachability:
        """Ask the edges now; record, log and announce the verdict."""
        node = self.node
        machine = node.machine
        address = self.address or node.gossip_addr
        if machine is None or address is None:
            return self.verdict
        edges = self.edges()
        if edges:
            verdict, _answers = await check_reachability(
                edges, address, machine.id, self.inbox, sealer=node.sealer, cluster=node.config.cluster
            )
        else:
            verdict = Reachability(Verdict.UNKNOWN, address)
        self.checks += 1
        self.checked_at = time.time()
        before, self.verdict = self.verdict, verdict
        changed = (before.verdict, before.udp, before.tcp) != (verdict.verdict, verdict.udp, verdict.tcp)
        level = logging.INFO if changed or self.checks == 1 else logging.DEBUG
        if verdict.needs_relay and changed:
            level = logging.WARNING
        text = verdict.describe(machine.id)
        if not edges:
            text = f"node {machine.id}: reachability unknown: no edge node in the pool to check it (treated as direct)"
        log.log(level, "%s", text)
        if changed:
            for listener in self._listeners:
                listener(verdict)
        return verdict

    async def run(self) -> None:
        """At start, then every ``interval`` (sooner while unknown). Disabled with ``interval`` 0."""
        if self.interval <= 0:
            return
        # Pinned before any relay re-addresses the node: the question is always whether the
        # node is reachable at its own address, never at a relay's allocation.
        if self.address is None:
            self.address = self.node.gossip_addr
        await self.node.settled.wait()
        retry = self.retry
        while True:
            verdict = await self.check_now()
            if verdict.verdict is Verdict.UNKNOWN:
                await asyncio.sleep(retry)
                retry = min(retry * 2, self.interval)
            else:
                retry = self.retry
                await asyncio.sleep(self.interval)

    def _me(self) -> str:
        return self.node.machine.id if self.node.machine else "?"
