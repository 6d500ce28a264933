"""Discovery between hosts: mDNS alone, a bootstrap file alone, a partition that heals, a copied identity."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from netns import NetnsLab
from test_netns_cluster import GOSSIP_PORT, LabPool, wait_for

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


def test_partition_five_three_heals_into_one_view(netns_lab: Callable[..., NetnsLab], tmp_path: Path) -> None:
    lab = netns_lab(8)
    pool = LabPool(lab, tmp_path)
    try:
        first = lab.hosts[0]
        pool.start(first)
        for h in lab.hosts[1:]:
            pool.start(h, join=first)
        names = {h.name for h in lab.hosts}
        wait_for(lambda: all(s == names for s in alive_sets(pool, lab.hosts)), 60, "convergence")
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
        lab.heal()
        push_pull = 30.0  # LAN profile at N <= 32
        took = wait_for(lambda: all(s == names for s in alive_sets(pool, lab.hosts)), 2 * push_pull + 10, "merge after heal")
        print(f"one view again {took:.1f}s after heal")
        assert took <= 2 * push_pull + 5
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
