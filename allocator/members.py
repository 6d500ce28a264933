"""The membership view as the allocator's input, and what a node advertises it can run.

One place maps gossiped member rows to ``NodeView``s, for the daemon, the
HTTP views and the simulator alike, so that a figure the simulator reports is
a figure about the daemon. Pure: it reads ``membership`` records, nothing else.

Capabilities (``NodeMeta.capabilities``, ``NodeView.can_run``) are what a
node is *able* to run. An empty list means "nothing" (a node started with
``--no-services``, or one whose every runner failed), never "everything":
the allocator must not assign what cannot start.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from allocator.catalog import CATALOG, FALLBACK_HOSTS, WORKER_TYPES, ServiceSpec
from allocator.view import NodeView
from membership import MemberView

DEFAULT_WORKER_TYPE = "cpu"
"""How a member that gossips a worker type this version does not know is treated."""


def worker_type_of(advertised: str) -> str:
    """The worker type the allocator uses for an advertised one (unknown types count as CPU)."""
    return advertised if advertised in WORKER_TYPES else DEFAULT_WORKER_TYPE


def node_view(m: MemberView) -> NodeView:
    meta = m.meta
    return NodeView(
        node_id=m.node,
        worker_type=worker_type_of(meta.worker_type),
        services=meta.service_names,
        status=m.status.label,
        can_run=meta.capabilities,
        specialization=meta.specialization,
        incarnation=m.incarnation,
        loaded_models=meta.loaded_models,
        current_load=m.load.cpu_percent / 100.0,
        gpu_utilization=float(m.load.gpu_utilization),
        active_requests=m.load.active_requests,
        healthy_services=meta.healthy_services,
        relayed=meta.relayed,
    )


def to_node_views(members: Iterable[MemberView]) -> list[NodeView]:
    return [node_view(m) for m in members]


def capabilities(
    worker_type: str, unavailable: Collection[str] = (), catalog: Iterable[ServiceSpec] = CATALOG
) -> tuple[str, ...]:
    """The services a node of ``worker_type`` advertises it can run, in catalog order.

    Those of its own type and of the types it may stand in for
    (``FALLBACK_HOSTS``: a GPU node can run CPU work), minus ``unavailable``
    (services that failed to start there, or that the machine cannot run).
    The allocator gives a stand-in service only where no node of its own type
    covers it.
    """
    kind = worker_type_of(worker_type)
    return tuple(
        s.name
        for s in catalog
        if (s.requires == kind or kind in FALLBACK_HOSTS.get(s.requires, ())) and s.name not in unavailable
    )
