"""``--relay auto``: the reachability verdict (``Node.set_reachable``) moves a node onto a relay and back.

Real ``Node`` daemons in one process on loopback UDP and TCP (no HTTP):
an edge, a node in ``auto`` mode and a plain observer. A verdict of
"unreachable" must make the auto node re-advertise at an allocation on the
edge; "reachable" again must bring it back to its own address. The observer
never sees it other than alive.
"""

from __future__ import annotations

from pathlib import Path

from test_daemon_memory import config, running, until

from membership import EventKind
from rmap2p.daemon import Node


async def test_a_verdict_of_unreachable_moves_an_auto_node_onto_a_relay_and_back(tmp_path: Path) -> None:
    edge_cfg = config(tmp_path, "edge", worker_type="edge")
    edge = Node(edge_cfg)
    auto = Node(config(tmp_path, "auto", join=(edge_cfg.bind,), relay="auto"))
    observer = Node(config(tmp_path, "obs", join=(edge_cfg.bind,), relay="never"))
    events: list[tuple[str, EventKind]] = []
    observer.on_view_change(lambda evs: events.extend((e.node, e.kind) for e in evs))
    async with running([edge, auto, observer]) as nodes:
        await until(lambda: all(len([m for m in n.members() if m.status.label == "alive"]) == 3 for n in nodes), 20, "a pool of 3")
        assert auto.machine is not None and edge.machine is not None and observer.machine is not None
        me = auto.machine.id

        def seen() -> tuple[tuple[str, int], tuple[str, ...], str]:
            m = next(m for m in observer.members() if m.node == me)
            return m.addr, m.meta.relays, m.meta.http

        direct_addr, relays, direct_http = seen()
        assert direct_addr == auto.config.bind and relays == ()
        assert auto.relay_agent is not None and auto.relay_agent.primary is None, "auto without a verdict: direct"

        auto.set_reachable(False)
        await until(lambda: seen()[1] == (edge.machine.id,) and seen()[0] != direct_addr, 10, "auto relayed through the edge")
        addr, _, http = seen()
        assert edge.relay_server is not None
        assert edge.relay_server.allocation_of(me) == (addr[1], int(http.rsplit(":", 1)[1]))

        # A push-pull (TCP) to the relayed address crosses the relay and is served by the
        # node's own StreamServer, with the real peer: frames in and out there.
        before = auto.tcp_stats()
        observer.machine.push_pull(addr, observer._now())
        observer._flush()  # what the daemon's pump does after every call into the machine
        await until(
            lambda: auto.tcp_stats()["frames_out"] > before["frames_out"] and auto.tcp_stats()["accepted"] > before["accepted"],
            10, "a push-pull through the relay answered by the node",
        )

        auto.set_reachable(True)
        await until(lambda: seen() == (direct_addr, (), direct_http), 10, "auto back at its own address")
        await until(lambda: edge.relay_server is not None and edge.relay_server.carried() == {}, 10, "the edge to free the allocation")
        assert all(m.status.label == "alive" for m in observer.members())
        assert not [k for node, k in events if node == me and k in (EventKind.DEAD, EventKind.SUSPECT, EventKind.CONFLICT)]
