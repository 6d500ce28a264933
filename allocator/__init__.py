"""Pure decisions on the membership view: allocation, gaps, leaders, request scoring.

Nothing here does I/O, reads a clock or uses the global random generator:
every function is a deterministic function of its arguments (DESIGN.md,
principle 2), so every node computes the same answer from the same view.
"""

from allocator.allocate import MAX_SERVICES, allocate, deficit, mode
from allocator.catalog import CATALOG, WORKER_TYPES, ServiceSpec, by_name, ordered, service_names
from allocator.gaps import gap_status, gaps, runners, services_doc
from allocator.leaders import COORDINATOR, Leadership, elect, term_of
from allocator.scoring import canonical_service, detect_required_model, rank, score
from allocator.view import ALIVE_STATUSES, STATUSES, NodeView, normalize, rank_key, view_from_json

__all__ = [
    "ALIVE_STATUSES",
    "CATALOG",
    "COORDINATOR",
    "MAX_SERVICES",
    "STATUSES",
    "WORKER_TYPES",
    "Leadership",
    "NodeView",
    "ServiceSpec",
    "allocate",
    "by_name",
    "canonical_service",
    "deficit",
    "detect_required_model",
    "elect",
    "gap_status",
    "gaps",
    "mode",
    "normalize",
    "ordered",
    "rank",
    "rank_key",
    "runners",
    "score",
    "service_names",
    "services_doc",
    "term_of",
    "view_from_json",
]
