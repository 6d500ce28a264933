"""Requests in flight to a member that the pool declares dead: answered now, not left to hang.

A router that forwarded a request to another node's gateway waits for its
answer with no deadline shorter than ``READ_TIMEOUT`` (an LLM may think for
minutes). When that host dies, its packets vanish: no reset, no FIN, so the
wait would last until that timeout while every new request already goes
elsewhere. SWIM settles the question within one failure detection; this
book turns its verdict (``dead`` or ``left``) into the end of every wait on
that member. Suspicion alone is not enough: a suspect is usually alive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from membership import MemberEvent

DOWN = frozenset({"dead", "left"})
MAX_WATCHED = 65536
"""Bound on futures held at once (one per request in flight to another node)."""


class MemberWatch:
    """Futures that resolve when their member is declared dead or gone."""

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Future[str]]] = {}
        self._count = 0

    def watch(self, node: str) -> asyncio.Future[str] | None:
        """A future set to the event kind when ``node`` is declared down; None when the book is full."""
        if self._count >= MAX_WATCHED:
            return None
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(node, set()).add(fut)
        self._count += 1
        return fut

    def forget(self, node: str, fut: asyncio.Future[str] | None) -> None:
        if fut is None:
            return
        waiting = self._waiting.get(node)
        if waiting is not None and fut in waiting:
            waiting.discard(fut)
            self._count -= 1
            if not waiting:
                del self._waiting[node]
        if not fut.done():
            fut.cancel()

    def on_events(self, events: Iterable[MemberEvent]) -> None:
        for ev in events:
            if str(ev.kind) in DOWN:
                for fut in self._waiting.pop(ev.node, ()):
                    self._count -= 1
                    if not fut.done():
                        fut.set_result(str(ev.kind))

    def __len__(self) -> int:
        return self._count
