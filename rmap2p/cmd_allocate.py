"""``python -m rmap2p allocate``: the allocator on a view read as JSON from stdin.

Input: ``{"nodes": [{"node_id", "worker_type", "services": [...], "status"?,
"can_run"?, "specialization"?, "services_status"?}]}``. Output:
``{"assignments": {node_id: [service, ...]}, "gaps": {...}}`` (``--indent 0``:
one line). A bad document is the caller's fault: one line on stderr and exit
code 2, never a traceback.

Health: the gaps document counts only runners that report a service healthy.
A listed service is taken as healthy unless the node's optional
``services_status`` (``{service: "healthy" | "starting" | "unhealthy" |
"stopping"}``, the shape ``/api/admin/workers`` shows) says otherwise; a
status for a service the node does not list is an error. (An explicit
``healthy_services`` list, the allocator's own field, replaces the default
"all listed services" before ``services_status`` applies.)

The gaps document is computed on the view as it will be once every node runs
its assignment: a newly assigned service, and a kept one reported
``starting``, count as the healthy runners they will be once started; a kept
one reported ``unhealthy`` or ``stopping`` does not.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Mapping

from allocator import NodeView, allocate, gaps, view_from_json
from membership.meta import HEALTH_STATES

EXIT_BAD_INPUT = 2


def run(args: argparse.Namespace) -> int:
    indent = getattr(args, "indent", 2)
    try:
        doc = json.load(sys.stdin)
    except UnicodeDecodeError as exc:
        print(f"rmap2p allocate: stdin is not text in the locale's encoding: {exc.reason}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError; deep nesting recurses
        print(f"rmap2p allocate: stdin is not valid JSON: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        parsed = view_from_json(doc)
        statuses = [_statuses(raw, node) for raw, node in zip(doc["nodes"], parsed)]
    except ValueError as exc:
        print(f"rmap2p allocate: bad view: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    view = [
        dataclasses.replace(n, healthy_services=tuple(s for s in n.services if st[s] == "healthy"))
        for n, st in zip(parsed, statuses)
    ]
    assignments = allocate(view)
    # The gaps the pool will have once every node runs what it was assigned.
    applied = [
        dataclasses.replace(
            n,
            services=assignments[n.node_id],
            healthy_services=tuple(s for s in assignments[n.node_id] if st.get(s, "starting") in ("healthy", "starting")),
        )
        if n.node_id in assignments
        else n
        for n, st in zip(view, statuses)
    ]
    out = {
        "assignments": {node_id: list(services) for node_id, services in sorted(assignments.items())},
        "gaps": gaps(applied),
    }
    json.dump(out, sys.stdout, indent=indent if indent and indent > 0 else None)
    sys.stdout.write("\n")
    return 0


def _statuses(raw: Mapping[str, object], node: NodeView) -> dict[str, str]:
    """The health of each service ``node`` lists, from ``healthy_services`` and ``services_status``."""
    where = f"node {node.node_id!r}"
    default_healthy = set(node.healthy_services) if "healthy_services" in raw else set(node.services)
    health = {s: "healthy" if s in default_healthy else "unhealthy" for s in node.services}
    given = raw.get("services_status")
    if given is None:
        return health
    if not isinstance(given, Mapping):
        raise ValueError(f"{where}: services_status must be an object {{service: state}}")
    for service, state in given.items():
        if state not in HEALTH_STATES:
            raise ValueError(
                f"{where}: services_status[{service!r}] must be one of {', '.join(HEALTH_STATES)}, not {_short(state)}"
            )
        if service not in health:
            raise ValueError(f"{where}: services_status names {service!r}, which is not in its services")
        health[service] = state
    return health


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
