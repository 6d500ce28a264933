"""Which copy of a stateful service is primary: a pure function of the view.

Input: one ``Copy`` per node the view knows that holds (or held) a copy of
the service, with what that node gossips about it:

- ``alive``: the member is alive or suspect (SWIM), and ``runs``: it runs
  the service now (its runner has not failed);
- ``epoch``: the history its data belongs to. A primary gossips the epoch it
  was chosen at; a replica gossips its primary's epoch once it has streamed
  from it; 0 means no data yet (a fresh or still-copying replica);
- ``primary``: the node says it is the primary (of ``epoch``).

Rule (``primary_of``):

1. Among alive running copies that claim to be primary, the one with the
   highest epoch stays primary (ties: the stable rank). So a node that
   joins never takes the role (it claims nothing), and an old primary that
   returns with an old claim loses to the current one and becomes its
   replica: no split brain once both are in the view.
2. With no live claimant (the primary died), the alive running copy with
   data from the most recent history (highest ``epoch``, then the rank) is
   promoted. A copy with no data (epoch 0) is never promoted while any copy
   in the view, dead or alive, has data: the answer is then *no primary*
   rather than a fresh empty database. Only a view where no copy ever had
   data (bootstrap) picks an empty copy, by rank; until that copy's claim
   is gossiped a better-ranked node joining can still take the pick (no
   data is at stake then). Once a primary has claimed, a join never moves it.
3. The chosen primary's epoch is its own if that is already the highest
   epoch in the view, else ``max epoch in the view + 1`` (a new promotion),
   so that a later-returning copy with an older claim always loses.

Rank: blake2b-64 of ``service + "/" + node_id`` (different services put
their primaries on different nodes). Everything is order-independent:
inputs are collapsed by node id and sorted first.

Where copies run (``replicated_actions``): the allocation places each
replicated service once, on a view where it shows only on its primary
(``allocation_view``); ``replica_rows`` then adds a replica on another
capable node of its type, so with two storage nodes both hold a copy. This
is a separate notion rather than a catalog ``target`` of 2: a target of 2
would make a lone storage node take postgres as well as chromadb and redis,
against seed scenario 5, and would let the allocator trade replicas for
other gaps.

Fencing (``has_quorum``): two sides of a network partition each see the
other dead and could each promote; when it heals the higher epoch wins and
the other side's writes since the split are discarded. So a copy acts as a
writable primary only while its node's view has a majority of the pool:
more than half of the members it knows that have not left (alive, suspect
and dead ones) are *alive*. A side without it does not promote, and a
primary on it refuses writes (``fenced``) until the majority is back. Every
member votes, not only the service's copies: with two copies, a majority of
the copies would be both of them, and no failover could ever happen. Suspects
do not count as present, so the minority side fences itself at suspicion,
before the majority side (which promotes only once the old primary is dead)
takes over. Graceful leaves shrink the pool; dead members count until
reaped (``SwimConfig.reap_after``), so a pool that lost most of its members
to crashes stays read-only until they return or are reaped (or the operator
sets ``RMAP2P_STORAGE_FENCING=0``). A view of fewer than
``QUORUM_MIN_MEMBERS`` members has no majority to lose (two nodes cannot
tell a partition from a death): there the caveat stands, and writes a
losing primary took are reported when it rejoins (``services.replication``).
Between the split and the fence (a suspicion timeout) a primary still takes
writes; Redis clients that need a write to survive use ``WAIT``,
PostgreSQL's synchronous mode makes a commit wait for the standby (and a
fenced primary keeps it waiting instead of turning it off).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from allocator.actions import NodeActions, node_actions
from allocator.allocate import allocate
from allocator.catalog import CATALOG, ServiceSpec, by_name
from allocator.view import NodeView


@dataclass(frozen=True, slots=True)
class Copy:
    """One node's copy of a stateful service, as the view shows it."""

    node_id: str
    alive: bool
    runs: bool
    epoch: int = 0
    primary: bool = False

    def __post_init__(self) -> None:
        if self.epoch < 0:
            raise ValueError(f"{self.node_id}: negative epoch {self.epoch}")


@dataclass(frozen=True, slots=True)
class Roles:
    """The decision for one service: its primary (None: no writable copy now) and replicas."""

    primary: str | None
    epoch: int
    """The epoch the primary claims (what it gossips); the history replicas follow."""
    replicas: tuple[str, ...]
    """Alive running copies other than the primary, by node id."""
    promoted: bool
    """True when the primary is not (yet) a claimant of this epoch: it must promote itself."""


def rank(service: str, node_id: str) -> tuple[bytes, str]:
    """The stable ordering key of a node for ``service`` (lower ranks first)."""
    digest = hashlib.blake2b(f"{service}/{node_id}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return digest, node_id


def primary_of(service: str, copies: Iterable[Copy]) -> Roles:
    """Roles of every copy of ``service``; see the module docstring. Pure and order-independent."""
    view = _collapse(copies)
    if not view:
        return Roles(None, 0, (), False)
    top = max(c.epoch for c in view)
    live = [c for c in view if c.alive and c.runs]

    def best(candidates: list[Copy]) -> Copy:
        # Highest epoch first, then the lowest rank.
        return min(candidates, key=lambda c: (-c.epoch, rank(service, c.node_id)))

    # A claim without data (epoch 0) is not a primary's: ignored, whatever a peer gossips.
    claimants = [c for c in live if c.primary and c.epoch > 0]
    if claimants:
        chosen = best(claimants)
    else:
        with_data = [c for c in live if c.epoch > 0]
        if with_data:
            chosen = best(with_data)
        elif top == 0 and live:
            chosen = best(live)  # bootstrap: no copy ever had data
        else:
            return Roles(None, top, tuple(c.node_id for c in live), False)
    keeps = chosen.primary and chosen.epoch == top and top > 0
    epoch = chosen.epoch if keeps else top + 1
    replicas = tuple(c.node_id for c in live if c.node_id != chosen.node_id)
    return Roles(chosen.node_id, epoch, replicas, not keeps)


QUORUM_MIN_MEMBERS = 3
"""Views with fewer members (not left) than this are not fenced: two nodes have no majority to lose."""


def has_quorum(view: Iterable[NodeView], confirmed: Collection[str] | None = None) -> bool:
    """Whether the side of the pool this view shows may run a writable primary (the module docstring).

    ``2 * alive > known`` over the members that have not left, where only
    ``alive`` counts as present (a suspect may be on the other side of a
    split); always True below ``QUORUM_MIN_MEMBERS`` known members. Pure and
    order-independent (members collapse by node id, the most hopeful status
    winning).

    ``confirmed``: only these alive members count as present (those heard
    from first-hand since some moment; the caller's own node among them).
    A view lags: a node cut off from the pool sees its peers alive until it
    suspects them, so a primary that is about to give up a guarantee asks
    for a majority it has heard *since* the event (``services.replication``).
    """
    order = {"alive": 3, "suspect": 2, "dead": 1, "left": 0}
    status: dict[str, str] = {}
    for n in view:
        old = status.get(n.node_id)
        if old is None or order.get(n.status, 0) > order.get(old, 0):
            status[n.node_id] = n.status
    known = [s for s in status.values() if s != "left"]
    if len(known) < QUORUM_MIN_MEMBERS:
        return True
    present = sum(1 for node, s in status.items() if s == "alive" and (confirmed is None or node in confirmed))
    return 2 * present > len(known)


def copies(service: str, view: Iterable[NodeView], claims: Mapping[str, tuple[int, bool]]) -> list[Copy]:
    """The copies of ``service`` in ``view``: nodes that run it or gossip a claim for it.

    ``claims`` maps node id -> (epoch, primary) as each node gossips it for
    ``service`` (absent: no data). ``runs`` is the service being in the
    node's ``services`` (its runner has not failed); ``alive`` is SWIM's
    alive or suspect. A node that left or died keeps its claim in the view,
    which is what stops an empty copy from being promoted over its data.
    """
    out = []
    for node in view:
        claim = claims.get(node.node_id)
        runs = service in node.services
        if claim is None and not runs:
            continue
        epoch, primary = claim if claim is not None else (0, False)
        out.append(Copy(node.node_id, alive=node.is_alive, runs=runs and node.is_alive, epoch=max(0, int(epoch)), primary=bool(primary)))
    return out


def _collapse(copies: Iterable[Copy]) -> list[Copy]:
    """One entry per node id, sorted: duplicates keep the greatest (epoch, primary, alive, runs)."""
    best: dict[str, Copy] = {}
    for c in copies:
        old = best.get(c.node_id)
        if old is None or _precedence(c) > _precedence(old):
            best[c.node_id] = c
    return [best[k] for k in sorted(best)]


def _precedence(c: Copy) -> tuple[int, bool, bool, bool]:
    return (c.epoch, c.primary, c.alive, c.runs)


# ---------------------------------------------------------------- where copies run

REPLICATED: tuple[str, ...] = ("redis", "postgres")
"""Stateful services that run as a primary and replicas (their engines replicate)."""
COPIES = 2
"""How many nodes hold a copy of a replicated service when that many can."""

Claims = Mapping[str, Mapping[str, tuple[int, bool]]]
"""service -> node id -> (epoch, primary), as each node gossips it."""


def primaries(view: Iterable[NodeView], claims: Claims, services: Iterable[str] = REPLICATED) -> dict[str, str | None]:
    """The primary of each of ``services`` in ``view`` (``primary_of``), None where there is none."""
    nodes = list(view)
    return {s: primary_of(s, copies(s, nodes, claims.get(s, {}))).primary for s in services}


def allocation_view(view: Iterable[NodeView], claims: Claims, services: Iterable[str] = REPLICATED) -> list[NodeView]:
    """``view`` as ``allocate`` should see it: each replicated service only on its primary.

    Replicas are extra copies outside the allocation (``replica_rows``
    places them). Were they visible, ``allocate`` would count a surplus and
    switch it away to close another gap, and the replica would come back on
    the next round: a flap. Where a service has no primary the view is left
    as it is for that service.
    """
    nodes = list(view)
    chosen = {s: p for s, p in primaries(nodes, claims, services).items() if p is not None}
    out = []
    for node in nodes:
        hidden = {s for s, p in chosen.items() if p != node.node_id}
        if hidden & set(node.services):
            node = replace(
                node,
                services=tuple(s for s in node.services if s not in hidden),
                healthy_services=tuple(s for s in node.healthy_services if s not in hidden),
            )
        out.append(node)
    return out


def replica_rows(
    view: Iterable[NodeView],
    allocation: Mapping[str, Sequence[str]],
    claims: Claims,
    catalog: Sequence[ServiceSpec] = CATALOG,
    services: Iterable[str] = REPLICATED,
) -> dict[str, tuple[str, ...]]:
    """Where the replicas of each replicated service go, beyond ``allocation``: node id -> services.

    A service the allocation gives to at least one and fewer than ``COPIES`` nodes gets
    replicas on other alive nodes of its worker type that are able to run
    it: first those that run it already (a replica stays where it is), then
    those with the most recent data (claim epoch), then by ``rank``. Replicas
    do not count against a node's cap: they back up a copy, they serve no
    extra load. Pure and order-independent.
    """
    nodes = sorted({n.node_id: n for n in view}.values(), key=lambda n: n.node_id)
    rows: dict[str, list[str]] = {}
    for service in services:
        spec = by_name(service, tuple(catalog))
        if spec is None:
            continue
        holders = {n for n, row in allocation.items() if service in row}
        missing = COPIES - len(holders)
        if not holders or missing <= 0:
            continue  # a replica backs up a copy the allocation placed; none placed, none to back up
        known = claims.get(service, {})
        candidates = [
            n for n in nodes
            if n.is_alive and n.node_id not in holders and n.worker_type == spec.requires and n.able_to_run(service)
        ]  # fmt: skip
        candidates.sort(key=lambda n: (service not in n.services, -known.get(n.node_id, (0, False))[0], rank(service, n.node_id)))
        for n in candidates[:missing]:
            rows.setdefault(n.node_id, []).append(service)
    return {n: tuple(sorted(r)) for n, r in rows.items()}


def replicated_actions(me: str, view: Sequence[NodeView], running: Iterable[str], claims: Claims) -> NodeActions:
    """``node_actions`` with replicas: the allocation of ``allocation_view``, plus this node's replica row.

    What a replica row adds is started and never stopped by the hand-over
    plan; the allocation of every other service is unchanged by replicas.
    """
    hidden = allocation_view(view, claims)
    whole = allocate(hidden)
    base = node_actions(me, hidden, running, allocation=whole)
    extra = replica_rows(view, whole, claims).get(me, ())
    running_set = set(running)
    desired = tuple(sorted(set(base.desired) | set(extra)))
    start = tuple(sorted(set(base.start) | {s for s in extra if s not in running_set}))
    stop = tuple(s for s in base.stop if s not in extra)
    keep = tuple(s for s in base.keep_for_handover if s not in extra)
    return NodeActions(desired, start, stop, keep)
