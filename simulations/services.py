"""The services layer of simulated nodes: each runs its row of the allocation as the daemon does.

Every node decides with ``allocator.actions.node_actions`` on its own view,
the function the daemon's ``services.manager.ServiceManager`` calls: it
re-allocates half a second after membership news (debounced), announces what
it starts as ``starting`` and, ``service_start_s`` later, ``healthy``, and
stops a service the allocation moved away only once another live node
reports it healthy (make-before-break). No runner runs: a service is a
start time. The figures are about coverage: how long a crash left some
service without a healthy runner, and how many services moved.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from allocator.actions import NodeActions, node_actions
from allocator.allocate import allocate
from allocator.members import to_node_views, worker_type_of
from allocator.view import NodeView
from membership import EventKind, MemberEvent

if TYPE_CHECKING:
    from simulations.engine import Simulation

DEBOUNCE_S = 0.5
"""A burst of membership news costs one allocation, this long after the first of it."""
CACHE_LIMIT = 4096


@dataclass(slots=True)
class NodeServices:
    """What one node runs, each service with the time it turns healthy."""

    running: dict[str, float] = field(default_factory=dict)
    dirty: bool = False
    scheduled: bool = False


class ServiceEmulation:
    """The allocator and hand-over of every node of ``sim``, and the coverage figures."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.nodes = [NodeServices() for _ in range(sim.n)]
        self._cache: dict[tuple, dict[str, tuple[str, ...]]] = {}
        self.first_crash: float | None = None
        self.moved = 0
        self.coverage_gaps: list[float] = []
        self._uncovered_since: float | None = None

    # ------------------------------------------------------------ driven by the engine

    def on_events(self, i: int, events: list[MemberEvent]) -> None:
        # Suspect members count as alive for allocation, so a suspicion alone changes nothing.
        if any(ev.kind is not EventKind.SUSPECT for ev in events):
            self.mark_dirty(i)

    def on_crash(self) -> None:
        if self.first_crash is None:
            self.first_crash = self.sim.now
        self.check_coverage()

    def forget(self, i: int) -> None:
        """Node ``i`` restarts: it runs nothing until the allocation gives it a row again."""
        self.nodes[i] = NodeServices()

    def mark_dirty(self, i: int) -> None:
        st = self.nodes[i]
        st.dirty = True
        if not st.scheduled:
            st.scheduled = True
            gen = self.sim.gen[i]
            self.sim.at(self.sim.now + DEBOUNCE_S, lambda: self._reallocate(i, gen))

    def decide(self, i: int) -> NodeActions:
        """``node_actions`` on node ``i``'s own view; the allocation is cached across nodes sharing a view."""
        m = self.sim.machines[i]
        assert m is not None
        views = to_node_views(m.members())
        key = tuple(
            (v.node_id, v.worker_type, v.status, v.incarnation, v.services, v.can_run, v.specialization) for v in views
        )
        allocation = self._cache.get(key)
        if allocation is None:
            allocation = allocate(views)
            if len(self._cache) > CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = allocation
        return node_actions(self.sim.ids[i], views, self.nodes[i].running, allocation=allocation)

    # ------------------------------------------------------------ one node

    def _reallocate(self, i: int, gen: int) -> None:
        sim = self.sim
        m = sim.machines[i]
        st = self.nodes[i]
        st.scheduled = False
        if m is None or sim.gen[i] != gen or sim.leaving[i] or not st.dirty:
            return
        st.dirty = False
        actions = self.decide(i)
        if not actions.start and not actions.stop:
            return
        start_s = sim.options.service_start_s
        for s in actions.start:
            st.running[s] = sim.now + start_s
            if self.first_crash is not None:
                self.moved += 1
        for s in actions.stop:
            del st.running[s]
        self._publish(i)
        if actions.start:
            sim.at(sim.now + start_s + 1e-6, lambda: self._settle(i, gen))

    def _publish(self, i: int) -> None:
        sim = self.sim
        m = sim.machines[i]
        if m is None:
            return
        now = sim.now
        pairs = tuple((s, "healthy" if t <= now else "starting") for s, t in sorted(self.nodes[i].running.items()))
        meta = replace(m.meta, services=pairs)
        if meta != m.meta:
            m.update_meta(meta, now)
            sim.metas[i] = m.meta
            sim.drain(i, m)
        self.check_coverage()

    def _settle(self, i: int, gen: int) -> None:
        if self.sim.machines[i] is None or self.sim.gen[i] != gen:
            return
        self._publish(i)
        # A service turning healthy may let this node hand over others (and the pool's plan change).
        self.mark_dirty(i)

    # ------------------------------------------------------------ figures

    def check_coverage(self) -> None:
        """Time each stretch during which a crash left some service without a healthy live runner."""
        if self.first_crash is None:
            return
        if self.uncovered_services():
            if self._uncovered_since is None:
                self._uncovered_since = self.sim.now
        elif self._uncovered_since is not None:
            self.coverage_gaps.append(self.sim.now - self._uncovered_since)
            self._uncovered_since = None

    def uncovered_services(self) -> list[str]:
        """Services the allocator assigns on the true view of the live nodes that no live node
        reports healthy. (A service the allocator leaves as a gap by its own rule, e.g. for want
        of capacity, is not counted: no amount of waiting covers it.)"""
        sim = self.sim
        truth = []
        healthy: set[str] = set()
        for i in sim.live_nodes():
            meta = sim.machines[i].meta  # type: ignore[union-attr]
            truth.append(
                NodeView(
                    node_id=sim.ids[i],
                    worker_type=worker_type_of(meta.worker_type),
                    services=meta.service_names,
                    can_run=meta.capabilities,
                    specialization=meta.specialization,
                )
            )
            healthy.update(meta.healthy_services)
        wanted: set[str] = set()
        for row in allocate(truth).values():
            wanted.update(row)
        return sorted(wanted - healthy)

    def figures(self) -> tuple[int, float | None, int]:
        """Services uncovered now, the longest stretch a crash left one uncovered (None: no crash,
        or still uncovered), and services moved since the first crash."""
        uncovered = len(self.uncovered_services())
        covered_s = None
        if self.first_crash is not None and not uncovered:
            # 0: redundancy absorbed the crash.
            covered_s = max(self.coverage_gaps, default=0.0)
        return uncovered, covered_s, self.moved
