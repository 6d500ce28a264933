"""How far a service got loading its model: from the child that knows, to the pool that asks.

A model can take minutes to load; until now a node said only ``starting``.
Where a runner can tell how far it got, the figure travels:

1. The child prints ``RMAP2P-PROGRESS <percent>`` on stdout (``Reporter``),
   next to the ``RMAP2P-LISTENING`` line the supervisor already reads, and
   puts ``"progress"`` in its 503 ``/health`` document. A child we do not
   write (vLLM) is read from its own log: ``vllm_progress`` finds the percent
   in its "Loading safetensors checkpoint shards: 50% Completed" lines.
2. The supervisor keeps the last figure of the current run and logs it in
   steps (``services.supervisor``); ``ProcessRunner.load_progress`` offers it
   while the service is not ready.
3. The service manager gossips it in ``NodeMeta.loading`` as
   ``(service, percent)`` pairs, rounded down to ``GOSSIP_STEP`` points so a
   load changes the metadata at most ``100 / GOSSIP_STEP`` times; metadata
   is re-gossiped on every change, so finer steps would cost every node.
4. ``/api/admin/workers`` shows each member's ``loading`` and
   ``/api/admin/services`` each service's ``loading`` nodes (``add_loading``).

What the figure means depends on what the engine can see: llama.cpp reports
its own tensor loading (a real fraction); vLLM its checkpoint shards;
sentence-transformers and spaCy only the steps of their load (library
imported, model read, ready), which is coarse but true. A service whose
runner cannot tell is listed nowhere: ``starting`` alone says it loads.
"""

from __future__ import annotations

import math
import re
import sys
import threading
from collections.abc import Callable, Iterable

from membership import MemberView

PROGRESS = "RMAP2P-PROGRESS"
"""Prefix of the stdout line on which a child reports its load progress in percent."""
GOSSIP_STEP = 5
"""Percent points between two gossiped figures of one load."""

_VLLM = re.compile(r"checkpoint shards:\s*(\d{1,3})% Completed")


def parse_progress_line(text: str) -> int | None:
    """The percent of a ``RMAP2P-PROGRESS <n>`` line; None for any other line or a value out of 0..100."""
    if not text.startswith(PROGRESS):
        return None
    parts = text.split()
    if len(parts) != 2 or not parts[1].isascii() or not parts[1].isdigit() or len(parts[1]) > 3:
        return None
    value = int(parts[1])
    return value if value <= 100 else None


def vllm_progress(text: str) -> int | None:
    """The percent in one of vLLM's "Loading safetensors checkpoint shards: 50% Completed | 1/2" lines."""
    m = _VLLM.search(text)
    if m is None:
        return None
    value = int(m.group(1))
    return value if value <= 100 else None


def gossip_percent(percent: int) -> int:
    """``percent`` rounded down to ``GOSSIP_STEP`` points (100 stays 100)."""
    return max(0, min(100, percent - percent % GOSSIP_STEP))


class Reporter:
    """The child's side: ``report(fraction)`` from any thread prints the percent when it grows.

    ``write`` gets each ``RMAP2P-PROGRESS <n>`` line (default: stdout, flushed);
    ``percent`` is the last figure, for the child's own ``/health``.
    """

    def __init__(self, write: Callable[[str], None] | None = None) -> None:
        self._write = write or _print
        self._lock = threading.Lock()
        self.percent: int | None = None

    def report(self, fraction: float) -> None:
        # An engine's callback may run in a C library's thread: never raise from here.
        try:
            value = float(fraction)
        except (TypeError, ValueError):
            return
        if math.isnan(value):
            return
        percent = int(max(0.0, min(1.0, value)) * 100)
        with self._lock:  # held while writing too, so lines from two threads keep their order
            if self.percent is not None and percent <= self.percent:
                return
            self.percent = percent
            self._write(f"{PROGRESS} {percent}")


def _print(line: str) -> None:
    print(line, file=sys.stdout, flush=True)


def add_loading(doc: dict[str, object], members: Iterable[MemberView]) -> None:
    """Put ``loading`` (``[{"node_id", "progress"}]``) on each service of a ``services_doc`` document."""
    found: dict[str, list[dict[str, object]]] = {}
    for m in sorted(members, key=lambda m: m.node):
        if m.status.is_down:
            continue
        for service, percent in m.meta.loading:
            found.setdefault(service, []).append({"node_id": m.node, "progress": percent})
    for entry in doc.get("services", []):  # type: ignore[union-attr]
        if isinstance(entry, dict):
            entry["loading"] = found.get(str(entry.get("name")), [])
