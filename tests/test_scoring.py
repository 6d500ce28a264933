"""The seed 003 scoring table, its two worked examples, and rank()."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocator import NodeView, canonical_service, detect_required_model, rank, score


class FixedRandom(random.Random):
    """A Random whose uniform() always returns the low end: isolates the table from the tie-break."""

    def uniform(self, a: float, b: float) -> float:
        return a


ZERO = FixedRandom()


def gpu(node_id: str, **kw: object) -> NodeView:
    return NodeView(node_id, "gpu", **kw)  # type: ignore[arg-type]


# -- the seed's worked examples ------------------------------------------------


def test_seed_example_1_ocr_request() -> None:
    gpu1 = gpu("GPU-1", services=("vision-ocr",), loaded_models=("llama-vision", "nomic-embed-text"), current_load=0.20, specialization="ocr")
    gpu2 = gpu("GPU-2", services=("vision-ocr",), loaded_models=("llama3.2", "nomic-embed-text"), current_load=0.15, active_requests=2, specialization="vllm")
    model = detect_required_model("vision-ocr", "/api/ocr")
    assert model == "llama-vision"
    assert score(gpu1, "vision-ocr", model, 0, ZERO) == pytest.approx(174.0)
    assert score(gpu2, "vision-ocr", model, 0, ZERO) == pytest.approx(15.5)
    # With the real tie-break the scores are "about" those: within [x, x+5).
    rng = random.Random(7)
    assert 174.0 <= score(gpu1, "vision-ocr", model, 0, rng) < 179.0
    assert 15.5 <= score(gpu2, "vision-ocr", model, 0, rng) < 20.5
    assert rank([gpu2, gpu1], "vision-ocr", model, {}, random.Random(1))[0].node_id == "GPU-1"


def test_seed_example_2_vllm_request_under_load() -> None:
    gpu1 = gpu("GPU-1", services=("llm-inference",), loaded_models=("llama3.2",), current_load=0.90, active_requests=5)
    gpu2 = gpu("GPU-2", services=("llm-inference",), loaded_models=("llama3.2",), current_load=0.30, active_requests=1)
    model = detect_required_model("llm-inference", "/v1/chat/completions")
    assert model == "llama3.2"
    assert score(gpu1, "llm-inference", model, 0, ZERO) == pytest.approx(78.0)
    assert score(gpu2, "llm-inference", model, 0, ZERO) == pytest.approx(116.0)
    assert [n.node_id for n in rank([gpu1, gpu2], "llm-inference", model, {}, random.Random(3))] == ["GPU-2", "GPU-1"]


# -- the table, one factor at a time -------------------------------------------


BASE = NodeView("n", "cpu", services=("ner-extraction",))


@pytest.mark.parametrize(
    ("node", "service", "model", "in_flight", "expected"),
    [
        (BASE, "ner-extraction", None, 0, 20.0),  # CPU tier only
        (NodeView("n", "gpu"), "llm-inference", None, 0, 30.0),
        (NodeView("n", "storage"), "chromadb", None, 0, 10.0),
        (NodeView("n", "edge"), "coordinator", None, 0, 0.0),
        (NodeView("n", "cpu", loaded_models=("m",)), "ner-extraction", "m", 0, 120.0),
        (NodeView("n", "cpu", loaded_models=("m:latest",)), "ner-extraction", "m", 0, 120.0),
        (NodeView("n", "cpu", loaded_models=("m",)), "ner-extraction", "other", 0, 20.0),
        (NodeView("n", "cpu", loaded_models=("m",)), "ner-extraction", None, 0, 20.0),
        (NodeView("n", "cpu", specialization="ner"), "ner-extraction", None, 0, 70.0),
        (NodeView("n", "cpu", specialization="ner-extraction"), "ner-extraction", None, 0, 70.0),
        (NodeView("n", "cpu", specialization="notes"), "ner-extraction", None, 0, 20.0),
        (NodeView("n", "cpu", healthy_services=("ner-extraction",)), "ner-extraction", None, 0, 30.0),
        (NodeView("n", "cpu", healthy_services=("notes-coa",)), "ner-extraction", None, 0, 20.0),
        (NodeView("n", "cpu", current_load=1.0), "ner-extraction", None, 0, -10.0),
        (NodeView("n", "cpu", current_load=0.5), "ner-extraction", None, 0, 5.0),
        (NodeView("n", "cpu", active_requests=3), "ner-extraction", None, 0, 5.0),
        (NodeView("n", "cpu", active_requests=3), "ner-extraction", None, 2, -5.0),  # gossiped + own in-flight
        (NodeView("n", "cpu"), "ner-extraction", None, 4, 0.0),
        (NodeView("n", "gpu", gpu_utilization=100.0), "llm-inference", None, 0, 10.0),
        (NodeView("n", "gpu", gpu_utilization=50.0), "llm-inference", None, 0, 20.0),
        (NodeView("n", "cpu", gpu_utilization=100.0), "ner-extraction", None, 0, 20.0),  # CPU nodes: no GPU term
    ],
)
def test_table(node: NodeView, service: str, model: str | None, in_flight: int, expected: float) -> None:
    assert score(node, service, model, in_flight, ZERO) == pytest.approx(expected)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), load=st.floats(0, 1), active=st.integers(0, 50))
def test_tie_break_is_within_five_and_seeded(seed: int, load: float, active: int) -> None:
    node = NodeView("n", "cpu", current_load=load, active_requests=active)
    exact = score(node, "ner-extraction", None, 0, ZERO)
    one = score(node, "ner-extraction", None, 0, random.Random(seed))
    assert exact <= one < exact + 5.0
    assert one == score(node, "ner-extraction", None, 0, random.Random(seed))


def test_out_of_range_gossip_is_clamped() -> None:
    wild = NodeView("n", "gpu", current_load=float("nan"), gpu_utilization=1e9, active_requests=-4)
    assert score(wild, "llm-inference", None, -3, ZERO) == pytest.approx(30.0 - 20.0)


# -- rank ------------------------------------------------------------------------


def test_rank_keeps_only_alive_runners() -> None:
    nodes = [
        gpu("a", services=("llm-inference",)),
        gpu("b", services=("llm-inference",), status="suspect"),
        gpu("c", services=("llm-inference",), status="dead"),
        gpu("d", services=("vision-ocr",)),
        gpu("e", services=("llm-inference",), status="left"),
    ]
    assert sorted(n.node_id for n in rank(nodes, "llm-inference", None, {}, random.Random(0))) == ["a", "b"]
    # An alias names the same service.
    assert sorted(n.node_id for n in rank(nodes, "llm", None, {}, random.Random(0))) == ["a", "b"]


def test_rank_counts_the_routers_own_in_flight_requests() -> None:
    a = gpu("a", services=("llm-inference",))
    b = gpu("b", services=("llm-inference",))
    # 2 requests in flight to a: -10, more than the 5-point tie-break can undo.
    for seed in range(20):
        assert rank([a, b], "llm-inference", None, {"a": 2}, random.Random(seed))[0].node_id == "b"


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), data=st.data())
def test_rank_is_order_independent_for_a_given_seed(seed: int, data: st.DataObject) -> None:
    nodes = [gpu(f"n{i}", services=("llm-inference",), current_load=i / 10) for i in range(6)]
    shuffled = data.draw(st.permutations(nodes))
    first = [n.node_id for n in rank(nodes, "llm-inference", None, {}, random.Random(seed))]
    second = [n.node_id for n in rank(shuffled, "llm-inference", None, {}, random.Random(seed))]
    assert first == second


# -- model detection and aliases ---------------------------------------------------


@pytest.mark.parametrize(
    ("service", "path", "model"),
    [
        ("llm-inference", "/v1/completions", "llama3.2"),
        ("llm-inference", "/api/vision/describe", "llama-vision"),
        ("vision-ocr", "/ocr", "llama-vision"),
        ("vision-ocr", "/", "llama-vision"),
        ("rag-embeddings", "/query", "nomic-embed-text"),
        ("llm-inference", "/v1/embeddings", "nomic-embed-text"),
        ("ocr", "/x", "llama-vision"),
        ("ner-extraction", "/extract", None),
        ("chromadb", "/api/v1/collections", None),
        ("coordinator", "/embed", None),
        ("no-such-service", "/", None),
    ],
)
def test_detect_required_model(service: str, path: str, model: str | None) -> None:
    assert detect_required_model(service, path) == model


@pytest.mark.parametrize(
    ("alias", "name"),
    [("ocr", "vision-ocr"), ("vllm", "llm-inference"), ("LLM", "llm-inference"), ("embeddings", "rag-embeddings"),
     ("rag", "rag-embeddings"), ("ner", "ner-extraction"), ("upload", "document-processing"), ("notes", "notes-coa"),
     ("redis", "redis")],
)
def test_aliases(alias: str, name: str) -> None:
    assert canonical_service(alias) == name
