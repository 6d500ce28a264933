"""Transmit-limited broadcast queue (memberlist's ``TransmitLimitedQueue``).

Every update we learn (alive, suspect, dead) is queued and piggybacked on
outgoing pings, acks and gossip ticks until it has been sent
``retransmit_limit(mult, n)`` times. One queued update per member: a newer
message about the same member replaces the older one (invalidation), so a
flapping member costs one slot, not one per flap. Updates sent fewest times
go first, and among equals the newest first, so fresh news overtakes news
that most nodes already have. Items are kept in buckets by transmit count so
that picking a datagram's worth is proportional to what is picked, not to
the queue length (a join wave can queue thousands).

The queue is bounded (serf prunes its queues the same way): beyond
``max_items`` the update sent most often goes, but never one under a
``protected`` key (the node's own alive: its refutations must get out) and
never one queued with ``keep`` (suspicions, deaths and others'
refutations: dropping one costs a false death, or a crash that some node
learns of only by probing it itself, minutes later at 1,000 nodes). What
may go are joins and metadata updates, which anti-entropy also carries. A
node only sends a few datagrams' worth per gossip tick, so a queue much
deeper than that holds news that is seconds old before it leaves; in a
join storm, anti-entropy (the joiners' catch-up push-pulls) spreads it
more cheaply than thousands of stale retransmissions. The bound counts
only what it may drop: a mass failure (hundreds of kept suspicions and
deaths) does not push out a metadata update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def retransmit_limit(mult: int, n: int) -> int:
    """``mult * ceil(log10(n + 1))``: how many times each node sends each update."""
    return mult * math.ceil(math.log10(n + 1))


@dataclass(slots=True)
class _Item:
    key: str
    payload: bytes
    transmits: int
    cap: int | None = None
    """A lower retransmit limit for this item (hints that need not reach every node)."""
    size: int = 0
    keep: bool = False
    """Never dropped to bound the queue."""


class BroadcastQueue:
    def __init__(self, max_items: int = 100_000, protected: frozenset[str] = frozenset()) -> None:
        self._by_key: dict[str, _Item] = {}
        self._buckets: dict[int, dict[str, _Item]] = {}
        self._max_items = max_items
        self._protected = protected
        self._droppable = 0  # items neither kept nor protected: what the bound counts
        self.pruned = 0
        self.queued_total = 0
        """Updates ever queued: a cheap "anything new since?" for the machine."""

    def __len__(self) -> int:
        return len(self._by_key)

    def queue(self, key: str, payload: bytes, cap: int | None = None, keep: bool = False) -> None:
        """Queue ``payload`` under ``key``, replacing any older update under it.

        ``cap`` sends this item at most that many times, however large the limit;
        ``keep`` exempts it from the bound.
        """
        self._remove(key)
        keep = keep or key in self._protected
        if not keep:
            if self._droppable >= self._max_items:
                self._drop_oldest()
            self._droppable += 1
        item = _Item(key, payload, 0, cap, len(payload), keep)
        self.queued_total += 1
        self._by_key[key] = item
        self._buckets.setdefault(0, {})[key] = item

    def take(self, budget: int, limit: int, per_item_overhead: int = 0) -> list[bytes]:
        """Pick updates that fit in ``budget`` bytes; each pick counts as one transmit."""
        buckets = self._buckets
        if not buckets:
            return []
        picked: list[_Item] = []
        skipped = 0
        for transmits in sorted(buckets):
            for item in reversed(buckets[transmits].values()):
                cost = item.size + per_item_overhead
                if cost <= budget:
                    picked.append(item)
                    budget -= cost
                else:
                    skipped += 1
                # Stop once nothing more can fit or a few did not: a deep queue holds hundreds of
                # alives (~240 B) and scanning them all for a smaller one costs more than it saves.
                if budget < 24 or skipped > 8:
                    break
            if budget < 24 or skipped > 8:
                break
        # Moved only now: an item moved up a bucket while we scan must not be picked twice.
        by_key = self._by_key
        for item in picked:
            key = item.key
            bucket = buckets[item.transmits]
            del bucket[key]
            if not bucket:
                del buckets[item.transmits]
            item.transmits += 1
            if item.transmits >= (limit if item.cap is None else min(limit, item.cap)):
                del by_key[key]
                if not item.keep:
                    self._droppable -= 1
            else:
                buckets.setdefault(item.transmits, {})[key] = item
        return [item.payload for item in picked]

    def clear(self) -> None:
        self._by_key.clear()
        self._buckets.clear()
        self._droppable = 0

    def transmits(self, key: str) -> int | None:
        item = self._by_key.get(key)
        return None if item is None else item.transmits

    def _remove(self, key: str) -> None:
        old = self._by_key.pop(key, None)
        if old is not None:
            if not old.keep:
                self._droppable -= 1
            bucket = self._buckets[old.transmits]
            del bucket[key]
            if not bucket:
                del self._buckets[old.transmits]

    def _drop_oldest(self) -> None:
        # The most-sent update; among equals the oldest (buckets keep insertion order).
        for transmits in sorted(self._buckets, reverse=True):
            for key, item in self._buckets[transmits].items():
                if not item.keep:
                    self._remove(key)
                    self.pruned += 1
                    return
