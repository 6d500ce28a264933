"""Pure decisions on the membership view: allocation, gaps, leaders, request scoring.

Nothing here does I/O, reads a clock or uses the global random generator:
every function is a deterministic function of its arguments (DESIGN.md,
principle 2), so every node computes the same answer from the same view.
"""

from allocator.allocate import MAX_SERVICES, allocate, deficit, mode
from allocator.catalog import CATALOG, WORKER_TYPES, ServiceSpec, by_name, ordered, service_names
from allocator.gaps import gap_status, gaps, runners, services_doc
from allocator.view import ALIVE_STATUSES, STATUSES, NodeView, normalize, rank_key, view_from_json

__all__ = [
    "ALIVE_STATUSES",
    "CATALOG",
    "MAX_SERVICES",
    "STATUSES",
    "WORKER_TYPES",
    "NodeView",
    "ServiceSpec",
    "allocate",
    "by_name",
    "deficit",
    "gap_status",
    "gaps",
    "mode",
    "normalize",
    "ordered",
    "rank_key",
    "runners",
    "service_names",
    "services_doc",
    "view_from_json",
]
