"""The service manager in-process on real membership machines, and the one allocation path
that the daemon's manager and the simulator share."""

from __future__ import annotations

import ast
import asyncio
import os
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from cluster import Cluster
from pool_handles import MachineHandle

from allocator.actions import NodeActions, node_actions
from allocator.allocate import allocate
from allocator.catalog import CATALOG, ServiceSpec
from allocator.gaps import gaps
from allocator.handover import plan
from allocator.members import capabilities, to_node_views
from allocator.standby import standby_for
from allocator.view import NodeView
from membership import Membership
from services.manager import ServiceManager
from services.runner import PlaceholderRunner, Runner
from simulations.engine import CrashRunners, SimOptions, Simulation

ROOT = Path(__file__).resolve().parent.parent
CPU_SERVICES = tuple(s.name for s in CATALOG if s.requires == "cpu")


# ---------------------------------------------------------------- the hand-over rule, as a table


@pytest.mark.parametrize(
    ("running", "desired", "others_healthy", "start", "stop", "keep"),
    [
        ((), ("a",), (), ("a",), (), ()),
        (("a",), ("a",), (), (), (), ()),
        (("a",), ("b",), (), ("b",), (), ("a",)),  # nobody else serves a: keep it until someone does
        (("a",), ("b",), ("a",), ("b",), ("a",), ()),  # another node serves a healthy: hand it over
        (("a", "c"), ("b",), ("c",), ("b",), ("c",), ("a",)),
    ],
)
def test_handover_plan(running: tuple, desired: tuple, others_healthy: tuple, start: tuple, stop: tuple, keep: tuple) -> None:
    view = [
        NodeView("me", "cpu", running, healthy_services=running),
        NodeView("other", "cpu", others_healthy, healthy_services=others_healthy),
        NodeView("dead", "cpu", ("a", "b", "c"), status="dead", healthy_services=("a", "b", "c")),
    ]
    p = plan("me", running, desired, view)
    assert (p.start, p.stop, p.keep_for_handover) == (start, stop, keep)


def test_capabilities_are_the_services_of_the_type_minus_the_unavailable() -> None:
    assert capabilities("cpu") == CPU_SERVICES
    assert capabilities("cpu", {"notes-coa"}) == CPU_SERVICES[:-1]
    assert capabilities("quantum") == CPU_SERVICES, "an unknown type counts as CPU, as in the views"
    gpu = tuple(s.name for s in CATALOG if s.requires == "gpu")
    assert capabilities("gpu") == gpu + CPU_SERVICES, "a GPU node can stand in for CPU work"
    assert capabilities("storage") == tuple(s.name for s in CATALOG if s.requires == "storage")


# ---------------------------------------------------------------- the manager on real machines


def _factory(spec: ServiceSpec) -> Runner:
    return PlaceholderRunner(spec.name, "127.0.0.1", 0, "test")


async def test_managers_on_real_machines_cover_the_cpu_services_and_gossip_their_health() -> None:
    cluster = Cluster(4, ids=["c0", "c1", "c2", "c3"])
    assert cluster.run_until(cluster.converged, 30.0)
    handles = [MachineHandle.of_cluster(cluster, i) for i in range(4)]
    managers = [ServiceManager(h, factory=_factory) for h in handles]
    try:
        # Round 1 publishes what each can run; nothing is assigned before capabilities are known.
        for m in managers:
            await m.reconcile()
            assert m.running == {}
        everyone_knows = lambda: all(  # noqa: E731
            mv.meta.capabilities == CPU_SERVICES for h in handles for mv in h.members()
        )
        assert cluster.run_until(everyone_knows, 30.0)
        # Round 2 starts each node's row; round 3 sees the runners healthy and gossips it.
        for m in managers:
            await m.reconcile()
        cluster.run_for(5.0)
        for m in managers:
            await m.reconcile()
        views = to_node_views(handles[0].members())
        assert cluster.run_until(
            lambda: all(set(h.meta.healthy_services) == set(m.running) for h, m in zip(handles, managers)), 10.0
        )
        cluster.run_for(5.0)
        views = to_node_views(handles[0].members())
        rows = allocate(views)
        for h, m in zip(handles, managers):
            assert set(m.running) == set(rows.get(h.node_id, ())), h.node_id
            assert all(health == "healthy" for health in m.running.values())
            assert all(h.meta.port_of(s) for s in m.running), "each service's port is gossiped"
        doc = gaps(views)
        covered = {e["service"] for e in doc["gaps"] if e["current_workers"] >= 1}
        assert covered == set(CPU_SERVICES), doc
    finally:
        for m in managers:
            await m.stop_all()


async def test_a_failed_runner_is_dropped_from_the_capabilities() -> None:
    cluster = Cluster(1, ids=["solo"])
    handle = MachineHandle.of_cluster(cluster, 0)

    class Broken(PlaceholderRunner):
        async def start(self) -> None:
            from services.runner import RunnerError

            raise RunnerError(f"{self.service}: binary missing")

    manager = ServiceManager(handle, factory=lambda spec: Broken(spec.name, "127.0.0.1", 0, "solo"))
    await manager.reconcile()
    assert handle.meta.capabilities == CPU_SERVICES
    for _ in range(len(CPU_SERVICES)):
        await manager.reconcile()  # tries its row, every start fails; the allocation offers the rest
    assert manager.running == {}
    assert handle.meta.capabilities == (), "nothing that cannot start is advertised"


# ---------------------------------------------------------------- one path for the daemon and the simulator


class _Adopted:
    """A runner that is already running (the simulator's node runs it): what the manager holds."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.port = None
        self.loaded_models: tuple[str, ...] = ()

    async def start(self) -> None:
        return None

    async def health(self) -> str:
        return "healthy"

    async def stop(self) -> None:
        return None


async def _manager_decision(machine: Membership, now: float, running: Iterable[str]) -> NodeActions:
    """The daemon's manager on ``machine``, holding ``running``: what it would do now."""
    handle = MachineHandle(lambda: machine, lambda: now)
    handle.update_meta = lambda change: None  # type: ignore[method-assign]  # observe only: gossip nothing
    manager = ServiceManager(handle, factory=lambda spec: _Adopted(spec.name))
    for service in running:
        await manager._start(service)
    return manager.decide()


async def test_the_simulator_and_the_manager_take_the_same_decisions_on_one_view() -> None:
    options = SimOptions(
        nodes=16, seconds=60.0, seed=3, start="warm", updates=0, allocator=True,
        actions=(CrashRunners("llm-inference", 25.0), CrashRunners("redis", 25.0)),
    )
    sim = Simulation(options)
    compared = busy = 0
    t = 20.0
    while t < 60.0:  # through detection, re-allocation and the hand-overs that follow
        sim.run_until(t)
        for i in sim.live_nodes():
            machine = sim.machines[i]
            assert machine is not None
            running = tuple(sim.alloc[i].running)  # type: ignore[index]
            daemon = await _manager_decision(machine, sim.now, running)
            simulated = sim.decide(i)
            assert daemon == simulated, (sim.now, i, daemon, simulated)
            assert daemon == node_actions(machine.id, to_node_views(machine.members()), running)
            compared += 1
            busy += bool(daemon.start or daemon.stop or daemon.keep_for_handover)
        t += 0.25
    assert sim.figures(0.0).uncovered_at_end == 0
    # The comparison covered moments with something to do, not only settled nodes.
    assert busy >= 3, (busy, compared)


# ---------------------------------------------------------------- the layering


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add((node.module or "").split(".")[0])
    return names


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("services", {"rmap2p", "simulations"}),
        ("allocator", {"rmap2p", "services", "p2p", "simulations", "aiohttp"}),
        ("membership", {"rmap2p", "services", "p2p", "simulations", "allocator", "aiohttp"}),
    ],
)
def test_imports_point_down(package: str, forbidden: set[str]) -> None:
    bad = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for name in _imports(path) & forbidden
    }
    assert not bad, sorted(bad)


# ---------------------------------------------------------------- load progress in the gossiped metadata


async def test_how_far_a_model_loaded_is_gossiped_while_it_loads_and_gone_once_healthy() -> None:
    import os
    import sys
    import time

    from allocator.gaps import services_doc
    from services.load_progress import GOSSIP_STEP, add_loading
    from services.runners.process import ProcessRunner
    from services.supervisor import RestartPolicy

    tests_dir = str(Path(__file__).resolve().parent)
    env = {"CHILD_MODE": "progress", "CHILD_STEP": "0.5", "PYTHONPATH": os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")])}
    policy = RestartPolicy(backoff_initial=0.2, backoff_max=0.8, ready_timeout=30.0, check_interval=0.1)
    assert sys.executable
    cluster = Cluster(2, ids=["solo", "peer"])
    assert cluster.run_until(cluster.converged, 30.0)
    handle, peer = MachineHandle.of_cluster(cluster, 0), MachineHandle.of_cluster(cluster, 1)
    manager = ServiceManager(handle, factory=lambda spec: ProcessRunner(spec.name, "service_child", "127.0.0.1", 0, "solo", env, policy=policy))
    seen: dict[str, list[int]] = {}
    docs: list[dict] = []
    try:
        await manager.reconcile()  # publishes what it can run
        cluster.run_for(2.0)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            await manager.reconcile()
            cluster.run_for(0.5)
            solo = next(m for m in peer.members() if m.node == "solo")
            for service, percent in solo.meta.loading:
                if not seen.get(service) or seen[service][-1] != percent:
                    seen.setdefault(service, []).append(percent)
                    doc = services_doc(to_node_views(peer.members()))
                    add_loading(doc, peer.members())
                    docs.append({e["name"]: e["loading"] for e in doc["services"]})  # type: ignore[index]
            if manager.running and all(h == "healthy" for h in manager.running.values()) and not solo.meta.loading:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"not all healthy: {manager.running}, seen {seen}")
        assert set(seen) == set(manager.running), "every loading service was reported"
        for service, figures in seen.items():
            assert figures == sorted(figures) and any(0 < p < 100 for p in figures), (service, figures)
            assert all(p % GOSSIP_STEP == 0 for p in figures), "gossiped in steps"
        assert any(d[s] and d[s][0]["node_id"] == "solo" and 0 < d[s][0]["progress"] < 100 for d in docs for s in seen), docs
        assert handle.meta.loading == ()
    finally:
        await manager.stop_all()


async def test_the_next_host_keeps_a_warm_standby_and_serves_at_once_when_the_runner_dies() -> None:
    """A model service's successor (``allocator.standby``) loads it beforehand: after the runner's node dies,
    the successor serves it healthy in its first reconcile, from the same process, with no model load."""
    from services.runners.process import ProcessRunner
    from services.supervisor import RestartPolicy

    tests_dir = str(Path(__file__).resolve().parent)
    child_env = {"CHILD_MODE": "progress", "CHILD_STEP": "0.4", "PYTHONPATH": os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")])}
    policy = RestartPolicy(backoff_initial=0.2, backoff_max=0.8, ready_timeout=30.0, check_interval=0.1)
    ids = ["c0", "c1", "c2"]
    cluster = Cluster(3, ids=ids)
    assert cluster.run_until(cluster.converged, 30.0)
    handles = [MachineHandle.of_cluster(cluster, i) for i in range(3)]
    managers = [
        ServiceManager(
            h, factory=lambda spec, h=h: ProcessRunner(spec.name, "service_child", "127.0.0.1", 0, h.node_id, child_env, policy=policy),
            probe=lambda gpus: {}, env={"RMAP2P_WARM_STANDBY": "ner-extraction"},
        )
        for h in handles
    ]  # fmt: skip

    async def settle() -> None:
        for m in managers:
            await m.reconcile()
        cluster.run_for(0.5)
        await asyncio.sleep(0.1)

    try:
        deadline = time.monotonic() + 60
        while True:
            await settle()
            runners = [i for i, m in enumerate(managers) if m.running.get("ner-extraction") == "healthy"]
            standing = [i for i, m in enumerate(managers) if "ner-extraction" in m.standbys]
            if len(runners) == 1 and len(standing) == 1 and await managers[standing[0]].standbys["ner-extraction"].health() == "healthy":
                break
            assert time.monotonic() < deadline, ([m.running for m in managers], [list(m.standbys) for m in managers])
        victim, heir = runners[0], standing[0]
        assert heir != victim
        views = to_node_views(handles[heir].members())
        assert standby_for(ids[heir], views, ("ner-extraction",)) == ("ner-extraction",)
        warm = managers[heir].standbys["ner-extraction"]
        assert "ner-extraction" not in handles[heir].meta.services, "a standby is not advertised"

        cluster.crash(victim)
        assert cluster.run_until(lambda: all(m.status.label == "dead" for m in handles[heir].members() if m.node == ids[victim]), 60.0)
        await managers[heir].reconcile()
        assert managers[heir].runner("ner-extraction") is warm, "the standby's process serves, not a fresh one"
        assert managers[heir].running["ner-extraction"] == "healthy"
        assert "ner-extraction" not in managers[heir].standbys
        assert dict(handles[heir].meta.services)["ner-extraction"] == "healthy"
    finally:
        for m in managers:
            await m.stop_all()
