"""The seven scenarios of seed 000, nodes joining one at a time.

Each newcomer's view holds the others with the services they were assigned
when they joined (their ``services`` = their earlier row), exactly as the
gossiped view would after each node started what it was given.
"""

from __future__ import annotations

import dataclasses

import pytest

from allocator import CATALOG, NodeView, allocate, by_name, gaps, mode, rank_key

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
    doc = gaps([NodeView(n, types[n], services=row) for n, row in rows.items()])
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


def test_lone_cpu_worker_does_not_take_a_third_noncritical_service() -> None:
    view = [
        NodeView("cpu-1", "cpu", services=("ner-extraction", "document-processing"), status="dead"),
        NodeView("cpu-2", "cpu", services=("notes-coa",)),
    ]
    # Sticky: notes-coa stays; one more (the best gap); document-processing waits for a worker.
    assert allocate(view) == {"cpu-2": ("ner-extraction", "notes-coa")}


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
