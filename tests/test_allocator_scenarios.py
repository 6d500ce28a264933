"""The seven scenarios of seed 000, nodes joining one at a time.

Each newcomer's view holds the others with the services they were assigned
when they joined (their ``services`` = their earlier row), exactly as the
gossiped view would after each node started what it was given.
"""

from __future__ import annotations

import dataclasses

import pytest

from allocator import CATALOG, NodeView, allocate, by_name, gaps, mode, rank_key, services_doc

# (node, worker type, the row seed 000 gives it), in the order they join.
SCENARIOS = [
    ("gpu-1", "gpu", ("llm-inference", "vision-ocr")),  # 1: first GPU, multitask, 2 not 3
    ("gpu-2", "gpu", ("rag-embeddings",)),  # 2: fills the one gap, nothing else
    ("gpu-3", "gpu", ("llm-inference",)),  # 3: specializes, redundancy for llm
    ("cpu-1", "cpu", ("ner-extraction", "document-processing")),  # 4
    ("storage-1", "storage", ("chromadb", "redis")),  # 5
    ("edge-1", "edge", ("coordinator", "edge-proxy")),  # 6
    ("edge-2", "edge", ("coordinator", "load-balancer")),  # 7
]


def join_in_order(steps: list[tuple[str, str]]) -> list[dict[str, tuple[str, ...]]]:
    """Allocate after each join, feeding every earlier node its assignment as what it runs."""
    view: list[NodeView] = []
    history = []
    for node_id, worker_type in steps:
        view.append(NodeView(node_id, worker_type))
        rows = allocate(view)
        history.append(rows)
        view = [dataclasses.replace(n, services=rows[n.node_id]) for n in view]
    return history


@pytest.mark.parametrize("k", range(len(SCENARIOS)), ids=[f"scenario{k + 1}-{s[0]}" for k, s in enumerate(SCENARIOS)])
def test_scenario_newcomer_row(k: int) -> None:
    history = join_in_order([(n, t) for n, t, _ in SCENARIOS])
    node_id, _, expected = SCENARIOS[k]
    assert history[k][node_id] == expected


def test_scenarios_leave_earlier_rows_alone() -> None:
    """Each join changes only the newcomer's row: the earlier nodes keep what the seed gave them."""
    history = join_in_order([(n, t) for n, t, _ in SCENARIOS])
    for k, rows in enumerate(history):
        assert rows == {n: row for n, _, row in SCENARIOS[: k + 1]}


def test_scenario3_keeps_two_llm_runners() -> None:
    # "Now we have 2 workers doing LLM inference": gpu-1 keeps llm-inference.
    rows = join_in_order([(n, t) for n, t, _ in SCENARIOS[:3]])[-1]
    assert sorted(n for n, row in rows.items() if "llm-inference" in row) == ["gpu-1", "gpu-3"]
    view = [NodeView(n, "gpu", services=row) for n, row in rows.items()]
    assert mode(view, "gpu") == "specialize"
    assert mode(view[:2], "gpu") == "multitask"


def test_scenario7_coordinator_twice() -> None:
    rows = join_in_order([(n, t) for n, t, _ in SCENARIOS])[-1]
    assert sorted(n for n, row in rows.items() if "coordinator" in row) == ["edge-1", "edge-2"]
    assert by_name("coordinator").target == 2


def test_scenarios_gaps_document() -> None:
    rows = join_in_order([(n, t) for n, t, _ in SCENARIOS])[-1]
    types = {n: t for n, t, _ in SCENARIOS}
    doc = gaps([NodeView(n, types[n], services=row, healthy_services=row) for n, row in rows.items()])
    by_service = {e["service"]: e for e in doc["gaps"]}
    assert by_service["llm-inference"]["current_workers"] == 2
    assert by_service["llm-inference"]["status"] == "ok"
    assert by_service["vision-ocr"]["status"] == "warning"
    assert by_service["postgres"] == {
        "service": "postgres",
        "required_type": "storage",
        "priority": 3,
        "current_workers": 0,
        "status": "critical",
        "port": 5432,
    }
    assert [e["service"] for e in doc["critical_gaps"]] == ["notes-coa", "postgres", "minio", "neo4j"]
    assert doc["summary"] == {"total_services": 14, "covered": 2, "needs_attention": 12}


@pytest.mark.parametrize(
    ("health", "workers", "status"),
    [
        ({"a": True, "b": True}, 2, "ok"),
        ({"a": True, "b": False}, 1, "warning"),
        ({"a": False, "b": False}, 0, "critical"),  # all broken: not "ok" (issue 12)
        ({"a": False}, 0, "critical"),
    ],
)
def test_gaps_count_healthy_runners_only(health: dict[str, bool], workers: int, status: str) -> None:
    view = [
        NodeView(n, "cpu", services=("ner-extraction",), healthy_services=("ner-extraction",) if ok else ())
        for n, ok in health.items()
    ]
    entry = next(e for e in gaps(view)["gaps"] if e["service"] == "ner-extraction")
    assert (entry["current_workers"], entry["status"]) == (workers, status)
    assert ("ner-extraction" in [e["service"] for e in gaps(view)["critical_gaps"]]) == (status == "critical")
    doc = next(e for e in services_doc(view)["services"] if e["name"] == "ner-extraction")
    assert doc["worker_count"] == workers
    assert doc["workers"] == sorted(n for n, ok in health.items() if ok)
    assert doc["not_healthy_workers"] == sorted(n for n, ok in health.items() if not ok)


def test_gaps_ignore_health_claims_for_services_not_run() -> None:
    # Healthy for a service the node does not list, or a dead node's healthy runner: neither counts.
    view = [
        NodeView("a", "cpu", services=(), healthy_services=("ner-extraction",)),
        NodeView("b", "cpu", services=("ner-extraction",), healthy_services=("ner-extraction",), status="dead"),
    ]
    entry = next(e for e in gaps(view)["gaps"] if e["service"] == "ner-extraction")
    assert entry["current_workers"] == 0


def test_catalog_matches_the_seeds() -> None:
    expected = {
        "llm-inference": (1, "gpu", 1, 8105),
        "vision-ocr": (1, "gpu", 1, 8104),
        "rag-embeddings": (1, "gpu", 2, 8102),
        "ner-extraction": (2, "cpu", 2, 8108),
        "document-processing": (2, "cpu", 2, 8103),
        "notes-coa": (2, "cpu", 3, 8100),
        "chromadb": (3, "storage", 1, 8000),
        "redis": (3, "storage", 2, 6379),
        "postgres": (3, "storage", 3, 5432),
        "minio": (3, "storage", 4, 9000),
        "neo4j": (3, "storage", 5, 7474),
        "coordinator": (4, "edge", 1, 8080),
        "edge-proxy": (4, "edge", 1, 8787),
        "load-balancer": (4, "edge", 2, 8090),
    }
    assert {s.name: (s.tier, s.requires, s.priority, s.port) for s in CATALOG} == expected
    assert [s.order for s in CATALOG] == list(range(14))
    assert len({s.port for s in CATALOG}) == 14


def test_failure_of_first_gpu_moves_its_services_to_the_survivor() -> None:
    """After scenario 2, gpu-1 dies: gpu-2 takes both critical services (third slot: critical gaps)."""
    view = [
        NodeView("gpu-1", "gpu", services=("llm-inference", "vision-ocr"), status="dead"),
        NodeView("gpu-2", "gpu", services=("rag-embeddings",)),
    ]
    assert allocate(view) == {"gpu-2": ("llm-inference", "vision-ocr", "rag-embeddings")}


# After a failure, priority beats stickiness: a less critical service makes way
# for a more critical one that nobody runs, within the node's count (issue 12).
# While the dead member is in the view (until reaped), what it ran is an orphan
# and may take a survivor's third slot (issue 15: a crashed volunteer usually
# comes back; until then its services are carried).
# Each row: the survivors' current services (the dead node's row first) -> rows.
PRIORITY_AFTER_FAILURE = [
    pytest.param(
        [("cpu-1", "cpu", ("ner-extraction", "document-processing"), "dead"), ("cpu-2", "cpu", ("notes-coa",), "alive")],
        {"cpu-2": ("ner-extraction", "document-processing", "notes-coa")},
        id="issue15-survivor-carries-the-orphans",
    ),
    pytest.param(
        # The same survivor once the dead member is reaped (or in a view that never had it):
        # no orphan, no third slot for a priority-2 service; notes-coa (3) makes way.
        [("cpu-2", "cpu", ("notes-coa",), "alive")],
        {"cpu-2": ("ner-extraction", "document-processing")},
        id="issue12-survivor-ran-notes-coa",
    ),
    pytest.param(
        # The state the old rule left behind: it must not stay there.
        [("cpu-1", "cpu", ("ner-extraction", "document-processing"), "dead"), ("cpu-2", "cpu", ("ner-extraction", "notes-coa"), "alive")],
        {"cpu-2": ("ner-extraction", "document-processing", "notes-coa")},
        id="issue12-old-answer-is-not-settled",
    ),
    pytest.param(
        [("cpu-2", "cpu", ("ner-extraction", "notes-coa"), "alive")],
        {"cpu-2": ("ner-extraction", "document-processing")},
        id="issue12-old-answer-is-not-settled-after-reap",
    ),
    pytest.param(
        # The orphan notes-coa takes the third slot while its member is dead.
        [("cpu-1", "cpu", ("notes-coa",), "dead"), ("cpu-2", "cpu", ("ner-extraction", "document-processing"), "alive")],
        {"cpu-2": ("ner-extraction", "document-processing", "notes-coa")},
        id="lone-cpu-carries-an-orphan-of-lower-priority",
    ),
    pytest.param(
        # Nothing more critical is missing and nothing is an orphan: notes-coa stays a gap, nothing moves.
        [("cpu-1", "cpu", (), "dead"), ("cpu-2", "cpu", ("ner-extraction", "document-processing"), "alive")],
        {"cpu-2": ("ner-extraction", "document-processing")},
        id="lone-cpu-keeps-equal-priorities",
    ),
    pytest.param(
        # chromadb (critical) takes the third slot; redis (2) then displaces minio (4), the least critical.
        [("s-1", "storage", ("chromadb", "redis"), "dead"), ("s-2", "storage", ("postgres", "minio"), "alive")],
        {"s-2": ("chromadb", "redis", "postgres")},
        id="storage-cascade-least-critical-yields",
    ),
    pytest.param(
        # Room comes first: cpu-3 has a free slot, so nobody gives anything up.
        [
            ("cpu-1", "cpu", ("ner-extraction",), "dead"),
            ("cpu-2", "cpu", ("notes-coa", "document-processing"), "alive"),
            ("cpu-3", "cpu", ("document-processing",), "alive"),
        ],
        {"cpu-2": ("document-processing", "notes-coa"), "cpu-3": ("ner-extraction", "document-processing")},
        id="add-before-yield",
    ),
    pytest.param(
        # Specialize mode (three nodes, three slots): a surplus copy switches, nobody yields;
        # cpu-4 outranks cpu-3 (rank_key), so its copy of document-processing is the one that moves.
        [
            ("cpu-1", "cpu", ("ner-extraction",), "dead"),
            ("cpu-2", "cpu", ("notes-coa",), "alive"),
            ("cpu-3", "cpu", ("document-processing",), "alive"),
            ("cpu-4", "cpu", ("document-processing",), "alive"),
        ],
        {"cpu-2": ("notes-coa",), "cpu-3": ("document-processing",), "cpu-4": ("ner-extraction",)},
        id="specialized-surplus-switches-first",
    ),
    pytest.param(
        # A node that may not run the gap never yields for it.
        [
            ("cpu-1", "cpu", ("ner-extraction", "document-processing"), "dead"),
            ("cpu-2", "cpu", ("notes-coa",), "alive", ("notes-coa",)),
        ],
        {"cpu-2": ("notes-coa",)},
        id="can-run-limits-the-yield",
    ),
]


@pytest.mark.parametrize(("before", "expected"), PRIORITY_AFTER_FAILURE)
def test_priority_beats_stickiness_after_a_failure(before: list[tuple], expected: dict[str, tuple[str, ...]]) -> None:
    view = [
        NodeView(row[0], row[1], services=row[2], status=row[3], can_run=row[4] if len(row) > 4 else None) for row in before
    ]
    rows = allocate(view)
    assert rows == expected
    # And it is settled: the survivors running these rows keep them.
    assert allocate([dataclasses.replace(n, services=rows.get(n.node_id, n.services)) for n in view]) == rows


def test_specialized_failure_switches_a_redundant_copy() -> None:
    # Four GPU nodes (specialize). gpu-2, the only rag runner, dies: with no room
    # anywhere, a node running a redundant service switches to rag-embeddings.
    view = [
        NodeView("gpu-1", "gpu", services=("llm-inference", "vision-ocr")),
        NodeView("gpu-2", "gpu", services=("rag-embeddings",), status="dead"),
        NodeView("gpu-3", "gpu", services=("llm-inference",)),
        NodeView("gpu-4", "gpu", services=("vision-ocr",)),
        NodeView("gpu-5", "gpu", services=("vision-ocr",)),
    ]
    rows = allocate(view)
    assert sum("rag-embeddings" in row for row in rows.values()) == 1
    # vision-ocr had the largest surplus (3 runners for a target of 1), so one copy of it moves.
    assert sum("vision-ocr" in row for row in rows.values()) == 2
    assert sum("llm-inference" in row for row in rows.values()) == 2
    changed = [n for n in rows if rows[n] != next(v.services for v in view if v.node_id == n)]
    assert len(changed) == 1


def test_fresh_redundancy_lets_a_full_node_switch() -> None:
    # Three CPU nodes: specialize. Only cpu-1 may run notes-coa and it is full.
    # The fresh cpu-2 may only run document-processing and takes it (redundancy);
    # cpu-1's copy is then a surplus, which it drops for notes-coa.
    view = [
        NodeView("cpu-1", "cpu", services=("ner-extraction", "document-processing")),
        NodeView("cpu-2", "cpu", can_run=("document-processing",)),
        NodeView("cpu-3", "cpu", services=("ner-extraction",), can_run=("ner-extraction",)),
    ]
    assert allocate(view) == {
        "cpu-1": ("ner-extraction", "notes-coa"),
        "cpu-2": ("document-processing",),
        "cpu-3": ("ner-extraction",),
    }


def test_hand_over_when_only_a_full_node_can_run_the_gap() -> None:
    # Two storage nodes: multitask (cap 2 for non-critical gaps). Only storage-1
    # may run minio and neo4j, and it is full of sole copies; storage-2 has room
    # and may run redis, so storage-1 hands redis over and starts minio. Then
    # both are full: neo4j stays a gap.
    view = [
        NodeView("storage-1", "storage", services=("chromadb", "redis")),
        NodeView("storage-2", "storage", services=("postgres",), can_run=("postgres", "redis")),
    ]
    assert allocate(view) == {
        "storage-1": ("chromadb", "minio"),
        "storage-2": ("redis", "postgres"),
    }


def test_fresh_nodes_arriving_together_split_by_rank_key() -> None:
    """Three fresh GPU nodes at once: the best-ranked (blake2b of the id) plays gpu-1, and so on."""
    ids = ["ant", "bee", "cat"]
    by_rank = sorted(ids, key=rank_key)
    assert by_rank != sorted(ids), "pick ids whose hash order differs from their text order"
    rows = allocate([NodeView(i, "gpu") for i in ids])
    # Three nodes, three slots: specialize, one service each, biggest gap first.
    assert [rows[i] for i in by_rank] == [("llm-inference",), ("vision-ocr",), ("rag-embeddings",)]
    two = sorted(ids[:2], key=rank_key)
    rows = allocate([NodeView(i, "gpu") for i in reversed(ids[:2])])
    assert [rows[i] for i in two] == [("llm-inference", "vision-ocr"), ("rag-embeddings",)]


def test_a_gap_goes_to_the_least_loaded_node_with_room() -> None:
    ids = sorted(["north", "south", "east", "west"], key=rank_key)
    busy, idle, dead = ids[0], ids[1], ids[2]  # the busy node outranks the idle one
    view = [
        NodeView(busy, "gpu", services=("llm-inference", "rag-embeddings")),
        NodeView(idle, "gpu", services=("rag-embeddings",)),
        NodeView(dead, "gpu", services=("vision-ocr",), status="dead"),
    ]
    rows = allocate(view)
    assert rows[idle] == ("vision-ocr", "rag-embeddings")
    assert rows[busy] == ("llm-inference", "rag-embeddings")


# -- GPU nodes host CPU services the CPU nodes leave uncovered (issue 12) --------------

GPU = ("llm-inference", "vision-ocr", "rag-embeddings")
CPU = ("ner-extraction", "document-processing", "notes-coa")
BOTH = GPU + CPU


def test_two_gpu_boxes_alone_cover_every_cpu_service() -> None:
    """The seed's tip: GPU services first (as scenarios 1-2), then the CPU services in the free slots."""
    view: list[NodeView] = []
    for box in ("box-1", "box-2"):  # joining one after the other, as in the scenarios
        view.append(NodeView(box, "gpu", can_run=BOTH))
        rows = allocate(view)
        view = [dataclasses.replace(n, services=rows[n.node_id]) for n in view]
    gpu_rows = sorted(tuple(s for s in row if s in GPU) for row in rows.values())
    assert gpu_rows == [("llm-inference", "vision-ocr"), ("rag-embeddings",)]
    for s in CPU:
        assert sum(s in row for row in rows.values()) == 1, s
    assert all(len(row) == 3 for row in rows.values())
    assert allocate(view) == rows  # settled


def test_one_gpu_box_hosts_what_its_third_slot_allows() -> None:
    # llm and vision first; the third slot goes to the most critical CPU service.
    assert allocate([NodeView("box", "gpu", can_run=BOTH)]) == {"box": ("llm-inference", "vision-ocr", "ner-extraction")}


def test_hosting_only_what_can_run_names() -> None:
    # can_run None means "every GPU service": no CPU work (so the scenarios stay as written).
    assert allocate([NodeView("box", "gpu")]) == {"box": ("llm-inference", "vision-ocr")}
    # A box that advertises only notes-coa among the CPU services never gets the others.
    rows = allocate([NodeView("a", "gpu", can_run=(*GPU, "notes-coa")), NodeView("b", "gpu", can_run=GPU)])
    assert {s for row in rows.values() for s in row if s in CPU} == {"notes-coa"}
    assert "notes-coa" in rows["a"]


def test_a_cpu_node_takes_back_what_gpu_boxes_hosted() -> None:
    boxes = [
        NodeView("box-1", "gpu", services=("llm-inference", "vision-ocr", "document-processing"), can_run=BOTH),
        NodeView("box-2", "gpu", services=("rag-embeddings", "ner-extraction", "notes-coa"), can_run=BOTH),
    ]
    rows = allocate([*boxes, NodeView("cpu-1", "cpu")])
    # The CPU node takes the two best CPU services (scenario 4); the boxes keep only
    # what it leaves uncovered, where it already ran (sticky), and their GPU rows.
    assert rows == {
        "box-1": ("llm-inference", "vision-ocr"),
        "box-2": ("rag-embeddings", "notes-coa"),
        "cpu-1": ("ner-extraction", "document-processing"),
    }


def test_hosted_services_stay_put_when_a_gpu_box_joins() -> None:
    settled = [
        NodeView("box-1", "gpu", services=("llm-inference", "vision-ocr", "document-processing"), can_run=BOTH),
        NodeView("box-2", "gpu", services=("rag-embeddings", "ner-extraction", "notes-coa"), can_run=BOTH),
    ]
    assert allocate(settled) == {n.node_id: n.services for n in settled}
    rows = allocate([*settled, NodeView("box-3", "gpu", can_run=BOTH)])
    # The newcomer specializes (three boxes, three GPU slots); nothing hosted moves.
    assert rows["box-1"] == settled[0].services and rows["box-2"] == settled[1].services
    assert rows["box-3"] == ("llm-inference",)


def test_gpu_services_first_then_priority_among_hosted() -> None:
    # box-2 (rag, ner, doc) dies and only box-1 may run rag: box-1 gains it (GPU
    # first) in the slot notes-coa held, and notes-coa (3) then makes way for
    # ner-extraction (2) in the one slot left.
    view = [
        NodeView("box-1", "gpu", services=("llm-inference", "notes-coa"), can_run=BOTH),
        NodeView("box-2", "gpu", services=("rag-embeddings", "ner-extraction", "document-processing"), can_run=BOTH, status="dead"),
        NodeView("box-3", "gpu", services=("vision-ocr",), can_run=("vision-ocr",)),
    ]
    assert allocate(view) == {
        "box-1": ("llm-inference", "rag-embeddings", "ner-extraction"),
        "box-3": ("vision-ocr",),
    }


def test_a_gpu_gap_goes_to_the_box_that_hosts_least() -> None:
    # Same failure, but box-3 may run rag too: both have one GPU service, and
    # box-3 hosts nothing, so rag goes there and box-1 keeps its CPU work.
    view = [
        NodeView("box-1", "gpu", services=("llm-inference", "notes-coa"), can_run=BOTH),
        NodeView("box-2", "gpu", services=("rag-embeddings", "ner-extraction", "document-processing"), can_run=BOTH, status="dead"),
        NodeView("box-3", "gpu", services=("vision-ocr",), can_run=GPU),
    ]
    assert allocate(view) == {
        "box-1": ("llm-inference", "ner-extraction", "document-processing"),
        "box-3": ("vision-ocr", "rag-embeddings"),
    }


def test_a_crashed_edge_nodes_load_balancer_is_carried_until_it_returns() -> None:
    """Issue 15: with two edge nodes, the survivor takes the dead one's load-balancer as a third service
    (an orphan), and keeps it when the dead node comes back, which then takes the second coordinator."""
    e0 = NodeView("e0", "edge", services=("coordinator", "edge-proxy"))
    e7 = NodeView("e7", "edge", services=("coordinator", "load-balancer"))
    dead = dataclasses.replace(e7, status="dead")
    rows = allocate([e0, dead])
    assert rows == {"e0": ("coordinator", "edge-proxy", "load-balancer")}
    carried = dataclasses.replace(e0, services=rows["e0"])
    back = dataclasses.replace(e7, services=(), incarnation=1)
    assert allocate([carried, back]) == {"e0": ("coordinator", "edge-proxy", "load-balancer"), "e7": ("coordinator",)}
    # Reaped instead (never came back): no orphan; the survivor keeps what it runs (sticky).
    assert allocate([carried]) == {"e0": ("coordinator", "edge-proxy", "load-balancer")}
