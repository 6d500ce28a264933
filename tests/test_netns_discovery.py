"""Discovery between hosts: mDNS alone, a bootstrap file alone, a partition that heals, a copied identity."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from netns import NetnsLab
from test_netns_cluster import GOSSIP_PORT, LabPool, wait_for

from allocator.allocate import allocate
from allocator.view import NodeView

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def alive_sets(pool: LabPool, hosts: list) -> list[set[str]]:
    return [{k for k, s in pool.statuses(h).items() if s == "alive"} for h in hosts]


def test_eight_hosts_find_each_other_by_mdns_alone(netns_lab: Callable[..., NetnsLab], tmp_path: Path) -> None:
    lab = netns_lab(8)
    pool = LabPool(lab, tmp_path)
    try:
        for h in lab.hosts:
            pool.start(h, mdns=True)
        names = {h.name for h in lab.hosts}
        took = wait_for(lambda: all(s == names for s in alive_sets(pool, lab.hosts)), 60, "mDNS-only convergence")
        print(f"8 hosts converged by mDNS in {took:.1f}s")
    except BaseException:
        print(pool.logs())
        raise


def test_bootstrap_file_naming_one_edge_node_is_enough(netns_lab: Callable[..., NetnsLab], tmp_path: Path) -> None:
    lab = netns_lab(4)
    pool = LabPool(lab, tmp_path)
    edge, *others = lab.hosts
    try:
        pool.start(edge, "--type", "edge")
        for h in others:
            d = tmp_path / h.name
            d.mkdir(parents=True, exist_ok=True)
            (d / "bootstrap_nodes.txt").write_text(f"# the pool's edge node\n{edge.ip}:{GOSSIP_PORT}\n")
            pool.start(h)
        names = {h.name for h in lab.hosts}
        wait_for(lambda: all(s == names for s in alive_sets(pool, lab.hosts)), 40, "joining through the bootstrap file")
        # The edge node is remembered as an introducer for the next start.
        wait_for(lambda: edge.ip in (tmp_path / others[0].name / "known_edges.txt").read_text(), 10, "known_edges.txt")
    except BaseException:
        print(pool.logs())
        raise


TYPES = ["edge", "storage", "cpu", "cpu", "cpu", "edge", "storage", "cpu"]


def running_matches_allocation(pool: LabPool, hosts: list) -> bool:
    """Every host sees the same services and each runs exactly its row of allocate() on that view."""
    views = [pool.view(h) for h in hosts]
    ref = views[0]
    if any({k: sorted(w["services"]) for k, w in v.items()} != {k: sorted(w["services"]) for k, w in ref.items()} for v in views):
        return False
    nodes = [
        NodeView(node_id=w["worker_id"], worker_type=w["worker_type"], services=tuple(w["services"]),
                 status=w["status"], can_run=tuple(w["capabilities"]))
        for w in ref.values()
    ]
    rows = allocate(nodes)
    return all(
        sorted(w["services"]) == sorted(rows.get(w["worker_id"], ()))
        and all(hs == "healthy" for hs in w["services_status"].values())
        for w in ref.values() if w["status"] == "alive"
    )


def test_partition_five_three_heals_into_one_view(netns_lab: Callable[..., NetnsLab], tmp_path: Path) -> None:
    lab = netns_lab(8)
    pool = LabPool(lab, tmp_path)
    try:
        first = lab.hosts[0]
        pool.start(first, "--type", TYPES[0], services=True)
        for h, kind in zip(lab.hosts[1:], TYPES[1:]):
            pool.start(h, "--type", kind, join=first, services=True)
        names = {h.name for h in lab.hosts}
        wait_for(lambda: all(s == names for s in alive_sets(pool, lab.hosts)), 60, "convergence")
        wait_for(lambda: running_matches_allocation(pool, lab.hosts), 30, "services to match the allocation")
        big, small = lab.hosts[:5], lab.hosts[5:]
        lab.partition(big, small)
        big_names, small_names = {h.name for h in big}, {h.name for h in small}

        def split_seen() -> bool:
            for h in big:
                st = pool.statuses(h)
                if any(st.get(n) != "dead" for n in small_names):
                    return False
            for h in small:
                st = pool.statuses(h)
                if any(st.get(n) != "dead" for n in big_names):
                    return False
            return True

        took = wait_for(split_seen, 90, "each side to see the other as dead")
        print(f"split detected in {took:.1f}s")
        # The minority sees it lacks most edge nodes it knows of, so it names no primary.
        minority = [h.http_get_json("http://127.0.0.1:8080/api/admin/leaders") for h in small]
        assert all(d["primary"] is None for d in minority), minority
        lab.heal()
        push_pull = 30.0  # LAN profile at N <= 32
        took = wait_for(lambda: all(s == names for s in alive_sets(pool, lab.hosts)), 2 * push_pull + 10, "merge after heal")
        print(f"one view again {took:.1f}s after heal")
        assert took <= 2 * push_pull + 5
        # Both halves ran their own copies during the split; once merged, the allocation sheds
        # the duplicates (make-before-break) and each storage service is covered once, not twice.
        wait_for(lambda: running_matches_allocation(pool, lab.hosts), 30, "services to match the merged allocation")
        gaps = {g["service"]: g["current_workers"] for g in lab.hosts[0].http_get_json("http://127.0.0.1:8080/api/admin/gaps")["gaps"]}
        assert gaps["chromadb"] == 1 and gaps["redis"] == 1, gaps
        leaders = [h.http_get_json("http://127.0.0.1:8080/api/admin/leaders") for h in lab.hosts]
        assert len({d["primary"] for d in leaders}) == 1 and leaders[0]["primary"] is not None
    except BaseException:
        print(pool.logs())
        raise


def test_copied_data_dir_newcomer_stops_with_a_clear_error(netns_lab: Callable[..., NetnsLab], tmp_path: Path) -> None:
    lab = netns_lab(3)
    pool = LabPool(lab, tmp_path)
    a, b, twin = lab.hosts
    try:
        pool.start(a)
        pool.start(b, join=a)
        wait_for(lambda: alive_sets(pool, [a])[0] == {a.name, b.name}, 30, "two nodes")
        time.sleep(1)
        shutil.copytree(tmp_path / b.name, tmp_path / twin.name, ignore=shutil.ignore_patterns("lock"))
        pool.start(twin, join=a)
        proc = pool.procs[twin.name]
        rc = proc.wait(timeout=30)  # type: ignore[attr-defined]
        assert rc == 1
        err = next(lab.log_dir.glob(f"{twin.name}-daemon*.stderr")).read_text()
        assert "already runs with this identity" in err
        # The original keeps its place.
        time.sleep(2)
        assert pool.statuses(a)[b.name] == "alive"
        assert pool.view(a)[b.name]["address"].startswith(b.ip + ":")
    except BaseException:
        print(pool.logs())
        raise


def test_pools_with_different_cluster_names_do_not_merge_over_mdns(netns_lab: Callable[..., NetnsLab], tmp_path: Path) -> None:
    lab = netns_lab(4)
    pool = LabPool(lab, tmp_path)
    try:
        for i, h in enumerate(lab.hosts):
            pool.start(h, "--cluster", "blue" if i % 2 == 0 else "green", mdns=True)
        blue = {lab.hosts[0].name, lab.hosts[2].name}
        green = {lab.hosts[1].name, lab.hosts[3].name}
        wait_for(
            lambda: all(alive_sets(pool, [h])[0] == (blue if i % 2 == 0 else green) for i, h in enumerate(lab.hosts)),
            30, "two separate pools",
        )
        time.sleep(6)  # several more discovery and re-contact rounds: still apart
        assert all(set(pool.view(h)) == (blue if i % 2 == 0 else green) for i, h in enumerate(lab.hosts))
    except BaseException:
        print(pool.logs())
        raise
