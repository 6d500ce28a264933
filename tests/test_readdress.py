"""Membership.readdress and the relay metadata fields, on the sans-I/O core (manual clock, no sockets).

A relayed node whose relay dies is unreachable at its old address until it
re-advertises at its standby's allocation. These tests play that on the
in-memory cluster: the pool must take the new address, never declare the
node dead, and the node must not mistake its own old records for a second
daemon with its identity.
"""

from __future__ import annotations

import msgpack
import pytest
from cluster import Cluster

from membership import EventKind, NodeMeta, Status, SwimConfig, wire
from membership.errors import RemoteProtocolError

RELAYED = 3


def move(cluster: Cluster, i: int, new_port: int, relays: tuple[str, ...]) -> tuple[str, int]:
    """Node ``i`` is now reached at ``new_port`` (its old address goes dark, as a dead relay's does)."""
    node = cluster.nodes[i]
    old = node.addr
    new = (old[0], new_port)
    cluster.addr_index.pop(old, None)
    cluster.addr_index[new] = i
    node.readdress(new, cluster.now, meta=NodeMeta(name=node.meta.name, worker_type="cpu", http=f"10.0.0.1:{new_port + 1}", relays=relays))
    cluster.flush(i)
    return new


def events_about(cluster: Cluster, i: int, kind: EventKind) -> list[int]:
    node_id = cluster.nodes[i].id
    return [obs for obs, ev in cluster.events if ev.node == node_id and ev.kind is kind]  # type: ignore[attr-defined]


@pytest.mark.parametrize("dark_for", [0.0, 1.5, 2.5])
def test_a_node_that_moves_after_its_old_address_went_dark_is_never_declared_dead(dark_for: float) -> None:
    cfg = SwimConfig.local()
    cluster = Cluster(6, seed=7, config=cfg)
    assert cluster.run_until(cluster.converged, 30)
    before = cluster.nodes[RELAYED].incarnation
    # The relay dies: nothing reaches the node at its address, and what it sends is lost
    # too, for ``dark_for`` seconds (the keepalive timeout: under 2 probe intervals),
    # then it re-advertises at its standby relay.
    others = [j for j in range(6) if j != RELAYED]
    for j in others:
        cluster.blocked |= {(j, RELAYED), (RELAYED, j)}
    cluster.run_for(dark_for)
    cluster.heal()
    new = move(cluster, RELAYED, 9100, ("edge-b",))
    assert cluster.nodes[RELAYED].incarnation == before + 1 or dark_for > 0
    assert cluster.run_until(
        lambda: all(cluster.nodes[j].alive_record(cluster.nodes[RELAYED].id).addr == new for j in others)
        and cluster.all_see(RELAYED, Status.ALIVE),
        10,
    )
    cluster.run_for(30)  # many suspicion timeouts
    assert cluster.all_see(RELAYED, Status.ALIVE)
    assert events_about(cluster, RELAYED, EventKind.DEAD) == []
    assert events_about(cluster, RELAYED, EventKind.CONFLICT) == []
    for j in others:
        rec = cluster.nodes[j].alive_record(cluster.nodes[RELAYED].id)
        assert rec.addr == new and rec.meta.relays == ("edge-b",) and rec.meta.http == "10.0.0.1:9101"


def test_an_old_record_at_a_past_address_is_not_taken_for_a_second_daemon() -> None:
    cluster = Cluster(3, seed=3, config=SwimConfig.local())
    assert cluster.run_until(cluster.converged, 30)
    node = cluster.nodes[1]
    old_record = node.alive_record(node.id)
    old_addr = node.addr
    move(cluster, 1, 9200, ("edge-a",))
    cluster.run_for(2)
    # Stale gossip brings our own older record, at the address we left.
    node.receive(wire.encode_datagram([old_record]), cluster.nodes[0].addr, cluster.now)
    assert node.stats.malformed == 0
    sent_to = [addr for _, addr in node.take_datagrams()]
    assert old_addr not in sent_to, "no identity check is sent to our own past address"
    assert not [ev for ev in node.take_events() if ev.kind is EventKind.CONFLICT]


def test_readdress_is_one_bump_and_a_no_op_when_nothing_changes() -> None:
    cluster = Cluster(2, seed=1)
    node = cluster.nodes[0]
    inc = node.incarnation
    node.readdress(node.addr, cluster.now)
    assert node.incarnation == inc
    node.readdress(("10.0.0.9", 1), cluster.now, meta=NodeMeta(name="x", relays=("e",)))
    assert node.incarnation == inc + 1 and node.addr == ("10.0.0.9", 1) and node.meta.relays == ("e",)
    assert node.stats.readdresses == 1


def test_relay_fields_round_trip_and_old_and_new_nodes_read_each_other() -> None:
    meta = NodeMeta(name="edge", worker_type="edge", relay="203.0.113.5:41000", relays=())
    assert NodeMeta.decode(meta.encode()) == meta
    carried = NodeMeta(name="home", relays=("a1b2", "c3d4"))
    assert NodeMeta.decode(carried.encode()).relays == ("a1b2", "c3d4")
    # An older node's metadata (12 fields) decodes with the defaults: direct, no relay offered.
    old = msgpack.unpackb(carried.encode())[:12]
    decoded = NodeMeta.decode(msgpack.packb(old, use_bin_type=True))
    assert decoded.relay == "" and decoded.relays == () and not decoded.relayed
    # A newer node's extra trailing fields are ignored.
    newer = msgpack.unpackb(carried.encode()) + ["a future field"]
    assert NodeMeta.decode(msgpack.packb(newer, use_bin_type=True)).relays == ("a1b2", "c3d4")


@pytest.mark.parametrize(
    "relay, relays",
    [(7, []), ("x" * 400, []), ("", "a"), ("", ["a"] * 5), ("", [""]), ("", [3])],
)
def test_malformed_relay_fields_are_rejected(relay: object, relays: object) -> None:
    raw = msgpack.unpackb(NodeMeta(name="n").encode())
    raw[12], raw[13] = relay, relays
    with pytest.raises(RemoteProtocolError):
        NodeMeta.decode(msgpack.packb(raw, use_bin_type=True))
