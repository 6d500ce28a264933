"""The line ``rmap2p join`` logs once its first allocation is applied: what this node runs, what the pool lacks.

The service manager logs each start and the supervisors each model's
readiness; a volunteer watching the terminal also wants the outcome in one
place: "running: ner-extraction, document-processing (assigned by the
allocation); the pool still needs: 1 more GPU worker for llm-inference".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from allocator.gaps import gaps
from allocator.members import to_node_views
from rmap2p.daemon import Node
from rmap2p.dashboard import TYPE_WORDS, gap_sentences
from services.manager import ServiceManager

log = logging.getLogger(__name__)

POLL = 0.5
READY_WAIT = 180.0
"""How long the report waits for starting services (a model loading) before saying they are still starting."""


def summary(running: Mapping[str, str], gaps_doc: dict[str, Any]) -> str:
    """``running`` is service -> health (healthy, starting, unhealthy); ``gaps_doc`` as /api/admin/gaps."""
    if running:
        shown = [s if h == "healthy" else f"{s} ({h})" for s, h in sorted(running.items())]
        head = f"running: {', '.join(shown)} (assigned by the allocation)"
    else:
        head = "running no service (the allocation gives this node none now)"
    sentences = gap_sentences(gaps_doc)
    by_type: dict[str, list[str]] = {}
    for g in sentences:
        if g["status"] == "critical":
            by_type.setdefault(TYPE_WORDS.get(g["required_type"], str(g["required_type"])), []).append(g["service"])
    needs = [f"{'an' if kind[0] in 'aeiouAEIOU' else 'a'} {kind} worker for {', '.join(services)}" for kind, services in by_type.items()]
    tail = f"the pool still needs {'; '.join(needs)}" if needs else "every service has a worker"
    spares = [g["service"] for g in sentences if g["status"] == "warning"]
    if spares:
        tail += f"; no spare for {', '.join(spares)}"
    return f"{head}; {tail}"


async def report_first_allocation(node: Node, manager: ServiceManager) -> None:
    """Log :func:`summary` once the first allocation is applied and its services started (or :data:`READY_WAIT`)."""
    await node.settled.wait()
    started = time.monotonic()
    while True:
        await asyncio.sleep(POLL)
        if manager.reconciliations < 1:
            continue
        running = manager.running
        if all(h != "starting" for h in running.values()) or time.monotonic() - started > READY_WAIT:
            break
    assert node.machine is not None
    try:
        doc = gaps(to_node_views(node.members()))
        line = summary(running, doc)
    except Exception:  # a report line must never take the node's task group down
        log.exception("node %s: cannot summarise the first allocation", node.machine.id)
        return
    log.info("node %s: %s", node.machine.id, line)
