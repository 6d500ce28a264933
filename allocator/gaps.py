"""The /api/admin/gaps and /api/admin/services documents, computed from the view.

``gaps()`` gives the document of seed ``000_…`` ("Monitoring Service Gaps"):
one entry per catalog service with the number of alive or suspect nodes that
run it and a status — ``critical`` (0 runners), ``warning`` (1: no
redundancy), ``ok`` (2 or more) — plus ``critical_gaps`` and a ``summary``.

Counting: a node counts for a service when it is alive or suspect, lists the
service in ``services`` *and reports it healthy* (``healthy_services``),
whatever its worker type: the document reports what serves, not what should.
A pool whose runners of a service are all starting, broken or stopping has
no worker for it: the service is ``critical``, not ``ok``. (A GPU node
hosting a CPU service counts for it, as ``allocate`` step 3 intends.)

Choices the seed leaves open:

- ``gaps`` lists every catalog service, most urgent first: status
  (critical, warning, ok), then priority, then catalog order. The seed's
  example lists an ``ok`` service among the gaps, so the list is not only
  the problems.
- ``summary``: ``total_services`` is the catalog size; ``covered`` counts
  services with status ``ok`` and ``needs_attention`` those with status
  ``critical`` or ``warning``, so ``covered + needs_attention ==
  total_services``, which is how the seed's example adds up (8 + 3 = 11).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from allocator.catalog import CATALOG, ServiceSpec, ordered
from allocator.view import NodeView, normalize

_STATUS_ORDER = {"critical": 0, "warning": 1, "ok": 2}


def gap_status(current_workers: int) -> str:
    """``critical`` for 0 runners, ``warning`` for 1, ``ok`` for 2 or more."""
    if current_workers <= 0:
        return "critical"
    if current_workers == 1:
        return "warning"
    return "ok"


def runners(
    view: Iterable[NodeView], catalog: Sequence[ServiceSpec] = CATALOG, healthy: bool | None = None
) -> dict[str, tuple[str, ...]]:
    """For each catalog service, the sorted ids of the alive or suspect nodes that run it.

    ``healthy``: None, every runner; True, those that report it healthy;
    False, those that do not (starting, unhealthy or stopping).
    """
    alive = [n for n in normalize(view) if n.is_alive]
    return {
        s.name: tuple(
            n.node_id
            for n in alive
            if s.name in n.services and (healthy is None or (s.name in n.healthy_services) == healthy)
        )
        for s in ordered(catalog)
    }


def gaps(view: Iterable[NodeView], catalog: Sequence[ServiceSpec] = CATALOG) -> dict[str, object]:
    """The ``/api/admin/gaps`` document (see the module docstring)."""
    specs = ordered(catalog)
    by_service = runners(view, specs, healthy=True)
    entries = []
    for spec in specs:
        count = len(by_service[spec.name])
        entries.append(
            {
                "service": spec.name,
                "required_type": spec.requires,
                "priority": spec.priority,
                "current_workers": count,
                "status": gap_status(count),
                "port": spec.port,
            }
        )
    order = {s.name: i for i, s in enumerate(specs)}
    entries.sort(key=lambda e: (_STATUS_ORDER[e["status"]], e["priority"], order[e["service"]]))
    covered = sum(1 for e in entries if e["status"] == "ok")
    return {
        "gaps": entries,
        "critical_gaps": [dict(e) for e in entries if e["status"] == "critical"],
        "summary": {
            "total_services": len(specs),
            "covered": covered,
            "needs_attention": len(specs) - covered,
        },
    }


def services_doc(view: Iterable[NodeView], catalog: Sequence[ServiceSpec] = CATALOG) -> dict[str, object]:
    """The ``/api/admin/services`` document: each service, its runners and their count.

    ``workers`` and ``worker_count`` are the runners that report the service
    healthy, as ``current_workers`` in ``gaps()``; ``not_healthy_workers``
    the others that run it (starting, unhealthy or stopping).
    """
    specs = ordered(catalog)
    healthy = runners(view, specs, healthy=True)
    others = runners(view, specs, healthy=False)
    return {
        "services": [
            {
                "name": spec.name,
                "port": spec.port,
                "tier": spec.tier,
                "required_type": spec.requires,
                "worker_count": len(healthy[spec.name]),
                "workers": list(healthy[spec.name]),
                "not_healthy_workers": list(others[spec.name]),
            }
            for spec in specs
        ]
    }

