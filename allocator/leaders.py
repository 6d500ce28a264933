"""elect(): the coordinator leaders and the primary, as a pure function of the view.

Ranking. Every node ranks the alive (alive or suspect) edge nodes by
``rank_key``: blake2b-64 of the node id, then the id. The key needs nothing
but the id, so every node computes the same ranking, and a hash spreads the
role instead of handing it to whichever id sorts first.

Leaders. The leaders (``coordinators``) are the alive edge nodes whose row of
``allocate`` holds the ``coordinator`` service. ``allocate`` is sticky, so
these are the nodes already running it plus, while one is missing, the node
chosen to start it (target 2: two leaders whenever two edge nodes can run it).
The primary is the best-ranked leader.

Quorum. Let K be the edge members the view knows and has not seen leave
(alive, suspect or dead) and A the alive or suspect ones. ``quorum`` is
``2·|A| > |K|``. Without quorum there is no primary. A partitioned minority
keeps its primary while the other side is only suspect, and drops it as soon
as the suspicion times out and the missing edge nodes are dead in its view,
i.e. within one failure detection; the majority side keeps or elects one.
An exact half has no primary on either side. A pool with no edge node has
no primary at all.

Term. A number that every node with the same view computes identically and
that grows with every leadership change::

    term = Σ over edge members e of the view (any status, left included)
           of 1 + 4·incarnation(e) + w(status(e)),
    w(alive) = 0, w(suspect) = 1, w(dead) = 2, w(left) = 3.

Every SWIM step raises one member's summand: alive→suspect (+1),
suspect→dead (+1), dead or suspect→alive by refutation or rejoin (the
incarnation grows: +2 or +3), any→left (+1 to +3), left→alive on rejoin
(+1), an incarnation bump (+4 per step), a new edge member (+1 or more).
Leadership changes only when an edge member joins, changes status, or its
gossiped services change (which bumps its incarnation), so each change
raises the term. It also grows without a leadership change whenever any
edge member, leader or not, joins, changes status or bumps its incarnation
(for instance on a metadata update). It falls only when a dead or left edge
member is reaped from the view, which never changes leadership, since the
reaped member was not alive; a consumer that needs a strictly monotonic
number across reaps keeps the maximum it has seen.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from allocator.allocate import allocate
from allocator.catalog import CATALOG, ServiceSpec, ordered
from allocator.view import NodeView, normalize, rank_key

COORDINATOR = "coordinator"

_TERM_STATUS_WEIGHT = {"alive": 0, "suspect": 1, "dead": 2, "left": 3}
_KNOWN_STATUSES = frozenset({"alive", "suspect", "dead"})


@dataclass(frozen=True, slots=True)
class Leadership:
    """Who leads: the primary (None without quorum), all leaders best-ranked first, the term."""

    primary: str | None
    coordinators: tuple[str, ...]
    term: int
    quorum: bool

    def to_json(self) -> dict[str, object]:
        return {
            "primary": self.primary,
            "coordinators": list(self.coordinators),
            "term": self.term,
            "quorum": self.quorum,
        }


def elect(view: Iterable[NodeView], catalog: Sequence[ServiceSpec] = CATALOG) -> Leadership:
    """The leadership of the view (see the module docstring)."""
    members = normalize(view)
    spec = next((s for s in ordered(catalog) if s.name == COORDINATOR), None)
    leader_type = spec.requires if spec is not None else "edge"
    edge = [n for n in members if n.worker_type == leader_type]
    known = sum(1 for n in edge if n.status in _KNOWN_STATUSES)
    alive = sorted((n for n in edge if n.is_alive), key=lambda n: rank_key(n.node_id))
    quorum = known > 0 and 2 * len(alive) > known
    if spec is None:
        coordinators: tuple[str, ...] = ()
    else:
        # Worker types are allocated independently, so the edge nodes alone
        # give the same edge rows as the whole view, for a fraction of the work.
        rows = allocate(edge, catalog)
        coordinators = tuple(n.node_id for n in alive if COORDINATOR in rows.get(n.node_id, ()))
    return Leadership(
        primary=coordinators[0] if quorum and coordinators else None,
        coordinators=coordinators,
        term=term_of(edge),
        quorum=quorum,
    )


def term_of(edge_members: Iterable[NodeView]) -> int:
    """Σ 1 + 4·incarnation + w(status) over the given members (see the module docstring)."""
    return sum(1 + 4 * n.incarnation + _TERM_STATUS_WEIGHT.get(n.status, 0) for n in edge_members)
