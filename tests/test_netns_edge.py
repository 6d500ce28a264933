"""Edge promotion and demotion end to end: ``--type auto`` daemons on public addresses in the lab.

Three hosts get a second, globally routed address (tests/netns.py
``public=``, a closed lab: checked here too) and run ``--type auto`` bound to
it; one ordinary ``cpu`` node and one ``auto`` node on a private address
join them. The evidence window and hold time are cut to ``EDGE_WINDOW``
seconds (``--edge-window``, documented in the README) so the rule of
rmap2p/edge.py plays out in seconds instead of minutes.
"""

from __future__ import annotations

import re

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from netns import NetnsLab
from test_netns_cluster import LabPool, hostport, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.slow]

EDGE_WINDOW = 8.0
PUBLIC = [0, 1, 2]


def types(pool: LabPool, host: object) -> dict[str, str]:
    return {k: w["worker_type"] for k, w in pool.view(host).items() if w["status"] == "alive"}  # type: ignore[arg-type]


def test_auto_nodes_on_public_addresses_become_edges_and_are_demoted_when_unreachable(
    netns_lab: Callable[..., NetnsLab], tmp_path: Path
) -> None:
    lab = netns_lab(5, public=PUBLIC)
    assert lab.isolation_problems() == []
    pool = LabPool(lab, tmp_path)
    publics = [lab.hosts[i] for i in PUBLIC]
    ordinary, private_auto = lab.hosts[3], lab.hosts[4]
    window = ("--edge-window", str(EDGE_WINDOW))
    try:
        t0 = time.monotonic()
        first = publics[0]
        assert first.public_ip is not None
        # With services: leadership (/api/admin/leaders) goes to edge nodes that can run the coordinator.
        pool.start(first, "--type", "auto", *window, ip=first.public_ip, services=True)
        for h in publics[1:]:
            pool.start(h, "--type", "auto", *window, ip=h.public_ip, join=hostport(first.public_ip), services=True)
        pool.start(ordinary, "--type", "cpu", join=hostport(first.public_ip))
        pool.start(private_auto, "--type", "auto", *window, join=hostport(first.public_ip))
        names = {h.name for h in lab.hosts}
        edges = {h.name for h in publics}

        def promoted() -> bool:
            return all(
                set(t) == names and {k for k, v in t.items() if v == "edge"} == edges
                for t in (types(pool, h) for h in lab.hosts)
            )

        wait_for(promoted, 60, "the three public auto nodes to be edge everywhere")
        took = time.monotonic() - t0
        print(f"edge everywhere {took:.1f}s after the first start")
        # The private auto node resolved to its non-edge type and stays there.
        assert types(pool, ordinary)[private_auto.name] in ("cpu", "storage")
        ids = {w["worker_id"] for k, w in pool.view(ordinary).items() if k in edges}
        for h in lab.hosts:
            leaders = h.http_get_json("http://127.0.0.1:8080/api/admin/leaders")
            assert leaders["primary"] in ids, leaders
        # Each promoted edge became an introducer for the non-edge nodes' next start.
        for h in (ordinary, private_auto):
            wait_for(
                lambda h=h: all(p.public_ip in (tmp_path / h.name / "known_edges.txt").read_text() for p in publics),
                10, f"known_edges.txt of {h.name}",
            )

        # Demotion: no peer's UDP ping reaches h0 any more (TCP, and its own sends, still work).
        victim = publics[0]
        fallback = "storage" if types(pool, ordinary).get(private_auto.name) == "storage" else "cpu"
        lab.drop_incoming(victim, "udp")
        cut = time.monotonic()

        def demoted() -> bool:
            return all(types(pool, h).get(victim.name) not in (None, "edge") for h in lab.hosts if h is not victim)

        wait_for(demoted, 6 * EDGE_WINDOW, f"{victim.name} to be demoted everywhere")
        took = time.monotonic() - cut
        print(f"{victim.name} demoted everywhere {took:.1f}s after its inbound UDP was cut")
        # Never before a full hold time: the evidence can only have started to fail at the cut.
        assert took >= EDGE_WINDOW - 0.5, took
        assert types(pool, lab.hosts[1])[victim.name] == fallback
        err = "".join(p.read_text() for p in lab.log_dir.glob(f"{victim.name}-daemon*.stderr"))
        # Either symptom of the cut may be the one current when the hold time runs out: no UDP
        # ping from a peer within the window, or our own probes answered only by the slow TCP
        # fallback (their acks are UDP too), which drives the smoothed RTT over the limit first.
        assert re.search(r"demoted from edge: (no peer's ping reached us|smoothed probe RTT)", err), err[-2000:]
        # It stayed a member all along: the others reached it over TCP.
        assert all(pool.statuses(h)[victim.name] == "alive" for h in lab.hosts)

        # Healed: re-promotion waits a full hold time of good evidence (hysteresis), then happens.
        lab.heal()
        healed = time.monotonic()
        wait_for(promoted, 6 * EDGE_WINDOW, f"{victim.name} to be edge again")
        took = time.monotonic() - healed
        print(f"{victim.name} edge again {took:.1f}s after the heal")
        assert took >= EDGE_WINDOW - 1, took
    except BaseException:
        print(pool.logs())
        raise
