"""The one path from a membership view to a node's actions.

``node_actions(me, views, running)`` is everything a node decides about its
own services: the allocation of the whole view (``allocate``), its own row,
and the make-before-break hand-over plan against what it runs now
(``handover.plan``). The daemon's service manager and the simulator both call
it, with views built by ``allocator.members.to_node_views``; a coverage
figure from the simulator is therefore a figure about the daemon's policy.

Pure: the caller owns the runners and does what the result says.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from allocator.allocate import allocate
from allocator.catalog import CATALOG, ServiceSpec
from allocator.handover import plan
from allocator.view import NodeView


@dataclass(frozen=True, slots=True)
class NodeActions:
    """What one node should do now: its row of the allocation, and the moves towards it."""

    desired: tuple[str, ...]
    start: tuple[str, ...]
    stop: tuple[str, ...]
    keep_for_handover: tuple[str, ...]


def node_actions(
    me: str,
    views: Sequence[NodeView],
    running: Iterable[str],
    *,
    allocation: Mapping[str, Sequence[str]] | None = None,
    catalog: Sequence[ServiceSpec] = CATALOG,
) -> NodeActions:
    """This node's actions on ``views``, given the services it ``running``.

    ``allocation`` is ``allocate(views, catalog)`` when the caller already has
    it (the simulator caches it across nodes that share a view); it must be
    exactly that, or the result is not the daemon's.
    """
    whole = allocation if allocation is not None else allocate(views, catalog)
    desired = tuple(whole.get(me, ()))
    p = plan(me, running, desired, views)
    return NodeActions(desired, p.start, p.stop, p.keep_for_handover)
