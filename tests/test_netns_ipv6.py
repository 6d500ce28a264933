"""Daemons on IPv6 only: ULA addresses in the lab, a join by address and one by bootstrap file alone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from netns import NetnsLab
from test_netns_cluster import GOSSIP_PORT, LabPool, hostport, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def test_ipv6_daemons_converge_through_a_bootstrap_file(netns_lab: Callable[..., NetnsLab], tmp_path: Path) -> None:
    lab = netns_lab(4, ipv6=True)
    pool = LabPool(lab, tmp_path)
    seed, joiner, booted, edge_booted = lab.hosts
    try:
        pool.start(seed, "--type", "edge", ip=seed.ip6)
        pool.start(joiner, ip=joiner.ip6, join=hostport(seed.ip6))
        for h in (booted, edge_booted):
            d = tmp_path / h.name
            d.mkdir(parents=True, exist_ok=True)
            (d / "bootstrap_nodes.txt").write_text(f"# the seed, by its IPv6 address\n[{seed.ip6}]:{GOSSIP_PORT}\n")
        pool.start(booted, ip=booted.ip6)
        pool.start(edge_booted, "--type", "edge", ip=edge_booted.ip6)
        names = {h.name for h in lab.hosts}
        took = wait_for(
            lambda: all({k for k, s in pool.statuses(h).items() if s == "alive"} == names for h in lab.hosts),
            40, "the IPv6 pool to converge",
        )
        print(f"4 IPv6 daemons converged in {took:.1f}s")
        # Addresses are written the way they are parsed back: [v6]:port.
        view = pool.view(booted)
        for h in lab.hosts:
            assert view[h.name]["address"] == f"[{h.ip6}]:{GOSSIP_PORT}", view[h.name]
        me = booted.http_get_json("http://127.0.0.1:8080/health")
        assert me["gossip"] == f"[{booted.ip6}]:{GOSSIP_PORT}", me
        # An edge that joined is remembered as an introducer, in the bootstrap file's syntax.
        wait_for(
            lambda: f"[{edge_booted.ip6}]:{GOSSIP_PORT}" in (tmp_path / joiner.name / "known_edges.txt").read_text(),
            10, "known_edges.txt with the IPv6 edge",
        )
        err = "".join(p.read_text() for p in lab.log_dir.glob("*-daemon*.stderr"))
        assert f"gossiping on [{seed.ip6}]:{GOSSIP_PORT}" in err
        assert "Traceback" not in err
    except BaseException:
        print(pool.logs())
        raise
