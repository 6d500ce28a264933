"""The join loop's policy (whom to contact, how long to wait) and the known-edges file."""

from __future__ import annotations

from pathlib import Path

import pytest

from rmap2p.join import (
    EDGES_FILE,
    MAX_KNOWN_EDGES,
    KnownEdges,
    alone_wait,
    join_targets,
    next_backoff,
)

A, B, C, D, E = ((f"10.0.0.{i}", 7946) for i in range(1, 6))


@pytest.mark.parametrize(
    ("alone", "seeds", "live", "targets"),
    [
        (True, [A, B, C, D, E], set(), [A, B, C, D, E]),  # alone: everyone at once
        (True, [A, B], {A}, [A, B]),  # alone: even a seed we once saw
        (False, [A, B, C], {A, B, C}, []),  # in a pool that holds every seed: nobody
        (False, [A, B, C, D, E], {A}, [B, C, D]),  # a few absent ones per round
        (False, [], {A}, []),
    ],
)
def test_join_targets(alone: bool, seeds: list, live: set, targets: list) -> None:
    assert join_targets(alone, seeds, live) == targets


@pytest.mark.parametrize(
    ("delay", "interval", "after"),
    [(5.0, 5.0, 10.0), (10.0, 5.0, 20.0), (20.0, 5.0, 40.0), (40.0, 5.0, 40.0), (0.5, 0.5, 1.0)],
)
def test_backoff_doubles_up_to_eight_times(delay: float, interval: float, after: float) -> None:
    assert next_backoff(delay, interval) == after


def test_alone_wait_is_short_while_mdns_may_find_someone() -> None:
    assert alone_wait(40.0, mdns=True) == 2.0
    assert alone_wait(40.0, mdns=False) == 40.0
    assert alone_wait(1.0, mdns=True) == 1.0


def test_known_edges_newest_first_bounded_and_persisted(tmp_path: Path) -> None:
    edges = KnownEdges.load(tmp_path)
    assert edges.addrs == []
    assert edges.remember([A, B])
    assert not edges.remember([A])  # nothing new: nothing written
    assert edges.addrs == [B, A]
    again = KnownEdges.load(tmp_path)
    assert again.addrs == [B, A]
    assert again.remember([(f"10.1.0.{i}", 7946) for i in range(MAX_KNOWN_EDGES)])
    assert len(again.addrs) == MAX_KNOWN_EDGES and A not in again.addrs


def test_known_edges_file_with_bad_lines_keeps_the_good_ones(tmp_path: Path) -> None:
    (tmp_path / EDGES_FILE).write_text("# edges\n10.0.0.1:7946\nnot an address:x\n[fd00::1]:7946\n")
    assert KnownEdges.load(tmp_path).addrs == [A, ("fd00::1", 7946)]
