"""What many machines in one process may share: caches, and a converged view to start from.

A daemon runs one machine and needs neither. A driver that runs thousands of
machines in one process (the simulator) gives all of them:

- one ``SharedCaches``: the verified alive records, interned (every machine
  points at one object per ``(node, incarnation, signature)``, so N machines
  that know N members hold N records, not N²), and the decode memo (the raw
  fields of a record decode to the same immutable ``Alive`` everywhere). Both
  are caches: sharing them changes memory and speed, never what a machine
  decides, sends or reports.
- one ``ConvergedView``, for a warm start: the view a pool converges to (every
  member alive, nothing left to gossip), built and verified once and
  installed into each machine with ``Membership.install_view``. Its lists are
  shared read-only by every machine that installs it; a machine copies what it
  changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from membership.errors import LocalProtocolError, RemoteProtocolError
from membership.messages import Alive
from membership.signing import Verify
from membership.wire import AliveMemo

InternKey = tuple[str, int, bytes]
"""``(node, incarnation, signature)``: what identifies one signed alive record."""


@dataclass(frozen=True, slots=True)
class SharedCaches:
    """Caches a driver of many machines in one process may share among them (see the module doc).

    The daemon passes none: an intern table of one machine's records would only grow.
    """

    alive_intern: dict[InternKey, Alive] = field(default_factory=dict)
    """Alive records some machine has verified, by ``(node, incarnation, signature)``: a machine
    that receives one of these takes the interned object instead of checking it again."""
    decode_memo: AliveMemo = field(default_factory=lambda: AliveMemo(limit=1 << 17))
    """Decoded alive records by their raw fields (``wire.decode_datagram``)."""

    def intern(self, records: Iterable[Alive]) -> None:
        """Add records the caller vouches for (its own machines' records, say) to the intern table."""
        table = self.alive_intern
        for a in records:
            table.setdefault((a.node, a.incarnation, a.signature), a)


@dataclass(frozen=True, slots=True, eq=False)
class ConvergedView:
    """Every member alive, at the records given, in a fixed order; build it with ``of``.

    The order matters to reproducible drivers: a machine's member list (which its
    random picks index) follows it, with the machine's own id left out.
    """

    records: tuple[Alive, ...]
    ids: list[str]
    """The records' node ids, in order (shared: read only)."""
    index: dict[str, int]
    """Position of each id in ``ids``."""
    pairs: tuple[tuple[str, Alive], ...]
    """``(id, record)`` in order: what a machine's member table is updated with."""
    ring: list[str]
    """Every id, sorted: the ring of successors (shared copy-on-write by the machines)."""
    positions: list[int]
    """``0 .. len - 1``: one int object per position, shared by every machine's position table."""

    @classmethod
    def of(cls, records: Sequence[Alive], verify: Verify) -> ConvergedView:
        """A view of ``records``, each checked once here (signature, decodable metadata), not again
        by each machine that installs it. Raises LocalProtocolError on a bad or repeated record."""
        index: dict[str, int] = {}
        for k, a in enumerate(records):
            if a.node in index:
                raise LocalProtocolError(f"converged view: {a.node} appears twice")
            try:
                _ = a.meta  # decoded now, so that a bad record fails here
            except RemoteProtocolError as exc:
                raise LocalProtocolError(f"converged view: bad metadata for {a.node}: {exc}") from None
            if not verify(a.node, a.public_key, a.signed_payload(), a.signature):
                raise LocalProtocolError(f"converged view: bad signature on the record of {a.node}")
            index[a.node] = k
        ids = [a.node for a in records]
        return cls(
            records=tuple(records),
            ids=ids,
            index=index,
            pairs=tuple(zip(ids, records)),
            ring=sorted(ids),
            positions=list(range(len(ids))),
        )

    def __len__(self) -> int:
        return len(self.records)
