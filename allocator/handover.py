"""What a node should start and stop, given its row of the allocation: make-before-break.

A service the allocation moved away is stopped only once some *other* alive
node reports it healthy, so a hand-over never leaves the pool without the
service; until then the old runner keeps serving. The daemon's service
manager and the simulator both decide with this rule (through
``allocator.actions``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from allocator.view import NodeView


@dataclass(frozen=True, slots=True)
class Plan:
    start: tuple[str, ...]
    stop: tuple[str, ...]
    keep_for_handover: tuple[str, ...]
    """Services we no longer should run but keep until another node serves them healthy."""


def plan(me: str, running: Iterable[str], desired: Iterable[str], view: Iterable[NodeView]) -> Plan:
    running_t = tuple(sorted(set(running)))
    desired_set = set(desired)
    healthy_elsewhere: set[str] = set()
    for node in view:
        if node.node_id != me and node.status == "alive":
            healthy_elsewhere.update(node.healthy_services)
    start = tuple(sorted(desired_set - set(running_t)))
    losing = [s for s in running_t if s not in desired_set]
    stop = tuple(s for s in losing if s in healthy_elsewhere)
    keep = tuple(s for s in losing if s not in healthy_elsewhere)
    return Plan(start, stop, keep)
