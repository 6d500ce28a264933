"""Self-assignment between real processes: services converge to the allocation and survive a crash."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import call_failed
from procs import NodeProc, wait_for

from allocator.allocate import allocate
from allocator.view import NodeView

pytestmark = pytest.mark.slow

TYPES = [("e0", "edge"), ("c0", "cpu"), ("c1", "cpu"), ("c2", "cpu"), ("e1", "edge"), ("s0", "storage")]


@pytest.fixture
def mixed(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[NodeProc]]:
    nodes = [NodeProc(name, tmp_path, extra=["--type", kind], services=True) for name, kind in TYPES]
    failed = True  # until the test's own outcome is known: a start that raises prints the logs too
    try:
        nodes[0].start().wait_healthy()
        for n in nodes[1:]:
            n.start(join=[nodes[0].gossip]).wait_healthy()
        yield nodes
        failed = call_failed(request)
    finally:
        if failed:
            for n in nodes:
                print(f"----- {n.name}\n{n.tail(80)}")
        for n in nodes:
            n.terminate()


def views_of(workers: dict[str, dict]) -> list[NodeView]:
    return [
        NodeView(
            node_id=w["worker_id"], worker_type=w["worker_type"], services=tuple(w["services"]),
            status=w["status"], can_run=tuple(w["capabilities"]),
        )
        for w in workers.values()
    ]


def settled(nodes: list[NodeProc]) -> bool:
    """Every live node sees the same pool, runs exactly its allocated row, and reports it healthy."""
    views = [n.view() for n in nodes]
    names = {n.name for n in nodes}
    for v in views:
        if {k for k, w in v.items() if w["status"] == "alive"} != names:
            return False
    if not all(agrees_on_itself(n, views) for n in nodes):
        return False
    ref = views[0]
    rows = allocate(views_of(ref))
    for name, w in ref.items():
        if w["status"] != "alive":
            continue
        if tuple(sorted(w["services"])) != tuple(sorted(rows.get(w["worker_id"], ()))):
            return False
        if any(h != "healthy" for h in w["services_status"].values()):
            return False
    return all({k: sorted(w["services"]) for k, w in v.items() if w["status"] == "alive"}
               == {k: sorted(w["services"]) for k, w in ref.items() if w["status"] == "alive"} for v in views)


def agrees_on_itself(node: NodeProc, views: list[dict[str, dict]]) -> bool:
    """Every view holds what `node` says of itself, and it has said what it can run.

    A node joins before it has probed its capabilities; until that update reaches every view the
    allocation gives it nothing, and an empty row that is "run nothing" would look settled.
    """
    me = node.view()[node.name]
    if not me["capabilities"]:
        return False
    return all(
        v[node.name]["capabilities"] == me["capabilities"] and sorted(v[node.name]["services"]) == sorted(me["services"])
        for v in views
    )


def covered(node: NodeProc) -> set[str]:
    return {g["service"] for g in node.get("/api/admin/gaps")["gaps"] if g["current_workers"] > 0}


def test_services_converge_to_the_allocation_and_move_after_a_crash(mixed: list[NodeProc]) -> None:
    took = wait_for(lambda: settled(mixed), 40, "services to converge to the allocation")
    print(f"converged in {took:.1f}s")
    gaps = [n.get("/api/admin/gaps") for n in mixed]
    assert all(g == gaps[0] for g in gaps), "every node computes the same gaps document"
    leaders = [n.get("/api/admin/leaders") for n in mixed]
    assert leaders[0]["primary"] is not None
    assert all(lead["primary"] == leaders[0]["primary"] for lead in leaders)
    before = covered(mixed[0])
    rows = {k: (w["status"], w["services_status"], w["capabilities"]) for k, w in mixed[0].view().items()}
    assert {"coordinator", "edge-proxy", "load-balancer", "ner-extraction", "document-processing", "notes-coa", "chromadb"} <= before, rows

    # Kill the CPU node that runs the most, so its services must move.
    cpus = [n for n in mixed if n.name.startswith("c")]
    victim = max(cpus, key=lambda n: (len(n.view()[n.name]["services"]), n.name))
    lost = set(victim.view()[victim.name]["services"])
    victim.kill()
    survivors = [n for n in mixed if n is not victim]
    took = wait_for(
        lambda: all(n.view()[victim.name]["status"] == "dead" for n in survivors) and settled_without(survivors, victim.name),
        40, "the dead node's services to run elsewhere",
    )
    print(f"{sorted(lost)} re-covered {took:.1f}s after SIGKILL")
    assert covered(survivors[0]) >= before

    # No flapping: the assignment stays put.
    snapshot = {n.name: sorted(n.view()[n.name]["services"]) for n in survivors}
    for _ in range(8):
        time.sleep(1)
        now = {n.name: sorted(n.view()[n.name]["services"]) for n in survivors}
        assert now == snapshot


def settled_without(nodes: list[NodeProc], dead: str) -> bool:
    views = [n.view() for n in nodes]
    ref = views[0]
    live = {k: w for k, w in ref.items() if w["status"] == "alive"}
    if set(live) != {n.name for n in nodes}:
        return False
    if not all(agrees_on_itself(n, views) for n in nodes):
        return False
    rows = allocate(views_of(ref))
    for w in live.values():
        if sorted(w["services"]) != sorted(rows.get(w["worker_id"], ())):
            return False
        if any(h != "healthy" for h in w["services_status"].values()):
            return False
    return True


def test_primary_leader_fails_over_within_one_failure_detection(tmp_path: Path) -> None:
    import math

    from membership import SwimConfig

    nodes = [NodeProc(f"edge{i}", tmp_path, extra=["--type", "edge"], services=True) for i in range(3)]
    nodes.append(NodeProc("cpu0", tmp_path, extra=["--type", "cpu"], services=True))
    try:
        nodes[0].start().wait_healthy()
        for n in nodes[1:]:
            n.start(join=[nodes[0].gossip]).wait_healthy()

        def one_primary(group: list[NodeProc]) -> str | None:
            docs = [n.get("/api/admin/leaders") for n in group]
            primaries = {d["primary"] for d in docs}
            if len(primaries) == 1 and None not in primaries and all(d["quorum"] for d in docs):
                return docs[0]["primary"]
            return None

        wait_for(lambda: settled(nodes) and one_primary(nodes) is not None, 40, "one primary named by every node")
        primary = one_primary(nodes)
        term = nodes[3].get("/api/admin/leaders")["term"]
        victim = next(n for n in nodes if n.view()[n.name]["worker_id"] == primary)
        victim.kill()
        survivors = [n for n in nodes if n is not victim]
        cfg = SwimConfig.local()
        detection = cfg.suspicion_max_mult * cfg.suspicion_mult * max(1.0, math.log10(4)) * cfg.probe_interval
        took = wait_for(
            lambda: (p := one_primary(survivors)) is not None and p != primary, detection + 5, "a new primary everywhere",
        )
        print(f"new primary {took:.1f}s after the old one was killed (detection bound {detection:.1f}s)")
        assert nodes[3].get("/api/admin/leaders")["term"] > term
    except BaseException:
        for n in nodes:
            print(f"----- {n.name}\n{n.tail(40)}")
        raise
    finally:
        for n in nodes:
            n.terminate()
