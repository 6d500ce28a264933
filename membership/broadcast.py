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
``max_items`` the update sent most often goes, never one under a
``protected`` key (the node's own alive: its refutations must get out). A
node only sends a few datagrams' worth per gossip tick, so a queue much
deeper than that holds news that is seconds old before it leaves; in a
join storm, anti-entropy (the joiners' catch-up push-pulls) spreads it
more cheaply than thousands of stale retransmissions.
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


class BroadcastQueue:
    def __init__(self, max_items: int = 100_000, protected: frozenset[str] = frozenset()) -> None:
        self._by_key: dict[str, _Item] = {}
        self._buckets: dict[int, dict[str, _Item]] = {}
        self._max_items = max_items
        self._protected = protected
        self.pruned = 0
        self.queued_total = 0
        """Updates ever queued: a cheap "anything new since?" for the machine."""

    def __len__(self) -> int:
        return len(self._by_key)

    def queue(self, key: str, payload: bytes, cap: int | None = None) -> None:
        """Queue ``payload`` under ``key``, replacing any older update under it.

        ``cap`` sends this item at most that many times, however large the limit.
        """
        self._remove(key)
        if len(self._by_key) >= self._max_items:
            self._drop_oldest()
        item = _Item(key, payload, 0, cap)
        self.queued_total += 1
        self._by_key[key] = item
        self._buckets.setdefault(0, {})[key] = item

    def take(self, budget: int, limit: int, per_item_overhead: int = 0) -> list[bytes]:
        """Pick updates that fit in ``budget`` bytes; each pick counts as one transmit."""
        picked: list[_Item] = []
        skipped = 0
        for transmits in sorted(self._buckets):
            bucket = self._buckets[transmits]
            for item in reversed(bucket.values()):
                cost = len(item.payload) + per_item_overhead
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
        for item in picked:
            self._buckets[item.transmits].pop(item.key, None)
            if not self._buckets[item.transmits]:
                del self._buckets[item.transmits]
            item.transmits += 1
            if item.transmits >= (limit if item.cap is None else min(limit, item.cap)):
                del self._by_key[item.key]
            else:
                self._buckets.setdefault(item.transmits, {})[item.key] = item
        return [item.payload for item in picked]

    def clear(self) -> None:
        self._by_key.clear()
        self._buckets.clear()

    def transmits(self, key: str) -> int | None:
        item = self._by_key.get(key)
        return None if item is None else item.transmits

    def _remove(self, key: str) -> None:
        old = self._by_key.pop(key, None)
        if old is not None:
            bucket = self._buckets[old.transmits]
            del bucket[key]
            if not bucket:
                del self._buckets[old.transmits]

    def _drop_oldest(self) -> None:
        # The most-sent update; among equals the oldest (buckets keep insertion order).
        for transmits in sorted(self._buckets, reverse=True):
            for key in self._buckets[transmits]:
                if key not in self._protected:
                    self._remove(key)
                    self.pruned += 1
                    return
