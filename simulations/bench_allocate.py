"""Benchmark of allocator.allocate(): wall time at scale, and services moved under churn.

    python -m simulations.bench_allocate [--sizes 20 1000 10000] [--events 200] [--seed 1]

For each pool size N it prints:

- the wall time of ``allocate`` on N fresh nodes (nobody runs anything yet:
  the most work, every node placed in step 1), and on the settled view
  (every node already runs its row: the common case on a live pool, where
  each view change triggers a recomputation);
- a churn run of ``--events`` single events on a settled view, each a join
  of a fresh node or a failure of a random alive node (even odds, one seed):
  after each event the allocation is recomputed and applied, and the number
  of (node, service) pairs that changed is recorded — on the nodes that
  existed before the event, and the newcomer's own starts separately. Dead
  nodes are dropped from the view once the survivors have been reallocated.

Times are wall-clock on this machine and vary; nothing here asserts on them.
Worker types are drawn 20 % GPU, 40 % CPU, 20 % storage, 20 % edge, and one
node in ten has a ``can_run`` limit (it cannot run one random service of its
type), so the hand-over paths of the allocator get exercised too.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import time
from collections.abc import Sequence

from allocator import CATALOG, NodeView, allocate, deficit

TYPE_WEIGHTS = (("gpu", 2), ("cpu", 4), ("storage", 2), ("edge", 2))
OF_TYPE = {t: [s.name for s in CATALOG if s.requires == t] for t, _ in TYPE_WEIGHTS}


def make_node(rng: random.Random, node_id: str) -> NodeView:
    types = [t for t, w in TYPE_WEIGHTS for _ in range(w)]
    worker_type = rng.choice(types)
    can_run = None
    if rng.random() < 0.1:
        names = OF_TYPE[worker_type]
        banned = rng.choice(names)
        can_run = tuple(n for n in names if n != banned)
    return NodeView(node_id=node_id, worker_type=worker_type, can_run=can_run)


def settle(view: dict[str, NodeView], rows: dict[str, tuple[str, ...]]) -> None:
    """Every alive node now runs its row (only changed rows are rebuilt: most are unchanged)."""
    for node_id, row in rows.items():
        if view[node_id].services != row:
            view[node_id] = dataclasses.replace(view[node_id], services=row)


def timed(view: Sequence[NodeView]) -> tuple[dict[str, tuple[str, ...]], float]:
    start = time.perf_counter()
    rows = allocate(view)
    return rows, time.perf_counter() - start


def changed(before: dict[str, tuple[str, ...]], after: dict[str, tuple[str, ...]], ids: set[str]) -> int:
    return sum(len(set(before[i]) ^ set(after[i])) for i in ids)


def bench(n: int, events: int, seed: int) -> dict[str, object]:
    rng = random.Random(seed * 1_000_003 + n)
    view = {f"node-{i:05d}": make_node(rng, f"node-{i:05d}") for i in range(n)}
    rows, t_fresh = timed(list(view.values()))
    settle(view, rows)
    again, t_settled = timed(list(view.values()))
    assert again == rows, "allocate must be idempotent on a settled view"

    join_moves: list[int] = []
    join_starts: list[int] = []
    fail_moves: list[int] = []
    fail_lost: list[int] = []
    times: list[float] = []
    next_id = n
    for _ in range(events):
        before = rows
        if rng.random() < 0.5 or len(view) < 2:
            new_id = f"node-{next_id:05d}"
            next_id += 1
            view[new_id] = make_node(rng, new_id)
            rows, t = timed(list(view.values()))
            join_moves.append(changed(before, rows, set(before)))
            join_starts.append(len(rows[new_id]))
        else:
            victim = rng.choice(sorted(view))
            fail_lost.append(len(view[victim].services))
            view[victim] = dataclasses.replace(view[victim], status="dead")
            rows, t = timed(list(view.values()))
            fail_moves.append(changed(before, rows, set(before) - {victim}))
            del view[victim]
        times.append(t)
        settle(view, rows)
    return {
        "nodes": n,
        "fresh_s": t_fresh,
        "settled_s": t_settled,
        "events": events,
        "event_s_mean": statistics.fmean(times) if times else 0.0,
        "joins": len(join_moves),
        "join_moved_mean": statistics.fmean(join_moves) if join_moves else 0.0,
        "join_moved_max": max(join_moves, default=0),
        "join_started_mean": statistics.fmean(join_starts) if join_starts else 0.0,
        "failures": len(fail_moves),
        "fail_lost_mean": statistics.fmean(fail_lost) if fail_lost else 0.0,
        "fail_moved_mean": statistics.fmean(fail_moves) if fail_moves else 0.0,
        "fail_moved_max": max(fail_moves, default=0),
        "final_deficit": deficit(list(view.values())),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.bench_allocate", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 1000, 10000], help="pool sizes (default 20 1000 10000: a small pool, where churn opens gaps, and the two large ones)")
    parser.add_argument("--events", type=int, default=200, help="churn events per size (default 200)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the whole run (default 1)")
    args = parser.parse_args(argv)
    print(f"allocate() benchmark, seed {args.seed}, {args.events} churn events per size")
    for n in args.sizes:
        r = bench(n, args.events, args.seed)
        print(f"\nN = {r['nodes']:,}")
        print(f"  allocate, all fresh        {r['fresh_s'] * 1000:9.1f} ms")
        print(f"  allocate, settled view     {r['settled_s'] * 1000:9.1f} ms")
        print(f"  allocate per churn event   {r['event_s_mean'] * 1000:9.1f} ms (mean)")
        print(
            f"  joins    {r['joins']:4d}: services changed on existing nodes "
            f"mean {r['join_moved_mean']:.2f}, max {r['join_moved_max']}; "
            f"newcomer starts mean {r['join_started_mean']:.2f}"
        )
        print(
            f"  failures {r['failures']:4d}: services changed on survivors "
            f"mean {r['fail_moved_mean']:.2f}, max {r['fail_moved_max']} "
            f"(the dead node ran {r['fail_lost_mean']:.2f} on average)"
        )
        print(f"  deficit at the end: {r['final_deficit']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
