"""allocate(): which services each alive node runs, as a pure function of the view.

Every node runs this on its own copy of the gossiped view and then acts only
on its own row. It must therefore give the same answer for the same view on
every node, whatever order the members arrive in: the view is normalized
(sorted by id, duplicates collapsed), nodes are ranked by ``rank_key``
(blake2b-64 of the node id), and no decision iterates a set or dict in
hash order or draws a random number.

The rule (seed ``000_…`` §2, made exact)
----------------------------------------

Worker types are independent: a node only ever runs services whose
``requires`` equals its ``worker_type`` and that its ``can_run`` allows (None:
all of them). For one type T, with W the alive (alive or suspect) nodes of
type T:

- *runnable*: the services of T that at least one node of W is able to run.
  *slots* = the sum of their ``target`` (the coordinator counts twice).
- *coverage* c(s): nodes of W that keep s; *deficit* d(s) = max(0, target(s) − c(s)).
  s is a *gap* while d(s) > 0.
- *mode*: **specialize** when one service per node can fill every slot:
  the nodes of W can be matched to the slots, each node to one service it
  is able to run, each service s to target(s) distinct nodes (a bipartite
  b-matching, checked by augmenting paths; equivalently Hall's condition:
  every set of runnable services is runnable by at least the sum of their
  targets of nodes). Else **multitask**. Without ``can_run`` limits this is
  simply |W| ≥ slots, the seed's "enough workers". Counting heads instead
  would let nodes that can run nothing push a type into specialize mode and
  leave a critical service uncovered while a capable node sits at cap 1.
- *cap*: how many services a node may hold after gaining g:
  specialize: cap(g) = 1; multitask: cap(g) = 3 if g is critical (priority 1),
  else 2. So the third slot exists only to close a critical gap
  ("heavy multi-tasking, we need coverage").
- *preference* among services (best first):
  ``(−d(s), c(s), priority(s), catalog order(s))``: biggest gap, then fewest
  runners, then most critical, then catalog order.

Then, for each type:

0. **Keep.** A node keeps every service it runs now that is of its type and
   that it is able to run (sticky). Unknown and ineligible services are
   dropped; if more than 3 remain (never produced by this function), the 3
   of best ``(priority, catalog order)`` are kept.
1. **Fresh nodes** (running nothing, able to run something), one at a time in
   ``rank_key`` order: take the most preferred eligible service, gap or not
   (a node with nothing to do adds redundancy); then, in preference order,
   take each further service that is a gap, while the node holds fewer than
   cap(that service).
2. **Close the remaining gaps**, most preferred gap first, one unit at a
   time, by the first of these that applies, until none does:

   a. *add*: a node able to run g, not running it, holding fewer than cap(g)
      services gains g (the node with the fewest services, then by rank);
   b. *switch*: a node able to run g, not running it, drops one copy of a
      service x with c(x) > target(x) (the largest surplus, then least
      critical, then latest in the catalog, then by rank) and runs g;
   c. *hand over*: a node n able to run g, not running it, hands one of its
      services x to a node m ≠ n that is able to run x, does not run it and
      holds fewer than cap(g) services; then n runs g.

   Each step raises c(g) by one and leaves every other coverage at or above
   its target, so the total deficit falls by exactly one per step and the
   loop ends after at most ``sum(target)`` steps.

Scenarios 1–7 of ``000_…`` follow: the first GPU node takes llm-inference
(preference) and vision-ocr (a gap, cap 2) but not rag-embeddings (a gap,
but not critical, so no third slot); the second takes only rag-embeddings
(nothing else is a gap); the third finds |W| = 3 = slots, specializes, and
the preference picks llm-inference; the first edge node takes coordinator
and edge-proxy; the second takes coordinator (1 of its target 2) and
load-balancer.

Stickiness bound (tested in tests/test_allocator_properties.py)
---------------------------------------------------------------

Call a view *settled* when every node's ``services`` equal its row of
``allocate`` on that view. ``allocate`` is idempotent: on a settled view it
returns exactly the current services (step 1 finds no fresh node and step 2
finds nothing to do: the state is the same one at which step 2 stopped).

Let D(V) be the total deficit of a view (``deficit()``), counted on the
services the nodes run at that moment. From a settled view, after one event
(one fresh node joins, or one node becomes dead or leaves), with D' the
deficit right after the event and D'' the deficit of the new allocation:

- every existing node keeps every service it ran, except a service it drops
  in a *switch* or hands over in step 2;
- the number of (node, service) pairs that change on existing nodes (services
  started plus services stopped, the newcomer not counted) is at most
  3·(D' − D''): steps a, b, c change at most 1, 2 and 3 pairs and each
  closes exactly one unit of deficit, and step 1 only touches the newcomer;
- a newcomer starts at most 3 services (at most 1 in specialize mode);
- when no node restricts ``can_run`` (every node able to run every service
  of its type) and, as in this catalog, only critical services have a
  target above 1:

  - a join changes no existing node at all: before the join no node of the
    type had room for a gap and no service was over-covered, the newcomer
    takes gaps before it adds any redundancy, and a join can only lower the
    cap (multitask → specialize);
  - a failure only starts services that are gaps on survivors and only stops
    surplus copies (a *switch*, at most one per unit of deficit closed): a
    hand-over would need a receiver with room that already runs the gap,
    i.e. a gap with a target above 1, which is critical and so has the third
    slot that makes the hand-over unnecessary.

Complexity: one sort of the nodes by rank, then O(|W| · |S_T|) per step and
at most ``sum(target)`` steps per type: 10,000 nodes take well under a second.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from allocator.catalog import CATALOG, ServiceSpec, ordered
from allocator.view import NodeView, normalize, rank_key

MAX_SERVICES = 3
"""No node holds more than this many services (seed 000 §2: "at most 3")."""


def allocate(view: Iterable[NodeView], catalog: Sequence[ServiceSpec] = CATALOG) -> dict[str, tuple[str, ...]]:
    """Map every alive or suspect node to the services it should run, in catalog order.

    Dead and left nodes are absent from the result; an alive node that can run
    nothing maps to ``()``. Never raises on a well-typed view.
    """
    members = normalize(view)
    specs = ordered(catalog)
    rows: dict[str, tuple[str, ...]] = {n.node_id: () for n in members if n.is_alive}
    for worker_type in sorted({s.requires for s in specs}):
        type_specs = [s for s in specs if s.requires == worker_type]
        nodes = sorted(
            (n for n in members if n.is_alive and n.worker_type == worker_type),
            key=lambda n: rank_key(n.node_id),
        )
        if nodes:
            rows.update(_TypeAllocation(nodes, type_specs).run())
    return rows


def deficit(view: Iterable[NodeView], catalog: Sequence[ServiceSpec] = CATALOG) -> int:
    """Total deficit of the services the alive nodes run *now*.

    Sum over runnable services s (some alive node of s's type is able to run
    it) of max(0, target(s) − c(s)), where c(s) counts alive nodes of s's type
    that are able to run s and list it in ``services``. The quantity the
    stickiness bound is stated in.
    """
    members = [n for n in normalize(view) if n.is_alive]
    total = 0
    for spec in ordered(catalog):
        able = [n for n in members if n.worker_type == spec.requires and n.able_to_run(spec.name)]
        if able:
            runners = sum(1 for n in able if spec.name in n.services)
            total += max(0, spec.target - runners)
    return total


def mode(view: Iterable[NodeView], worker_type: str, catalog: Sequence[ServiceSpec] = CATALOG) -> str:
    """``"specialize"`` or ``"multitask"`` for one worker type of the view (see the module docstring)."""
    specs = [s for s in ordered(catalog) if s.requires == worker_type]
    nodes = [n for n in normalize(view) if n.is_alive and n.worker_type == worker_type]
    eligible = [tuple(j for j, s in enumerate(specs) if n.able_to_run(s.name)) for n in nodes]
    runnable = sorted({j for e in eligible for j in e})
    fillable = slots_fillable(eligible, [s.target for s in specs], runnable)
    return "specialize" if fillable else "multitask"


def slots_fillable(eligible: Sequence[Sequence[int]], target: Sequence[int], runnable: Sequence[int]) -> bool:
    """True when each runnable service j can get target[j] distinct nodes, one service per node.

    ``eligible[i]`` lists the services node i is able to run. Nodes with the
    same eligible set are interchangeable, so they are pooled into groups
    (at most 2^k of them for k services, whatever the number of nodes) and the
    slots are filled one unit at a time by augmenting paths: a slot of j takes
    a spare node of a group that can run j, or takes a node from a group that
    can run j away from another service j2, which then looks for a
    replacement in turn. Cost O(slots · k² · groups). False when there is no
    runnable service.
    """
    count: dict[frozenset[int], int] = {}
    for elig in eligible:
        if elig:
            key = frozenset(elig)
            count[key] = count.get(key, 0) + 1
    if not runnable or not count:
        return False
    # Sorted so the search visits groups in a fixed order (the answer does not
    # depend on it, but nothing here should iterate in hash order).
    groups = sorted(count, key=sorted)
    used = {g: 0 for g in groups}
    flow: dict[frozenset[int], dict[int, int]] = {g: {} for g in groups}
    for j in runnable:
        for _ in range(target[j]):
            if not _augment(j, groups, count, used, flow):
                return False
    return True


def _augment(
    start: int,
    groups: list[frozenset[int]],
    count: dict[frozenset[int], int],
    used: dict[frozenset[int], int],
    flow: dict[frozenset[int], dict[int, int]],
) -> bool:
    # Breadth-first over services. parent[j2] = (g, j): group g gives a unit
    # to j2 today and would give it to j instead, leaving j2 to find another.
    parent: dict[int, tuple[frozenset[int], int] | None] = {start: None}
    queue = [start]
    for j in queue:
        for g in groups:
            if j not in g:
                continue
            if used[g] < count[g]:
                used[g] += 1
                flow[g][j] = flow[g].get(j, 0) + 1
                cur = j
                while (step := parent[cur]) is not None:
                    pg, prev = step
                    flow[pg][cur] -= 1
                    flow[pg][prev] = flow[pg].get(prev, 0) + 1
                    cur = prev
                return True
            for j2 in sorted(flow[g]):
                if flow[g][j2] > 0 and j2 not in parent:
                    parent[j2] = (g, j)
                    queue.append(j2)
    return False


class _TypeAllocation:
    """The allocation of one worker type; indices everywhere, names only at the edges.

    ``nodes`` are sorted by rank, so a node's index is its rank and every
    "then by rank" tie-break is a comparison of indices. Services are indexed
    in catalog order, so "then catalog order" is a comparison of indices too.
    """

    __slots__ = ("nodes", "specs", "target", "priority", "critical", "eligible", "held", "cover", "runnable", "specialize")

    def __init__(self, nodes: list[NodeView], specs: list[ServiceSpec]) -> None:
        self.nodes = nodes
        self.specs = specs
        names = {s.name: j for j, s in enumerate(specs)}
        self.target = [s.target for s in specs]
        self.priority = [s.priority for s in specs]
        self.critical = [s.critical for s in specs]
        self.eligible: list[tuple[int, ...]] = [
            tuple(j for j, s in enumerate(specs) if n.able_to_run(s.name)) for n in nodes
        ]
        self.held: list[list[int]] = [self._kept(n, names, elig) for n, elig in zip(nodes, self.eligible)]
        self.cover = [0] * len(specs)
        for row in self.held:
            for j in row:
                self.cover[j] += 1
        self.runnable = sorted({j for elig in self.eligible for j in elig})
        self.specialize = slots_fillable(self.eligible, self.target, self.runnable)

    def run(self) -> dict[str, tuple[str, ...]]:
        self._place_fresh()
        # Each successful step closes one unit of deficit, so this loop runs at
        # most sum(target) + 1 times; exhausting the bound is our bug.
        for _ in range(sum(self.target) + 1):
            if not self._close_one_gap():
                break
        else:  # pragma: no cover
            raise AssertionError("gap closing did not terminate")
        return {
            n.node_id: tuple(self.specs[j].name for j in sorted(row)) for n, row in zip(self.nodes, self.held)
        }

    # -- helpers -------------------------------------------------------------

    def _kept(self, node: NodeView, names: dict[str, int], elig: tuple[int, ...]) -> list[int]:
        allowed = set(elig)
        kept: list[int] = []
        for name in node.services:
            j = names.get(name)
            if j is not None and j in allowed and j not in kept:
                kept.append(j)
        if len(kept) > MAX_SERVICES:
            kept = sorted(kept, key=lambda j: (self.priority[j], j))[:MAX_SERVICES]
        return kept

    def _deficit(self, j: int) -> int:
        return max(0, self.target[j] - self.cover[j])

    def _preference(self, j: int) -> tuple[int, int, int, int]:
        return (-self._deficit(j), self.cover[j], self.priority[j], j)

    def _cap(self, j: int) -> int:
        if self.specialize:
            return 1
        return MAX_SERVICES if self.critical[j] else 2

    def _gain(self, i: int, j: int) -> None:
        self.held[i].append(j)
        self.cover[j] += 1

    def _drop(self, i: int, j: int) -> None:
        self.held[i].remove(j)
        self.cover[j] -= 1

    # -- step 1 --------------------------------------------------------------

    def _place_fresh(self) -> None:
        for i, row in enumerate(self.held):
            if row or not self.eligible[i]:
                continue
            order = sorted(self.eligible[i], key=self._preference)
            self._gain(i, order[0])
            # Only the first pick changed coverage, so the rest keep their order.
            for j in order[1:]:
                if self._deficit(j) == 0:
                    break
                if len(row) < self._cap(j):
                    self._gain(i, j)

    # -- step 2 --------------------------------------------------------------

    def _close_one_gap(self) -> bool:
        gaps = sorted((j for j in self.runnable if self._deficit(j) > 0), key=self._preference)
        return any(self._add(g) or self._switch(g) or self._hand_over(g) for g in gaps)

    def _add(self, g: int) -> bool:
        cap = self._cap(g)
        best: tuple[int, int] | None = None
        for i, row in enumerate(self.held):
            if len(row) < cap and g not in row and g in self.eligible[i]:
                key = (len(row), i)
                if best is None or key < best:
                    best = key
        if best is None:
            return False
        self._gain(best[1], g)
        return True

    def _switch(self, g: int) -> bool:
        best: tuple[int, int, int, int, int] | None = None
        for i, row in enumerate(self.held):
            if g in row or g not in self.eligible[i]:
                continue
            for x in row:
                surplus = self.cover[x] - self.target[x]
                if surplus > 0:
                    key = (-surplus, -self.priority[x], -x, i, x)
                    if best is None or key < best:
                        best = key
        if best is None:
            return False
        i, x = best[3], best[4]
        self._drop(i, x)
        self._gain(i, g)
        return True

    def _hand_over(self, g: int) -> bool:
        cap = self._cap(g)
        # For each service x, the two best receivers (fewest services, then
        # rank) that could take x: two, so that one remains when the best
        # receiver is the giver itself.
        receivers: dict[int, list[tuple[int, int]]] = {}
        for m, row in enumerate(self.held):
            if len(row) >= cap:
                continue
            for x in self.eligible[m]:
                if x in row:
                    continue
                top = receivers.setdefault(x, [])
                top.append((len(row), m))
                top.sort()
                del top[2:]
        if not receivers:
            return False
        best: tuple[int, int, int, int, int] | None = None
        for n, row in enumerate(self.held):
            if g in row or g not in self.eligible[n]:
                continue
            for x in row:
                for load, m in receivers.get(x, ()):
                    if m != n:
                        # Hand over the least critical service to the least
                        # loaded receiver; rank breaks the rest.
                        key = (load, -self.priority[x], -x, n, m)
                        if best is None or key < best:
                            best = key
                        break
        if best is None:
            return False
        x, n, m = -best[2], best[3], best[4]
        self._drop(n, x)
        self._gain(m, x)
        self._gain(n, g)
        return True
