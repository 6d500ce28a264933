"""``python -m rmap2p allocate``: the allocator on a view read as JSON from stdin.

Input: ``{"nodes": [{"node_id", "worker_type", "services": [...], "status"?,
"can_run"?, "specialization"?}]}``. Output: ``{"assignments": {node_id:
[service, ...]}, "gaps": {...}}`` where the gaps document is computed on the
view as it will be once every node runs its assignment (``--indent 0``: one
line). A bad document is the caller's fault: one line on stderr and exit
code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from allocator import allocate, gaps, view_from_json

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
        view = view_from_json(doc)
    except ValueError as exc:
        print(f"rmap2p allocate: bad view: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    assignments = allocate(view)
    # The gaps the pool will have once every node runs what it was assigned.
    applied = [
        dataclasses.replace(n, services=assignments[n.node_id]) if n.node_id in assignments else n for n in view
    ]
    out = {
        "assignments": {node_id: list(services) for node_id, services in sorted(assignments.items())},
        "gaps": gaps(applied),
    }
    json.dump(out, sys.stdout, indent=indent if indent and indent > 0 else None)
    sys.stdout.write("\n")
    return 0
