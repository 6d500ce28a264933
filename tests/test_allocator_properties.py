"""Property tests of allocate(), gaps() and elect() over random views (hypothesis).

The rule and the stickiness bound tested here are stated in the docstring of
allocator/allocate.py; the leadership rules in allocator/leaders.py.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from allocator import (
    CATALOG,
    MAX_SERVICES,
    WORKER_TYPES,
    NodeView,
    allocate,
    deficit,
    elect,
    gaps,
    mode,
    normalize,
    services_doc,
)
from allocator.allocate import NO_ORPHANS, slots_fillable, weighted_deficit
from allocator.catalog import FALLBACK_HOSTS

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAMES = [s.name for s in CATALOG]
SPEC = {s.name: s for s in CATALOG}
OF_TYPE = {t: [s.name for s in CATALOG if s.requires == t] for t in WORKER_TYPES}
# The services a node of each type may host for another type (FALLBACK_HOSTS: GPU nodes, CPU services).
GUESTS = {t: [s for g, hosts in FALLBACK_HOSTS.items() if t in hosts for s in OF_TYPE[g]] for t in WORKER_TYPES}

node_ids = st.text(alphabet="abcdefgh0123456789-", min_size=1, max_size=6)


@st.composite
def nodes(
    draw: st.DrawFn, node_id: str, restricted: bool = True, status: str | None = None, types: Sequence[str] = WORKER_TYPES
) -> NodeView:
    worker_type = draw(st.sampled_from(types))
    # Mostly services of the node's own type; sometimes foreign or unknown ones,
    # which allocate() must ignore.
    services = draw(st.lists(st.sampled_from(OF_TYPE[worker_type]), max_size=4))
    if draw(st.integers(0, 9)) == 0:
        services += draw(st.lists(st.sampled_from([*NAMES, "bogus", ""]), max_size=2))
    can_run = None
    if restricted and draw(st.booleans()):
        can_run = tuple(draw(st.lists(st.sampled_from(OF_TYPE[worker_type]), max_size=5, unique=True)))
        if GUESTS[worker_type] and draw(st.booleans()):
            # A host that advertises some services of another type, and may run some now.
            guests = draw(st.lists(st.sampled_from(GUESTS[worker_type]), min_size=1, unique=True))
            can_run += tuple(guests)
            services += draw(st.lists(st.sampled_from(GUESTS[worker_type]), max_size=2))
    if status is None:
        status = draw(st.sampled_from(["alive", "alive", "alive", "suspect", "dead", "left"]))
    return NodeView(
        node_id=node_id,
        worker_type=worker_type,
        services=tuple(services),
        status=status,
        can_run=can_run,
        incarnation=draw(st.integers(0, 5)),
    )


@st.composite
def views(draw: st.DrawFn, max_size: int = 14, restricted: bool = True, types: Sequence[str] = WORKER_TYPES) -> list[NodeView]:
    ids = draw(st.lists(node_ids, max_size=max_size, unique=True))
    return [draw(nodes(i, restricted=restricted, types=types)) for i in ids]


# Pools of GPU and CPU nodes only, where hosting (GPU nodes running CPU services) is common.
HOSTING = ("gpu", "cpu")
mixed_views = st.one_of(views(), views(types=HOSTING))


def settle(view: Sequence[NodeView]) -> list[NodeView]:
    """The view once every alive node runs exactly its row of allocate()."""
    rows = allocate(view)
    return [dataclasses.replace(n, services=rows[n.node_id]) if n.node_id in rows else n for n in view]


def eligible(node: NodeView) -> list[str]:
    """The services of the node's own type it is able to run."""
    return [s for s in OF_TYPE.get(node.worker_type, []) if node.can_run is None or s in node.can_run]


def hostable(node: NodeView) -> list[str]:
    """The services of another type the node may host: only those its explicit can_run names."""
    return [s for s in GUESTS.get(node.worker_type, []) if node.can_run is not None and s in node.can_run]


def own(node: NodeView, row: Sequence[str]) -> set[str]:
    return set(row) & set(OF_TYPE[node.worker_type])


def kept(node: NodeView) -> set[str]:
    return set(node.services) & set(eligible(node))


def type_state(view: Sequence[NodeView], worker_type: str) -> tuple[list[NodeView], bool]:
    """The alive nodes of a type, and whether it specializes.

    Checked here by Hall's condition, by brute force over every set of
    services (the allocator uses augmenting paths): one service per node can
    fill every slot iff each set of runnable services is runnable by at least
    the sum of their targets of nodes.
    """
    alive = [n for n in normalize(view) if n.is_alive and n.worker_type == worker_type]
    runnable = sorted({s for n in alive for s in eligible(n)}, key=NAMES.index)
    if not runnable:
        return alive, False
    for r in range(1, len(runnable) + 1):
        for subset in itertools.combinations(runnable, r):
            able = sum(1 for n in alive if set(eligible(n)) & set(subset))
            if able < sum(SPEC[s].target for s in subset):
                return alive, False
    return alive, True


def cap(specialize: bool, service: str) -> int:
    if specialize:
        return 1
    return 3 if SPEC[service].priority == 1 else 2


def changes(before: dict[str, Sequence[str]], after: dict[str, Sequence[str]], ids: set[str]) -> int:
    return sum(len(set(before[i]) ^ set(after[i])) for i in ids)


# -- order independence --------------------------------------------------------


@SETTINGS
@given(view=views(), data=st.data())
def test_permutation_invariance(view: list[NodeView], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(view))
    assert allocate(shuffled) == allocate(view)
    assert gaps(shuffled) == gaps(view)
    assert services_doc(shuffled) == services_doc(view)
    assert elect(shuffled) == elect(view)


@SETTINGS
@given(view=views(), data=st.data())
def test_duplicate_entries_collapse_the_same_way_in_any_order(view: list[NodeView], data: st.DataObject) -> None:
    assume(view)
    # A second, newer snapshot of some member (higher incarnation wins).
    victim = data.draw(st.sampled_from(view))
    newer = dataclasses.replace(victim, incarnation=victim.incarnation + 1, status="dead")
    doubled = data.draw(st.permutations([*view, newer]))
    replaced = [newer if n.node_id == victim.node_id else n for n in view]
    assert allocate(doubled) == allocate(replaced)
    assert elect(doubled) == elect(replaced)


# -- shape of the result and the per-node rule -----------------------------------


@SETTINGS
@given(view=mixed_views)
def test_rows_are_eligible_ordered_and_bounded(view: list[NodeView]) -> None:
    rows = allocate(view)
    alive = {n.node_id: n for n in normalize(view) if n.is_alive}
    assert set(rows) == set(alive)
    for node_id, row in rows.items():
        node = alive[node_id]
        assert set(row) <= set(eligible(node)) | set(hostable(node))
        assert list(row) == sorted(set(row), key=NAMES.index)  # catalog order, no repeats
        assert len(row) <= MAX_SERVICES
        if eligible(node):
            assert row, "a node able to run something is never left idle"


@SETTINGS
@given(view=mixed_views)
def test_count_rule(view: list[NodeView]) -> None:
    """A node exceeds max(what it kept, base) only through a critical gap in its third slot, or when it
    holds an orphan (a service a dead member of its type ran)."""
    rows = allocate(view)
    orphans = {(n.worker_type, s) for n in view if n.status == "dead" and n.worker_type not in NO_ORPHANS for s in n.services}
    for worker_type in WORKER_TYPES:
        alive, specialize = type_state(view, worker_type)
        base = 1 if specialize else 2
        for node in alive:
            row = own(node, rows[node.node_id])
            before = kept(node)
            if specialize and not before and eligible(node):
                # ...unless its one copy was surplus and made room for guests nobody else runs.
                made_room = not row and len(set(rows[node.node_id]) & set(GUESTS[worker_type])) == MAX_SERVICES
                assert len(row) == 1 or made_room, "a fresh node specializes"
            if len(row) > max(len(before), base):
                assert not specialize
                assert len(row) == MAX_SERVICES
                assert any(SPEC[s].priority == 1 for s in row - before) or any((worker_type, s) in orphans for s in row)
            if specialize:
                # In specialize mode a node never grows: it keeps, switches or takes one.
                assert len(row) <= max(1, min(len(before), MAX_SERVICES))


@SETTINGS
@given(view=views(max_size=20))
def test_specialization_when_workers_reach_slots(view: list[NodeView]) -> None:
    rows = allocate(view)
    for worker_type in WORKER_TYPES:
        alive, specialize = type_state(view, worker_type)
        assert (mode(view, worker_type) == "specialize") == specialize
        if all(n.can_run is None for n in alive):
            assert specialize == (len(alive) >= sum(SPEC[s].target for s in OF_TYPE[worker_type]) > 0)
        if specialize:
            for node in alive:
                if not kept(node) and eligible(node):
                    assert len(own(node, rows[node.node_id])) == 1


@pytest.mark.parametrize(
    ("eligible_sets", "targets", "expected"),
    [
        ([(0, 1, 2)] * 3, [1, 1, 1], True),  # scenario 3: three GPU nodes, three slots
        ([(0, 1, 2)] * 2, [1, 1, 1], False),
        ([(0, 1, 2)] * 3, [2, 1, 1], False),  # edge: the coordinator counts twice
        ([(0, 1, 2)] * 4, [2, 1, 1], True),
        ([(), (), (), (0, 1, 2)], [2, 1, 1], False),  # heads that can run nothing do not count
        ([(0,), (0,), (0,), (1,)], [1, 1, 1], True),  # nobody can run service 2: not a slot
        ([(0,), (0,), (0,), (1,)], [1, 2], False),  # service 1 wants two nodes, one can run it
        ([(0, 1), (0, 2), (2,)], [1, 1, 1], True),  # needs an augmenting path: 0 first takes the node 1 needs
        ([(0, 1), (0, 2)], [1, 1, 1], False),
        ([(0,), (0,)], [2], True),
        ([], [1], False),
    ],
)
def test_slots_fillable(eligible_sets: list[tuple[int, ...]], targets: list[int], expected: bool) -> None:
    runnable = sorted({j for e in eligible_sets for j in e})
    assert slots_fillable(eligible_sets, targets, runnable) is expected


@SETTINGS
@given(view=mixed_views)
def test_idempotent_on_a_settled_view(view: list[NodeView]) -> None:
    settled = settle(view)
    assert allocate(settled) == allocate(view)


# -- coverage --------------------------------------------------------------------


@SETTINGS
@given(view=mixed_views)
def test_every_remaining_gap_is_beyond_capacity(view: list[NodeView]) -> None:
    """No gap remains that one add, one switch of a surplus copy, one hand-over or one yield could close.

    Counted within each type, on the services of that type (what a node hosts
    for another type is checked in test_hosts_take_only_what_their_guests_leave).
    """
    rows = allocate(view)
    for worker_type in WORKER_TYPES:
        alive, specialize = type_state(view, worker_type)
        held = {n.node_id: own(n, rows[n.node_id]) for n in alive}
        able = {n.node_id: set(eligible(n)) for n in alive}
        runnable = set().union(*able.values()) if able else set()
        cover = {s: sum(s in h for h in held.values()) for s in OF_TYPE[worker_type]}
        for g in runnable:
            if cover[g] >= SPEC[g].target:
                continue
            for n in alive:
                i = n.node_id
                if g in held[i] or g not in able[i]:
                    continue
                assert len(held[i]) >= cap(specialize, g), f"{i} has room for gap {g}"
                assert all(cover[x] <= SPEC[x].target for x in held[i]), f"{i} could switch to {g}"
                for x in held[i]:
                    for m in alive:
                        j = m.node_id
                        if j != i and x in able[j] and x not in held[j]:
                            assert len(held[j]) >= cap(specialize, g), f"{i} could hand {x} to {j} for {g}"
                if cover[g] == 0:
                    less = [x for x in held[i] if SPEC[x].priority > SPEC[g].priority]
                    assert not less, f"{i} runs {less} while the more critical {g} runs nowhere"


@SETTINGS
@given(view=mixed_views)
def test_hosts_take_only_what_their_guests_leave(view: list[NodeView]) -> None:
    """Hosting changes no row of a host's own type, and fills only what the guest type leaves uncovered."""
    rows = allocate(view)
    # The same view with no hosting at all: every node's own-type row must be the same.
    bare = [
        dataclasses.replace(
            n,
            services=tuple(s for s in n.services if s not in GUESTS[n.worker_type]),
            can_run=None if n.can_run is None else tuple(s for s in n.can_run if s not in GUESTS[n.worker_type]),
        )
        for n in view
    ]
    bare_rows = allocate(bare)
    alive = [n for n in normalize(view) if n.is_alive]
    for t in WORKER_TYPES:
        # GPU services first: hosting takes no GPU service's place. (Which GPU node
        # runs what may differ: a gap goes to the node that hosts the least.) Only a
        # surplus copy, beyond the service's target, may make room for an uncovered guest.
        for s in OF_TYPE[t]:
            with_hosts = sum(s in rows[n.node_id] for n in alive if n.worker_type == t)
            without = sum(s in bare_rows[n.node_id] for n in alive if n.worker_type == t)
            assert with_hosts == without or SPEC[s].target <= with_hosts < without, (t, s, with_hosts, without)
    for guest, host_types in FALLBACK_HOSTS.items():
        guests = [n for n in alive if n.worker_type == guest]
        hosts = [n for n in alive if n.worker_type in host_types]
        own_cover = {s: sum(s in rows[n.node_id] for n in guests) for s in OF_TYPE[guest]}
        hosted = {n.node_id: set(rows[n.node_id]) & set(OF_TYPE[guest]) for n in hosts}
        cover = {s: own_cover[s] + sum(s in h for h in hosted.values()) for s in OF_TYPE[guest]}
        for n in hosts:
            for s in hosted[n.node_id]:
                assert own_cover[s] < SPEC[s].target, f"{n.node_id} hosts {s}, which its own type covers"
        for g in OF_TYPE[guest]:
            if cover[g] >= SPEC[g].target:
                continue
            for n in hosts:
                i = n.node_id
                if g not in hostable(n) or g in hosted[i]:
                    continue
                assert len(rows[i]) >= MAX_SERVICES, f"{i} has room to host {g}"
                surplus = [x for x in rows[i] if x in OF_TYPE[n.worker_type]
                           and sum(x in rows[m.node_id] for m in alive) > SPEC[x].target]
                assert not surplus, f"{i} keeps surplus copies of {surplus} while {g} is uncovered"
                if cover[g] == 0:
                    less = [x for x in hosted[i] if SPEC[x].priority > SPEC[g].priority]
                    assert not less, f"{i} hosts {less} while the more critical {g} runs nowhere"


def test_gpu_pool_alone_covers_the_cpu_services() -> None:
    # Two GPU boxes that advertise the CPU services too, and no CPU node (issue 12).
    caps = tuple(OF_TYPE["gpu"] + OF_TYPE["cpu"])
    rows = allocate([NodeView("box-1", "gpu", can_run=caps), NodeView("box-2", "gpu", can_run=caps)])
    for s in OF_TYPE["cpu"]:
        assert sum(s in row for row in rows.values()) == 1, s
    assert sorted(tuple(s for s in row if s in OF_TYPE["gpu"]) for row in rows.values()) == [
        ("llm-inference", "vision-ocr"),
        ("rag-embeddings",),
    ]


def test_surplus_gpu_copies_make_room_for_cpu_services_nobody_runs() -> None:
    # Found across hosts (tests/test_netns_ai_pool.py): both GPU boxes had started llm-inference and
    # vision-ocr before they saw each other and kept both copies (sticky); when the CPU node died,
    # document-processing and notes-coa stayed uncovered for good beside two redundant copies.
    caps = tuple(OF_TYPE["gpu"] + OF_TYPE["cpu"])
    view = [
        NodeView("box-1", "gpu", ("llm-inference", "vision-ocr", "ner-extraction"), can_run=caps),
        NodeView("box-2", "gpu", ("llm-inference", "vision-ocr", "rag-embeddings"), can_run=caps),
        NodeView("cpu-1", "cpu", ("ner-extraction", "document-processing"), status="dead"),
    ]
    rows = allocate(view)
    for s in OF_TYPE["gpu"] + OF_TYPE["cpu"]:
        assert sum(s in row for row in rows.values()) == 1, (s, rows)
    assert "ner-extraction" in rows["box-1"], "what a host already runs stays where it is"
    settled = [dataclasses.replace(n, services=rows.get(n.node_id, ())) for n in view]
    assert allocate(settled) == rows, "and the result is settled"


@SETTINGS
@given(view=views(max_size=20, restricted=False))
def test_unrestricted_pools_cover_everything_when_capacity_allows(view: list[NodeView]) -> None:
    """With no can_run limits, a type has no gap once 2·|W| ≥ slots (or it specializes)."""
    rows = allocate(view)
    for worker_type in WORKER_TYPES:
        alive, specialize = type_state(view, worker_type)
        if not alive:
            continue
        slots = sum(SPEC[s].target for s in OF_TYPE[worker_type])
        if specialize or 2 * len(alive) >= slots:
            for s in OF_TYPE[worker_type]:
                runners = sum(s in rows[n.node_id] for n in alive)
                assert runners >= min(SPEC[s].target, len(alive)), (worker_type, s)


def test_coverage_bound_is_tight_for_a_lone_storage_node() -> None:
    # 1 storage node, 5 services, multitask: chromadb and redis, nothing more.
    assert allocate([NodeView("s", "storage")]) == {"s": ("chromadb", "redis")}
    assert deficit([NodeView("s", "storage", services=("chromadb", "redis"))]) == 3


# -- stickiness -------------------------------------------------------------------


@SETTINGS
@given(view=mixed_views, newcomer=st.data())
def test_join_moves_only_what_it_must(view: list[NodeView], newcomer: st.DataObject) -> None:
    settled = settle(view)
    before = allocate(settled)
    new_id = newcomer.draw(node_ids.filter(lambda i: i not in {n.node_id for n in view}))
    fresh = dataclasses.replace(newcomer.draw(nodes(new_id, status="alive")), services=())
    after_view = [*settled, fresh]
    after = allocate(after_view)
    existing = set(before)
    w_event = weighted_deficit(after_view)
    w_after = weighted_deficit(settle(after_view))
    # A newcomer of a guest type lets its type take back what hosts ran for want of
    # it: the hosts' releases are the point of the join, not churn. The newcomer may
    # take a service back itself, or take a copy an existing node of its type held,
    # which then switches to the service the host releases (a newcomer able to run
    # only ner-extraction: the old CPU node hands it ner and takes notes-coa back).
    types = {n.node_id: n.worker_type for n in settled}
    types[new_id] = fresh.worker_type
    started = {k: set(after[k]) - set(before.get(k, ())) for k in [*existing, new_id]}
    released = {
        i: {s for s in set(before[i]) - set(after[i])
            if s in GUESTS[types[i]] and any(s in started[k] and types[k] != types[i] for k in started)}
        for i in existing
    }
    taken_back = set().union(*released.values())
    excused = {i: len(released[i]) for i in existing}
    for k in existing:
        took = started[k] & taken_back
        if took and types[k] == fresh.worker_type:
            handed = (set(before[k]) - set(after[k])) & set(after[new_id])
            excused[k] += len(took) + min(len(handed), len(took))
    moved = sum(len(set(before[i]) ^ set(after[i])) - excused[i] for i in existing)
    assert moved <= 3 * (w_event - w_after)
    _, specialize = type_state(after_view, fresh.worker_type)
    assert len(own(fresh, after[new_id])) <= (1 if specialize else MAX_SERVICES)
    assert len(after[new_id]) <= MAX_SERVICES


@SETTINGS
@given(view=views(restricted=False), newcomer=st.data())
def test_unrestricted_join_changes_no_existing_row(view: list[NodeView], newcomer: st.DataObject) -> None:
    settled = settle(view)
    before = allocate(settled)
    new_id = newcomer.draw(node_ids.filter(lambda i: i not in {n.node_id for n in view}))
    fresh = dataclasses.replace(newcomer.draw(nodes(new_id, restricted=False, status="alive")), services=())
    after = allocate([*settled, fresh])
    assert {i: after[i] for i in before} == before


@SETTINGS
@given(view=mixed_views, data=st.data())
def test_failure_moves_only_what_it_must(view: list[NodeView], data: st.DataObject) -> None:
    settled = settle(view)
    before = allocate(settled)
    assume(before)
    victim = data.draw(st.sampled_from(sorted(before)))
    how = data.draw(st.sampled_from(["dead", "left"]))
    after_view = [dataclasses.replace(n, status=how) if n.node_id == victim else n for n in settled]
    after = allocate(after_view)
    survivors = set(before) - {victim}
    assert set(after) == survivors
    w_event = weighted_deficit(after_view)
    w_after = weighted_deficit(settle(after_view))
    # GPU services first: a host whose own row grows gives up hosted services to
    # make room, whatever that costs the guest type. Those releases are not churn.
    nodes_by_id = {n.node_id: n for n in settled}
    released = 0
    for i in survivors:
        n = nodes_by_id[i]
        if len(own(n, after[i])) > len(own(n, before[i])):
            released += len((set(before[i]) - set(after[i])) & set(GUESTS[n.worker_type]))
    assert changes(before, after, survivors) - released <= 3 * (w_event - w_after)
    # Nothing is stopped on a survivor unless something was started to close a gap.
    for i in survivors:
        if set(before[i]) - set(after[i]):
            assert w_event > w_after


@SETTINGS
@given(view=views(restricted=False), data=st.data())
def test_unrestricted_failure_only_adds_gaps_and_sheds_surplus(view: list[NodeView], data: st.DataObject) -> None:
    """A survivor stops a copy only when it is surplus or makes way for a more critical service it starts."""
    settled = settle(view)
    before = allocate(settled)
    assume(before)
    victim = data.draw(st.sampled_from(sorted(before)))
    after_view = [dataclasses.replace(n, status="dead") if n.node_id == victim else n for n in settled]
    after = allocate(after_view)
    alive = [n for n in after_view if n.is_alive]
    cover = {s: sum(s in n.services for n in alive if n.worker_type == SPEC[s].requires) for s in NAMES}
    stopped = {s for i in after for s in set(before[i]) - set(after[i])}
    for i in after:
        started = set(after[i]) - set(before[i])
        for s in started:
            # A gap on the survivors, or a service some other survivor gave up to a more critical one.
            assert cover[s] < SPEC[s].target or s in stopped, f"{i} started {s}, which was not a gap"
        for s in set(before[i]) - set(after[i]):
            yielded = any(SPEC[g].priority < SPEC[s].priority and cover[g] == 0 for g in started)
            assert cover[s] > SPEC[s].target or yielded, f"{i} stopped {s}, which had no surplus"


# -- leaders ------------------------------------------------------------------------


@SETTINGS
@given(view=views())
def test_one_primary_with_quorum(view: list[NodeView]) -> None:
    lead = elect(view)
    members = normalize(view)
    edge = [n for n in members if n.worker_type == "edge"]
    known = [n for n in edge if n.status != "left"]
    alive = [n for n in edge if n.is_alive]
    rows = allocate(view)
    assert lead.quorum == (2 * len(alive) > len(known) > 0)
    assert set(lead.coordinators) == {n.node_id for n in alive if "coordinator" in rows[n.node_id]}
    if lead.quorum and lead.coordinators:
        assert lead.primary == lead.coordinators[0]
    else:
        assert lead.primary is None
    if lead.quorum and all(n.can_run is None for n in alive):
        # Without can_run limits a coordinator is always placed, so quorum means a primary.
        assert lead.primary is not None
    assert lead.to_json()["coordinators"] == list(lead.coordinators)


@SETTINGS
@given(view=views(max_size=10, restricted=False), data=st.data())
def test_partition_never_gives_two_primaries(view: list[NodeView], data: st.DataObject) -> None:
    settled = [n for n in settle(view) if n.status != "left"]
    edge_ids = sorted(n.node_id for n in settled if n.worker_type == "edge" and n.is_alive)
    side = set(data.draw(st.lists(st.sampled_from(edge_ids), unique=True))) if edge_ids else set()
    # Each side sees the other's edge nodes dead once suspicion has timed out.
    left_view = [dataclasses.replace(n, status="dead") if n.node_id in edge_ids and n.node_id not in side else n for n in settled]
    right_view = [dataclasses.replace(n, status="dead") if n.node_id in side else n for n in settled]
    primaries = [p for p in (elect(left_view).primary, elect(right_view).primary) if p is not None]
    assert len(primaries) <= 1


@SETTINGS
@given(view=views(restricted=False))
def test_primary_failover(view: list[NodeView]) -> None:
    settled = settle(view)
    lead = elect(settled)
    assume(lead.primary is not None)
    after_view = [dataclasses.replace(n, status="dead") if n.node_id == lead.primary else n for n in settled]
    after = elect(after_view)
    assert after.primary != lead.primary
    assert after.term > lead.term
    if after.quorum and any(n.worker_type == "edge" and n.is_alive for n in after_view):
        assert after.primary is not None


_NEXT = {  # legal SWIM steps: (status, incarnation delta)
    "alive": [("suspect", 0), ("dead", 0), ("left", 0), ("alive", 1)],
    "suspect": [("dead", 0), ("alive", 1), ("left", 0)],
    "dead": [("alive", 1), ("left", 0)],
    "left": [("alive", 1)],
}


@SETTINGS
@given(view=views(), data=st.data())
def test_term_grows_with_every_swim_step(view: list[NodeView], data: st.DataObject) -> None:
    members = normalize(view)
    edge = [n for n in members if n.worker_type == "edge"]
    assume(edge)
    node = data.draw(st.sampled_from(edge))
    status, bump = data.draw(st.sampled_from(_NEXT[node.status]))
    stepped = dataclasses.replace(node, status=status, incarnation=node.incarnation + bump)
    after_view = [stepped if n.node_id == node.node_id else n for n in members]
    before, after = elect(members), elect(after_view)
    assert after.term > before.term
    # A join of a new edge member raises it too.
    joined = elect([*members, NodeView("zz-new-edge", "edge")])
    assert joined.term > before.term


def test_scenario_leaders() -> None:
    view = [
        NodeView("edge-1", "edge", services=("coordinator", "edge-proxy")),
        NodeView("edge-2", "edge", services=("coordinator", "load-balancer")),
        NodeView("edge-3", "edge", services=("edge-proxy",)),
    ]
    lead = elect(view)
    assert lead.quorum and set(lead.coordinators) == {"edge-1", "edge-2"}
    assert lead.primary in {"edge-1", "edge-2"}
    assert lead.term == 3
    # Two of three edge nodes dead: the survivor has no quorum and no primary.
    lone = [dataclasses.replace(n, status="dead") if n.node_id != "edge-3" else n for n in view]
    assert elect(lone).primary is None and not elect(lone).quorum
    # No edge node at all: nobody leads.
    assert elect([NodeView("g", "gpu")]) == elect([]).__class__(None, (), 0, False)
