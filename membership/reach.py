"""Is this node directly reachable from outside? The pure half of the reachability check (issue 16).

Mechanism. A node asks one or two edge nodes, over TCP (``ReachCheck``:
"reach me back at host:port and show me this nonce"), to reach it back at
the address it advertises. Each edge sends a ``ReachProbe`` carrying the
nonce from a *fresh* socket, never its gossip socket: a home router's
conntrack entry for the node's own gossip to that edge would let a reply
from the edge's gossip port in and fake reachability. The probe goes once
as a UDP datagram (to the gossip socket) and once as a TCP frame (to the
gossip port, which answers it with the same probe); then the edge answers
the check with a ``ReachResult``. The *asker* decides from what it received,
not from what the edge claims: a nonce that arrived by UDP proves UDP, one
that arrived by TCP proves TCP. Directly reachable means both, from at
least one edge (a node one edge reaches is not behind NAT; a lost datagram
or a partition from one edge must not condemn it).

With no edge to ask, or no edge answering, the verdict is ``unknown``,
which the daemon treats as direct: a lone pool, or one whose edges are all
down, must not start looking for relays it cannot have.

Here: the verdict (:func:`judge`), its words for the log, the choice of
edges and the edge's rule for whom it answers. The sockets are in
``p2p/reachability.py``, the schedule in the daemon.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from membership.messages import Addr

EDGES_PER_CHECK = 2
"""Edges asked per check: two, so that one lossy or partitioned edge does not decide alone."""


class Verdict(StrEnum):
    DIRECT = "direct"
    UNREACHABLE = "unreachable"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class EdgeAnswer:
    """What one edge's check showed the asker."""

    edge: str
    answered: bool
    """The edge replied to the check (a ``ReachResult`` with our nonce)."""
    udp: bool = False
    """Its UDP probe arrived on our gossip socket."""
    tcp: bool = False
    """Its TCP probe arrived at our gossip port."""
    observed: Addr | None = None
    """Our address as the edge saw our request (after any NAT)."""
    error: str = ""
    """Why the edge did not answer, or what its TCP probe met; for the log."""


@dataclass(frozen=True, slots=True)
class Reachability:
    """The verdict of one check; ``udp``/``tcp`` are None while unknown."""

    verdict: Verdict
    address: Addr | None
    udp: bool | None = None
    tcp: bool | None = None
    checked_by: tuple[str, ...] = ()
    """The edges that answered."""
    observed: Addr | None = None

    @property
    def reachable(self) -> bool | None:
        """True: directly reachable; False: not (it needs a relay); None: nobody could tell yet."""
        return None if self.verdict is Verdict.UNKNOWN else self.verdict is Verdict.DIRECT

    @property
    def direct(self) -> bool:
        """Peers can reach this node at ``address``, or nobody could tell (unknown counts as direct)."""
        return self.verdict is not Verdict.UNREACHABLE

    @property
    def needs_relay(self) -> bool:
        """Edges tried and could not reach this node on UDP and TCP both: it needs a relay."""
        return self.verdict is Verdict.UNREACHABLE

    def describe(self, node: str) -> str:
        """The log line: who checked, what got through."""
        where = _fmt(self.address) if self.address else "?"
        by = ",".join(self.checked_by)
        if self.verdict is Verdict.DIRECT:
            return f"node {node}: directly reachable at {where} (checked by edges {by})"
        if self.verdict is Verdict.UNKNOWN:
            return f"node {node}: reachability at {where} unknown: no edge node answered (treated as direct)"
        seen = f"; edges see us as {_fmt(self.observed)}" if self.observed else ""
        return (
            f"node {node}: not reachable from outside at {where}: UDP {_yes(self.udp)}, TCP {_yes(self.tcp)}; "
            f"needs a relay (checked by edges {by}{seen})"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "verdict": str(self.verdict),
            "address": _fmt(self.address) if self.address else None,
            "udp": self.udp,
            "tcp": self.tcp,
            "checked_by": list(self.checked_by),
            "observed": _fmt(self.observed) if self.observed else None,
            "needs_relay": self.needs_relay,
        }


UNKNOWN = Reachability(Verdict.UNKNOWN, None)


def judge(address: Addr, answers: Sequence[EdgeAnswer]) -> Reachability:
    """The verdict from the edges' answers: direct when some edge got through on UDP and on TCP."""
    answered = [a for a in answers if a.answered]
    if not answered:
        return Reachability(Verdict.UNKNOWN, address)
    udp = any(a.udp for a in answered)
    tcp = any(a.tcp for a in answered)
    observed = next((a.observed for a in answered if a.observed is not None), None)
    verdict = Verdict.DIRECT if udp and tcp else Verdict.UNREACHABLE
    return Reachability(verdict, address, udp, tcp, tuple(a.edge for a in answered), observed)


def pick_edges(candidates: Iterable[tuple[str, Addr]], me: str, rng: random.Random, k: int = EDGES_PER_CHECK) -> list[tuple[str, Addr]]:
    """Up to ``k`` edges to ask, at random among ``candidates`` (node id, gossip address), never ``me``.

    Sorted first, so that the choice depends on the seed only and not on the view's order.
    """
    pool = sorted((c for c in candidates if c[0] != me), key=lambda c: c[0])
    return rng.sample(pool, min(k, len(pool)))


def should_answer(asker_known: bool, in_flight: int, limit: int) -> str | None:
    """The edge's rule: None to go ahead, else why it stays silent.

    An edge answers members it holds a record of (any status: a node behind NAT is
    soon suspected by those who cannot reach it, and asks again later) and at most
    ``limit`` checks at once, so that nobody turns it into a prober of arbitrary
    addresses.
    """
    if not asker_known:
        return "asker is not a member we know"
    if in_flight >= limit:
        return f"{limit} checks already in flight"
    return None


def _yes(flag: bool | None) -> str:
    return "?" if flag is None else ("yes" if flag else "no")


def _fmt(addr: Addr | None) -> str:
    if addr is None:
        return "?"
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
