"""The membership view as the allocator's input: one place that maps gossip rows to NodeViews."""

from __future__ import annotations

from allocator.view import NodeView
from membership import MemberView

WORKER_TYPES = ("gpu", "cpu", "storage", "edge")


def node_view(m: MemberView) -> NodeView:
    meta = m.meta
    return NodeView(
        node_id=m.node,
        worker_type=meta.worker_type if meta.worker_type in WORKER_TYPES else "cpu",
        services=meta.service_names,
        status=m.status.label,
        # What the node advertised it can run; an empty list (e.g. --no-services) means nothing.
        can_run=meta.capabilities,
        specialization=meta.specialization,
        incarnation=m.incarnation,
        loaded_models=meta.loaded_models,
        current_load=m.load.cpu_percent / 100.0,
        gpu_utilization=float(m.load.gpu_utilization),
        active_requests=m.load.active_requests,
        healthy_services=meta.healthy_services,
    )


def to_node_views(members: list[MemberView]) -> list[NodeView]:
    return [node_view(m) for m in members]
