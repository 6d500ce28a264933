"""Warm standbys: the node a service would move to if its one runner died is the one that keeps it warm."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from allocator.actions import node_actions
from allocator.allocate import allocate
from allocator.standby import sole_runners, standby_for
from allocator.view import NodeView

TYPES = ("edge", "gpu", "cpu", "storage")


def settled(view: list[NodeView]) -> list[NodeView]:
    """Every node running exactly its row of the allocation, as a pool at rest does."""
    rows = allocate(view)
    return [replace(n, services=rows.get(n.node_id, ())) for n in view]


def test_the_survivor_that_would_take_the_services_keeps_them_warm() -> None:
    view = settled([NodeView("c1", "cpu"), NodeView("c2", "cpu")])
    runs = {n.node_id: set(n.services) for n in view}
    big = next(k for k, v in runs.items() if v == {"ner-extraction", "document-processing"})
    small = next(k for k, v in runs.items() if v == {"notes-coa"})
    # If `big` died, `small` would give up notes-coa for the two priority-2 services (priority beats stickiness).
    assert standby_for(small, view) == ("document-processing", "ner-extraction")
    assert standby_for(small, view, {"ner-extraction"}) == ("ner-extraction",)
    # And if `small` died, `big` would carry its notes-coa in a third slot (a dead member's service).
    assert standby_for(big, view) == ("notes-coa",)


def test_no_standby_for_a_service_with_two_runners_or_for_a_dead_node() -> None:
    view = [NodeView("c1", "cpu", ("ner-extraction",)), NodeView("c2", "cpu", ("ner-extraction",)), NodeView("c3", "cpu")]
    assert "ner-extraction" not in sole_runners(view)
    assert "ner-extraction" not in standby_for("c3", view)
    view = settled([NodeView("c1", "cpu"), NodeView("c2", "cpu")])
    for me in ("c1", "c2"):
        assert standby_for(me, [replace(n, status="dead") if n.node_id == me else n for n in view]) == ()


@pytest.mark.parametrize("seed", range(40))
def test_a_standby_is_exactly_where_the_daemon_moves_the_service_after_the_death(seed: int) -> None:
    """Against the daemon's own decision path (``node_actions``) on the view after the runner's death."""
    rng = random.Random(seed)
    view = settled([NodeView(f"n{i:02d}", rng.choice(TYPES)) for i in range(rng.randint(2, 12))])
    for service, runner in sole_runners(view).items():
        after = [replace(n, status="dead") if n.node_id == runner else n for n in view]
        takers = {
            n.node_id for n in view
            if n.node_id != runner and service in node_actions(n.node_id, after, n.services).start
        }  # fmt: skip
        keepers = {n.node_id for n in view if service in standby_for(n.node_id, view)}
        assert keepers == takers, (seed, service, runner)
