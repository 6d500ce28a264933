"""allocate(): which services each alive node runs, as a pure function of the view.

Every node runs this on its own copy of the gossiped view and then acts only
on its own row. It must therefore give the same answer for the same view on
every node, whatever order the members arrive in: the view is normalized
(sorted by id, duplicates collapsed), nodes are ranked by ``rank_key``
(blake2b-64 of the node id), and no decision iterates a set or dict in
hash order or draws a random number.

The rule (seed ``000_…`` §2, made exact)
----------------------------------------

Steps 0–2 allocate each worker type on its own: there a node only runs
services whose ``requires`` equals its ``worker_type`` and that its
``can_run`` allows (None: all of them). Step 3 then lets hosts of another type
take what a type leaves uncovered (GPU nodes, CPU services). For one type T,
with W the alive (alive or suspect) nodes of type T:

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
- *orphan*: a service of T that a *dead* member of type T ran when it died
  (dead members stay in the view, with their last metadata, until reaped);
  storage services are never orphans (``NO_ORPHANS``: their failover is
  the replicas' and the fencing's, ``allocator.replicas``).
- *cap*: how many services a node may hold after gaining g:
  specialize: cap(g) = 1; multitask: cap(g) = 3 if g is critical (priority 1)
  or an orphan, else 2. So the third slot exists only to close a critical
  gap ("heavy multi-tasking, we need coverage") or to carry what a crashed
  machine ran: a volunteer's machine that dies usually comes back, and until
  it does (or is reaped) its services must still be served. A view with no
  dead member (a cold start, the seed scenarios) has no orphan.
- *preference* among services (best first):
  ``(−d(s), c(s), priority(s), catalog order(s))``: biggest gap, then fewest
  runners, then most critical, then catalog order.

Then, for each type:

0. **Keep.** A node keeps every service it runs now that is of its type and
   that it is able to run (sticky). Unknown and ineligible services are
   dropped; if more than 3 remain (never produced by this function), the 3
   of best ``(priority, catalog order)`` are kept. A third service taken
   for an orphan stays when its member comes back or is reaped (sticky,
   like any kept service).
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
      holds fewer than cap(g) services; then n runs g;
   d. *yield* (only when a, b and c apply to no gap): g runs nowhere
      (c(g) = 0) and a node able to run g holds a less critical service x
      (priority(x) > priority(g)); it drops x and runs g. The copy to drop:
      one whose loss leaves x still running, then the least critical, then
      latest in the catalog, then by rank. Priority beats stickiness: after
      a failure a survivor busy with notes-coa (3) makes way for an
      uncovered document-processing (2). It keeps the node's count (a swap),
      so it never breaks the cap; x may then be closed elsewhere by a–d.

   Steps a, b and c raise c(g) by one and leave every other coverage at or
   above its target; d trades a unit of deficit of g for one of a less
   critical x. With weights w(s) = P + 1 − priority(s) (P the largest
   priority of the type), the *weighted deficit* Σ w(s)·d(s) therefore falls
   by at least one per step, and the loop ends after at most
   Σ w(s)·target(s) steps.
3. **Hosts** (``FALLBACK_HOSTS`` in the catalog: GPU nodes host CPU
   services, seed ``003_…``: "Let GPU workers handle CPU tasks during idle
   time"). After steps 0–2 for every type, a CPU service s whose CPU nodes
   run it fewer than target(s) times has a *residual* target(s) − c_cpu(s).
   The hosts are the alive GPU nodes whose ``can_run`` is given *and names*
   a residual service (None means "every service of my type", so a node
   only hosts what it advertises, and a view without explicit ``can_run``,
   as in the scenarios, hosts nothing). Steps 0 and 2 (a–d) run again on the
   hosts, for the residual services with the residual as their target,
   with these differences: the services a host runs for its own type stay
   untouched and count towards its load; the cap is always 3 (``MAX_SERVICES``),
   since a service with no runner of its own tier is the "we need coverage"
   case; there is no step 1 (a host takes only gaps, never redundancy). So:

   - *make room*: while a residual service is still uncovered after hosting,
     a host able to run it that holds a *surplus* copy of its own type (a
     service more nodes run than its target: two GPU boxes that each started
     llm-inference before they saw each other) drops that copy, and the
     hosting runs again (``_free_surplus``). A copy beyond the target is
     redundancy; an uncovered document-processing is a gap. Found across
     hosts: without it, a pool whose CPU node died kept two llm-inference
     copies and no document-processing, for good;
   - GPU services first: hosting takes no GPU service's place (only a surplus
     copy, above), and a hosted
     service is the first thing a host drops when its GPU row grows (in
     step 2, "the node with the fewest services" counts hosted ones, so
     a GPU gap goes where it displaces the fewest);
   - a hosted service stays where it runs while the CPU nodes leave it
     uncovered (sticky), and is released once a CPU node runs it (the
     services layer stops it only after the CPU node's copy is healthy);
   - two GPU boxes alone cover all three CPU services (2 + 1 GPU services,
     3 free slots), one box alone covers one of them.

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
returns exactly the current services (step 1 finds no fresh node and steps 2
and 3 find nothing to do: the state is the same one at which they stopped).

Let W(V) be the weighted deficit of a view (``weighted_deficit()``: each unit
of deficit of s weighs P + 1 − priority(s), P the catalog's largest
priority), counted on the services the nodes run at that moment, hosted
copies included. From a settled view, after one event (one fresh node joins,
or one node becomes dead or leaves), with W' the weighted deficit right after
the event and W'' that of the new allocation:

- every existing node keeps every service it ran, except a service it drops
  in a *switch*, hands over or gives up in a *yield*, and a hosted service
  it releases (to a CPU node, or to make room for its own GPU services);
- the number of (node, service) pairs that change on existing nodes (services
  started plus services stopped, the newcomer not counted) is at most
  3·(W' − W''), not counting hosted services a host releases to a joining
  CPU node or to make room for its own type's services (GPU first, whatever
  it costs the CPU tier):
  steps a–d change at most 1, 2, 3 and 2 pairs and each lowers W by at
  least one, and step 1 only touches the newcomer. (Without yields and
  hosts, as before, the plain deficit D already bounds it: 3·(D' − D'').)
- a newcomer starts at most 3 services (at most 1 of its own type in
  specialize mode);
- when no node restricts ``can_run`` (every node able to run every service
  of its type) and, as in this catalog, only critical services have a
  target above 1:

  - a join changes no existing node at all: before the join no node of the
    type had room for a gap and no service was over-covered, the newcomer
    takes gaps before it adds any redundancy, and a join can only lower the
    cap (multitask → specialize);
  - a failure only stops surplus copies (a *switch*) and copies that make
    way for a more critical service nobody runs (a *yield*), and only starts
    gaps on the survivors or services another survivor gave up in a yield:
    a hand-over would need a receiver with room that already runs the gap,
    i.e. a gap with a target above 1, which is critical and so has the third
    slot that makes the hand-over unnecessary.

Complexity: one sort of the nodes by rank, then O(|W| · |S_T|) per step and
at most Σ w·target steps per type (and once more for the hosts): 10,000
nodes take well under a second.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from allocator.catalog import CATALOG, FALLBACK_HOSTS, ServiceSpec, ordered
from allocator.view import NodeView, normalize, rank_key

MAX_SERVICES = 3
"""No node holds more than this many services (seed 000 §2: "at most 3")."""

NO_ORPHANS = frozenset({"storage"})
"""Types whose dead members' services take no third slot. Storage services keep their data:
a survivor's extra copy would start empty, and a partition's minority (which sees the majority
dead) would take copies it must not serve; replicas and fencing (``allocator.replicas``) cover
their failures instead."""


def allocation_input(view: Iterable[NodeView]) -> tuple[tuple[object, ...], ...]:
    """The part of ``view`` that ``allocate`` reads (ids, types, services, status, capabilities).

    Two views with equal inputs get equal allocations; the load fields, which change with every
    heartbeat, are not in it. For callers that cache a result of ``allocate`` between view changes.
    """
    return tuple((n.node_id, n.worker_type, n.services, n.status, n.can_run) for n in normalize(view))


def allocate(view: Iterable[NodeView], catalog: Sequence[ServiceSpec] = CATALOG) -> dict[str, tuple[str, ...]]:
    """Map every alive or suspect node to the services it should run, in catalog order.

    Dead and left nodes are absent from the result; an alive node that can run
    nothing maps to ``()``. Never raises on a well-typed view.
    """
    members = normalize(view)
    specs = ordered(catalog)
    alive = [n for n in members if n.is_alive]
    rows: dict[str, tuple[str, ...]] = {n.node_id: () for n in alive}
    for worker_type in sorted({s.requires for s in specs}):
        type_specs = [s for s in specs if s.requires == worker_type]
        nodes = sorted((n for n in alive if n.worker_type == worker_type), key=lambda n: rank_key(n.node_id))
        if nodes:
            guests = {s.name for s in specs if worker_type in FALLBACK_HOSTS.get(s.requires, ())}
            hosted = [
                len(guests.intersection(n.services).intersection(n.can_run)) if guests and n.can_run else 0
                for n in nodes
            ]
            # Orphans: what dead members of this type ran (whether or not a survivor runs it
            # too: a function of the dead rows only, so that a settled view stays settled).
            orphans = frozenset(
                s for n in members if n.status == "dead" and n.worker_type == worker_type for s in n.services
            ) if worker_type not in NO_ORPHANS else frozenset()
            rows.update(_TypeAllocation(nodes, type_specs, hosted=hosted, orphans=orphans).run())
    for guest_type in sorted({s.requires for s in specs} & set(FALLBACK_HOSTS)):
        _host(guest_type, alive, specs, rows)
    return rows


def _host(guest_type: str, alive: list[NodeView], specs: list[ServiceSpec], rows: dict[str, tuple[str, ...]]) -> None:
    """Step 3: hosts of another type take the services of ``guest_type`` its own nodes leave uncovered."""
    own = [n for n in alive if n.worker_type == guest_type]
    residual = []
    for spec in (s for s in specs if s.requires == guest_type):
        missing = spec.target - sum(1 for n in own if spec.name in rows[n.node_id])
        if missing > 0:
            residual.append(dataclasses.replace(spec, target=missing))
    wanted = {s.name for s in residual}
    hosts = sorted(
        (
            n
            for n in alive
            if n.worker_type in FALLBACK_HOSTS[guest_type] and n.can_run is not None and wanted & set(n.can_run)
        ),
        key=lambda n: rank_key(n.node_id),
    )
    if not hosts:
        return
    order = {s.name: i for i, s in enumerate(specs)}
    # Each pass that frees room drops one surplus copy, of which there are at most 3 per host.
    for _ in range(MAX_SERVICES * len(hosts) + 1):
        base = [len(rows[n.node_id]) for n in hosts]
        hosted = _TypeAllocation(hosts, residual, base=base, hosting=True).run()
        uncovered = [s for s in residual if sum(1 for n in hosts if s.name in hosted[n.node_id]) < s.target]
        if not uncovered or not _free_surplus(uncovered, hosts, alive, specs, rows):
            break
    for n in hosts:
        rows[n.node_id] = tuple(sorted(rows[n.node_id] + hosted[n.node_id], key=order.__getitem__))


def _free_surplus(
    uncovered: list[ServiceSpec], hosts: list[NodeView], alive: list[NodeView], specs: list[ServiceSpec],
    rows: dict[str, tuple[str, ...]],
) -> bool:
    """Step 3's *make room*: a host able to run an uncovered guest drops a surplus copy of its own type.

    A surplus copy is one of a service that more nodes run than its target
    (two GPU boxes that each started llm-inference while they did not yet see
    each other keep both copies: sticky). Such a copy adds redundancy only,
    and an uncovered document-processing is worth more than a second
    llm-inference: the copy to drop is of the largest surplus, then the least
    critical, the latest in the catalog, on the host of best rank. True when
    a copy was dropped (the caller then hosts again); the host keeps the same
    count, so this is a switch across tiers and obeys the same bounds.
    """
    spec_of = {s.name: s for s in specs}
    count: dict[str, int] = {}
    for n in alive:
        for name in rows[n.node_id]:
            count[name] = count.get(name, 0) + 1
    wanted = {s.name for s in uncovered}
    best: tuple[int, int, int, int, str] | None = None
    for rank, n in enumerate(hosts):
        if not wanted & set(n.can_run or ()):
            continue
        for name in rows[n.node_id]:
            spec = spec_of.get(name)
            if spec is None or spec.requires != n.worker_type:
                continue
            surplus = count[name] - spec.target
            if surplus > 0:
                key = (-surplus, -spec.priority, -spec.order, rank, name)
                if best is None or key < best:
                    best = key
    if best is None:
        return False
    node = hosts[best[3]].node_id
    rows[node] = tuple(x for x in rows[node] if x != best[4])
    return True


def deficit(view: Iterable[NodeView], catalog: Sequence[ServiceSpec] = CATALOG) -> int:
    """Total deficit of the services the alive nodes run *now*.

    Sum over runnable services s of max(0, target(s) − c(s)), where c(s)
    counts the alive nodes able to run s that list it in ``services``: nodes
    of s's type able to run it, and hosts (``FALLBACK_HOSTS``) whose
    ``can_run`` names it. s is runnable when at least one such node exists.
    """
    return sum(_deficits(view, catalog).values())


def weighted_deficit(view: Iterable[NodeView], catalog: Sequence[ServiceSpec] = CATALOG) -> int:
    """The deficit with each unit of s weighted ``P + 1 − priority(s)`` (P: the catalog's largest priority).

    The quantity the stickiness bound is stated in: every step of the
    allocation lowers it by at least one, a priority *yield* included (it
    trades a unit of a more critical service for one of a less critical one).
    """
    specs = ordered(catalog)
    top = max((s.priority for s in specs), default=0)
    weight = {s.name: top + 1 - s.priority for s in specs}
    return sum(weight[name] * d for name, d in _deficits(view, specs).items())


def _deficits(view: Iterable[NodeView], catalog: Sequence[ServiceSpec]) -> dict[str, int]:
    members = [n for n in normalize(view) if n.is_alive]
    out: dict[str, int] = {}
    for spec in ordered(catalog):
        hosts = FALLBACK_HOSTS.get(spec.requires, ())
        able = [
            n
            for n in members
            if (n.worker_type == spec.requires and n.able_to_run(spec.name))
            or (n.worker_type in hosts and n.can_run is not None and spec.name in n.can_run)
        ]
        if able:
            runners = sum(1 for n in able if spec.name in n.services)
            out[spec.name] = max(0, spec.target - runners)
    return out


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

    With ``hosting`` the nodes are hosts of another type (step 3): ``base[i]``
    counts the services node i already runs for its own type, which this
    allocation never touches but which take room; the cap is always
    ``MAX_SERVICES``; and there is no step 1, since a host takes only gaps.

    Without it, ``hosted[i]`` counts what node i runs now as a host for
    another type: never held against a cap here, but part of "the node with
    the fewest services", so that a gap goes where it displaces the fewest
    hosted services.
    """

    __slots__ = (
        "nodes",
        "specs",
        "target",
        "priority",
        "weight",
        "critical",
        "orphan",
        "eligible",
        "base",
        "hosted",
        "hosting",
        "held",
        "cover",
        "runnable",
        "specialize",
    )

    def __init__(
        self,
        nodes: list[NodeView],
        specs: list[ServiceSpec],
        base: Sequence[int] | None = None,
        hosting: bool = False,
        hosted: Sequence[int] | None = None,
        orphans: frozenset[str] = frozenset(),
    ) -> None:
        self.nodes = nodes
        self.specs = specs
        self.hosting = hosting
        self.base = list(base) if base is not None else [0] * len(nodes)
        names = {s.name: j for j, s in enumerate(specs)}
        self.target = [s.target for s in specs]
        self.priority = [s.priority for s in specs]
        top = max(self.priority, default=0)
        self.weight = [top + 1 - p for p in self.priority]
        self.critical = [s.critical for s in specs]
        self.orphan = [s.name in orphans for s in specs]
        self.eligible: list[tuple[int, ...]] = [
            tuple(j for j, s in enumerate(specs) if n.able_to_run(s.name)) for n in nodes
        ]
        self.held: list[list[int]] = [
            self._kept(n, names, elig, MAX_SERVICES - b) for n, elig, b in zip(nodes, self.eligible, self.base)
        ]
        self.hosted = list(hosted) if hosted is not None else [0] * len(nodes)
        self.cover = [0] * len(specs)
        for row in self.held:
            for j in row:
                self.cover[j] += 1
        self.runnable = sorted({j for elig in self.eligible for j in elig})
        self.specialize = not hosting and slots_fillable(self.eligible, self.target, self.runnable)

    def run(self) -> dict[str, tuple[str, ...]]:
        if not self.hosting:
            self._place_fresh()
        # Each successful step lowers the weighted deficit sum(weight · deficit)
        # by at least one, so this loop runs at most that many + 1 times;
        # exhausting the bound is our bug.
        for _ in range(sum(w * t for w, t in zip(self.weight, self.target)) + 1):
            if not self._close_one_gap():
                break
        else:  # pragma: no cover
            raise AssertionError("gap closing did not terminate")
        return {
            n.node_id: tuple(self.specs[j].name for j in sorted(row)) for n, row in zip(self.nodes, self.held)
        }

    # -- helpers -------------------------------------------------------------

    def _kept(self, node: NodeView, names: dict[str, int], elig: tuple[int, ...], room: int) -> list[int]:
        allowed = set(elig)
        kept: list[int] = []
        for name in node.services:
            j = names.get(name)
            if j is not None and j in allowed and j not in kept:
                kept.append(j)
        if len(kept) > room:
            kept = sorted(kept, key=lambda j: (self.priority[j], j))[: max(0, room)]
        return kept

    def _load(self, i: int) -> int:
        return self.base[i] + len(self.held[i])

    def _deficit(self, j: int) -> int:
        return max(0, self.target[j] - self.cover[j])

    def _preference(self, j: int) -> tuple[int, int, int, int]:
        return (-self._deficit(j), self.cover[j], self.priority[j], j)

    def _cap(self, j: int) -> int:
        if self.hosting:
            return MAX_SERVICES
        if self.specialize:
            return 1
        return MAX_SERVICES if self.critical[j] or self.orphan[j] else 2

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
        if any(self._add(g) or self._switch(g) or self._hand_over(g) for g in gaps):
            return True
        # Only when no gap can be closed without uncovering something else does
        # a less critical service make way: the fewest moves for the same end.
        return any(self._yield(g) for g in gaps)

    def _add(self, g: int) -> bool:
        cap = self._cap(g)
        best: tuple[int, int] | None = None
        for i, row in enumerate(self.held):
            if self._load(i) < cap and g not in row and g in self.eligible[i]:
                key = (self._load(i) + self.hosted[i], i)
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
        return self._swap(best, g)

    def _swap(self, best: tuple[object, ...] | None, g: int) -> bool:
        """Node ``best[3]`` drops service ``best[4]`` and runs ``g``; False when nothing was chosen."""
        if best is None:
            return False
        i, x = best[3], best[4]
        self._drop(i, x)  # type: ignore[arg-type]
        self._gain(i, g)  # type: ignore[arg-type]
        return True

    def _hand_over(self, g: int) -> bool:
        cap = self._cap(g)
        # For each service x, the two best receivers (fewest services, then
        # rank) that could take x: two, so that one remains when the best
        # receiver is the giver itself.
        receivers: dict[int, list[tuple[int, int]]] = {}
        for m, row in enumerate(self.held):
            if self._load(m) >= cap:
                continue
            load = self._load(m) + self.hosted[m]
            for x in self.eligible[m]:
                if x in row:
                    continue
                top = receivers.setdefault(x, [])
                top.append((load, m))
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

    def _yield(self, g: int) -> bool:
        # Priority beats stickiness, but only for a service nobody runs: a
        # second copy of a critical service is not worth a sole copy of another.
        if self.cover[g] > 0:
            return False
        best: tuple[bool, int, int, int, int] | None = None
        for i, row in enumerate(self.held):
            if g not in self.eligible[i]:
                continue
            for x in row:
                if self.priority[x] > self.priority[g]:
                    # A copy whose loss leaves x still running goes first; then
                    # the least critical, the latest in the catalog, by rank.
                    key = (self.cover[x] == 1, -self.priority[x], -x, i, x)
                    if best is None or key < best:
                        best = key
        return self._swap(best, g)
