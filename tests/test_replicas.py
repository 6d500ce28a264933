"""allocator.replicas.primary_of: table tests for each rule, properties over random views."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocator.replicas import (
    Copy,
    Roles,
    allocation_view,
    copies,
    has_quorum,
    primary_of,
    rank,
    replica_rows,
    replicated_actions,
)
from allocator.view import NodeView

S = "redis"


def c(node: str, epoch: int = 0, primary: bool = False, alive: bool = True, runs: bool = True) -> Copy:
    return Copy(node, alive=alive, runs=runs, epoch=epoch, primary=primary)


def first_by_rank(*nodes: str) -> str:
    return min(nodes, key=lambda n: rank(S, n))


CASES = [
    # (name, copies, primary, epoch, promoted)
    ("empty view", [], None, 0, False),
    ("bootstrap picks the best rank", [c("a"), c("b")], first_by_rank("a", "b"), 1, True),
    ("the current primary stays", [c("a", 3, True), c("b", 3)], "a", 3, False),
    ("a join never flips", [c("a", 3, True), c("b", 3), c("z")], "a", 3, False),
    ("primary dead: the replica with data is promoted", [c("a", 3, True, alive=False), c("b", 3)], "b", 4, True),
    ("primary's runner failed: promoted too", [c("a", 3, True, runs=False), c("b", 3)], "b", 4, True),
    ("promotion prefers the most recent history", [c("a", 5, True, alive=False), c("b", 4), c("c", 5)], "c", 6, True),
    ("an empty copy is never promoted over lost data", [c("a", 3, True, alive=False), c("b", 0)], None, 3, False),
    ("the old primary returning loses to the new one", [c("a", 3, True), c("b", 4, True)], "b", 4, False),
    ("a stale claimant gets a new epoch", [c("a", 3, True), c("b", 4, True, alive=False)], "a", 5, True),
    ("nobody alive", [c("a", 2, True, alive=False), c("b", 2, alive=False)], None, 2, False),
    ("a claim without data is ignored", [c("a", 0, True), c("b", 1)], "b", 2, True),
]


@pytest.mark.parametrize(("name", "copies", "primary", "epoch", "promoted"), CASES, ids=[x[0] for x in CASES])
def test_rules(name: str, copies: list[Copy], primary: str | None, epoch: int, promoted: bool) -> None:
    roles = primary_of(S, copies)
    assert (roles.primary, roles.epoch, roles.promoted) == (primary, epoch, promoted)
    live = sorted(x.node_id for x in copies if x.alive and x.runs and x.node_id != primary)
    assert list(roles.replicas) == live


def test_a_failover_then_the_old_primary_returning_is_one_history() -> None:
    """Play the sequence the daemons go through, feeding each decision back as the nodes would gossip it."""
    a, b = "node-a", "node-b"
    start = primary_of(S, [c(a), c(b)])
    p = start.primary
    r = b if p == a else a
    assert p is not None
    view = {p: c(p, start.epoch, True), r: c(r, start.epoch)}  # the replica linked: it holds that epoch
    assert primary_of(S, view.values()).primary == p
    view[p] = c(p, start.epoch, True, alive=False)  # the primary dies
    after = primary_of(S, view.values())
    assert (after.primary, after.epoch) == (r, start.epoch + 1)
    view[r] = c(r, after.epoch, True)
    view[p] = c(p, start.epoch, True)  # it comes back still claiming its old epoch
    back = primary_of(S, view.values())
    assert (back.primary, back.replicas, back.promoted) == (r, (p,), False)


def test_duplicates_collapse_to_the_newest_entry() -> None:
    old = c("a", 1, True, alive=False)
    new = c("a", 2, True)
    assert primary_of(S, [old, new, c("b", 2)]) == primary_of(S, [new, c("b", 2), old]) == Roles("a", 2, ("b",), False)


def test_services_spread_their_primaries() -> None:
    nodes = [c(f"n{i}") for i in range(8)]
    primaries = {primary_of(s, nodes).primary for s in ("redis", "postgres", "chromadb", "minio", "neo4j")}
    assert len(primaries) > 1


copies_st = st.lists(
    st.builds(
        Copy,
        node_id=st.sampled_from([f"n{i}" for i in range(6)]),
        alive=st.booleans(),
        runs=st.booleans(),
        epoch=st.integers(0, 5),
        primary=st.booleans(),
    ),
    max_size=10,
)


@settings(max_examples=300, deadline=None)
@given(copies_st, st.randoms(use_true_random=False))
def test_order_does_not_matter(copies: list[Copy], rnd: random.Random) -> None:
    shuffled = list(copies)
    rnd.shuffle(shuffled)
    assert primary_of(S, copies) == primary_of(S, shuffled)


@settings(max_examples=300, deadline=None)
@given(copies_st)
def test_invariants(copies: list[Copy]) -> None:
    roles = primary_of(S, copies)
    top = max((x.epoch for x in copies), default=0)
    if roles.primary is None:
        return
    chosen = [x for x in copies if x.node_id == roles.primary]
    assert any(x.alive and x.runs for x in chosen), "a dead or failed copy chosen"
    assert roles.epoch >= top, "an epoch that an older claim could beat"
    assert roles.primary not in roles.replicas
    # Never a fresh empty copy while some copy in the view has data.
    if top > 0:
        assert max(x.epoch for x in chosen) > 0


@settings(max_examples=300, deadline=None)
@given(copies_st, st.sampled_from(["new1", "new2"]))
def test_a_joining_node_never_takes_over(copies: list[Copy], newcomer: str) -> None:
    before = primary_of(S, copies)
    after = primary_of(S, [*copies, Copy(newcomer, alive=True, runs=True)])
    # Only at bootstrap (no data anywhere, nobody claimed yet) may a join change the pick.
    bootstrap = before.promoted and before.epoch == 1
    if before.primary is not None and not bootstrap:
        assert (after.primary, after.epoch) == (before.primary, before.epoch)


def test_copies_from_a_view() -> None:
    view = [
        NodeView("a", "storage", services=("redis",), status="dead"),
        NodeView("b", "storage", services=("redis", "postgres")),
        NodeView("c", "storage", services=("postgres",)),
        NodeView("d", "storage", services=(), status="left"),
    ]
    claims = {"a": (3, True), "b": (3, False), "d": (1, False)}
    got = copies(S, view, claims)
    assert got == [
        Copy("a", alive=False, runs=False, epoch=3, primary=True),
        Copy("b", alive=True, runs=True, epoch=3, primary=False),
        Copy("d", alive=False, runs=False, epoch=1, primary=False),
    ]
    assert primary_of(S, got) == Roles("b", 4, (), True)


# ---------------------------------------------------------------- where copies run

def _settle(view: list[NodeView], claims: dict[str, dict[str, tuple[int, bool]]], rounds: int = 6) -> list[dict[str, tuple[str, ...]]]:
    """Every node acts on the shared view, then runs what it was given; the rows of each round."""
    history = []
    for _ in range(rounds):
        rows = {n.node_id: replicated_actions(n.node_id, view, n.services, claims).desired for n in view if n.is_alive}
        history.append(rows)
        view = [dataclasses.replace(n, services=rows.get(n.node_id, ()), healthy_services=rows.get(n.node_id, ())) for n in view]
    return history


def test_a_lone_storage_node_gets_the_seed_row_and_no_replica() -> None:
    # Scenario 5 of seed 000 with replicas on: one storage node runs exactly chromadb and redis.
    assert replicated_actions("storage-1", [NodeView("storage-1", "storage")], (), {}).desired == ("chromadb", "redis")


def test_two_storage_nodes_both_hold_each_replicated_service_and_nothing_flaps() -> None:
    able = ("redis", "postgres")
    view = [NodeView("s1", "storage", services=("redis",), can_run=able), NodeView("s2", "storage", can_run=able)]
    claims = {"redis": {"s1": (1, True)}}
    history = _settle(view, claims)
    assert history[-1] == {"s1": ("postgres", "redis"), "s2": ("postgres", "redis")}
    assert history[-1] == history[-2] == history[-3]
    # The allocation sees redis only on its primary: s2's copy is a replica row, not a surplus.
    hidden = allocation_view([dataclasses.replace(n, services=history[-1][n.node_id]) for n in view], claims)
    pg = primary_of("postgres", [Copy("s1", True, True), Copy("s2", True, True)]).primary
    assert {n.node_id: n.services for n in hidden} == {
        "s1": ("postgres", "redis") if pg == "s1" else ("redis",),
        "s2": ("postgres",) if pg == "s2" else (),
    }


def test_a_replica_stays_put_and_the_one_with_data_is_preferred() -> None:
    able = ("redis",)
    view = [
        NodeView("s1", "storage", services=("redis",), can_run=able),
        NodeView("s2", "storage", can_run=able),
        NodeView("s3", "storage", can_run=able),
    ]
    alloc = {"s1": ("redis",), "s2": (), "s3": ()}
    by_rank = sorted(["s2", "s3"], key=lambda n: rank("redis", n))
    assert replica_rows(view, alloc, {}, services=("redis",)) == {by_rank[0]: ("redis",)}
    # The other one has data from the current history: it is the replica.
    claims = {"redis": {by_rank[1]: (4, False)}}
    assert replica_rows(view, alloc, claims, services=("redis",)) == {by_rank[1]: ("redis",)}
    # One already runs it: it keeps it, whatever the rank.
    running = [dataclasses.replace(n, services=("redis",)) if n.node_id == by_rank[1] else n for n in view]
    assert replica_rows(running, alloc, {}, services=("redis",)) == {by_rank[1]: ("redis",)}
    # A dead node, a node of another type and a node unable to run it get none.
    others = [NodeView("s1", "storage", services=("redis",)), NodeView("d", "storage", status="dead"), NodeView("c", "cpu"), NodeView("x", "storage", can_run=())]
    assert replica_rows(others, {"s1": ("redis",)}, {}, services=("redis",)) == {}


QUORUM_CASES = [
    # (name, statuses of the members this node knows, has a majority)
    ("a lone node", ["alive"], True),
    ("two nodes cannot tell a partition from a death", ["alive", "dead"], True),
    ("three, one dead: the majority side", ["alive", "alive", "dead"], True),
    ("three, two dead: the minority side", ["alive", "dead", "dead"], False),
    ("suspects are not counted present", ["alive", "suspect", "suspect"], False),
    ("one suspect of three is still a majority", ["alive", "alive", "suspect"], True),
    ("a graceful leave shrinks the pool", ["alive", "left", "left", "dead"], True),
    ("left members do not vote", ["alive", "alive", "dead", "dead", "left"], False),
    ("a tie is no majority", ["alive", "alive", "dead", "dead"], False),
    ("five, two dead", ["alive", "alive", "alive", "dead", "dead"], True),
]


@pytest.mark.parametrize(("name", "statuses", "expected"), QUORUM_CASES, ids=[c[0] for c in QUORUM_CASES])
def test_has_quorum(name: str, statuses: list[str], expected: bool) -> None:
    view = [NodeView(node_id=f"n{i}", worker_type="storage", status=st) for i, st in enumerate(statuses)]
    assert has_quorum(view) is expected
    assert has_quorum(list(reversed(view))) is expected


def test_a_fresh_majority_counts_only_members_heard_since() -> None:
    """What a primary cut off from the pool sees: its replica dead, the third member still alive (not yet suspected)."""
    view = [NodeView("me", "storage"), NodeView("replica", "storage", status="dead"), NodeView("third", "cpu")]
    assert has_quorum(view)  # the lagging view alone would let it drop its synchronous standby
    assert not has_quorum(view, confirmed={"me"})  # the third has not answered since the replica died
    assert has_quorum(view, confirmed={"me", "third"})
    # Being confirmed does not revive a member the view holds dead.
    assert not has_quorum(view, confirmed={"me", "replica"})
    # Two nodes still cannot tell a partition from a death.
    assert has_quorum([NodeView("me", "storage"), NodeView("replica", "storage", status="dead")], confirmed={"me"})
