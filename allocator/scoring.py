"""score() and rank(): which node a request for a service goes to (seed ``003_…``).

The table, exactly as the seed gives it::

    required model already loaded            +100
    node's specialization matches the service +50
    tier: GPU / CPU / storage                 +30 / +20 / +10  (edge: 0)
    service reported healthy                  +10
    CPU load                                  −30 · current_load        (0..1)
    active requests                           −5 · (active_requests + in_flight)
    GPU utilization (GPU nodes only)          −20 · gpu_utilization/100 (0..100)
    tie-break                                 + rng.uniform(0, 5)

One rule the seed does not have (issue 16)::

    reached through a relay                   −8

A relayed member (behind NAT, carried by an edge) costs every request an extra
network hop and the edge's bandwidth; 8 points rank it below an equal direct
node even after the tie-break (at most 5) and after one request more in flight
on the direct node (5), but never above the tier, health or model rules: a
relayed GPU with the model loaded still beats a direct CPU.

``active_requests`` is the node's own gossiped count, seconds old; ``in_flight``
is what the forwarding node knows first hand: requests it has sent to that
node and not yet seen answered. They add, because the gossiped count cannot
yet include the router's newest requests.

The tie-break draws from a ``random.Random`` that the caller passes in (one per
node, seeded), never the global generator, so a simulation replays exactly.

A loaded model matches the required one when the names are equal or equal
once an Ollama-style ``:tag`` is removed from either (``llama3.2:latest`` is
``llama3.2``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping

from allocator.view import NodeView

MODEL_LOADED = 100.0
SPECIALIZATION = 50.0
TIER_POINTS: dict[str, float] = {"gpu": 30.0, "cpu": 20.0, "storage": 10.0}
HEALTHY = 10.0
CPU_LOAD_PER_UNIT = 30.0
PER_ACTIVE_REQUEST = 5.0
GPU_UTIL_PER_100 = 20.0
TIE_BREAK_MAX = 5.0
RELAYED = 8.0

# Names under which workers declare a specialization (WORKER_SPECIALIZATION)
# or clients name a service (/service/ocr/...), mapped to the catalog name.
ALIASES: dict[str, str] = {
    "ocr": "vision-ocr",
    "vision": "vision-ocr",
    "llava": "vision-ocr",
    "llm": "llm-inference",
    "vllm": "llm-inference",
    "inference": "llm-inference",
    "rag": "rag-embeddings",
    "embeddings": "rag-embeddings",
    "embedding": "rag-embeddings",
    "ner": "ner-extraction",
    "upload": "document-processing",
    "documents": "document-processing",
    "document": "document-processing",
    "docs": "document-processing",
    "notes": "notes-coa",
    "coa": "notes-coa",
}

# The model each model-serving service needs by default (seed 003: "llama3.2",
# "llama-vision", "nomic-embed-text").
DEFAULT_MODEL: dict[str, str] = {
    "llm-inference": "llama3.2",
    "vision-ocr": "llama-vision",
    "rag-embeddings": "nomic-embed-text",
}


def canonical_service(name: str) -> str:
    """The catalog name for ``name`` or one of its aliases (case-insensitive); unknown names pass through."""
    key = name.strip().lower()
    return ALIASES.get(key, key)


def detect_required_model(service: str, path: str) -> str | None:
    """The model a request needs, from its service and path; None when it needs none.

    The path wins when it names a kind of model (a vision or OCR request to
    the LLM service needs the vision model; an embedding request needs the
    embedding model); otherwise the service's default model; services that
    serve no model (CPU, storage, edge) need none.
    """
    name = canonical_service(service)
    lowered = path.lower()
    if name not in DEFAULT_MODEL:
        return None
    if "vision" in lowered or "ocr" in lowered or "image" in lowered:
        return DEFAULT_MODEL["vision-ocr"]
    if "embed" in lowered:
        return DEFAULT_MODEL["rag-embeddings"]
    return DEFAULT_MODEL[name]


def model_loaded(node: NodeView, model: str) -> bool:
    wanted = _strip_tag(model)
    return any(_strip_tag(m) == wanted for m in node.loaded_models)


def specialization_matches(node: NodeView, service: str) -> bool:
    return bool(node.specialization) and canonical_service(node.specialization) == canonical_service(service)


def score(
    node: NodeView,
    service: str,
    required_model: str | None,
    in_flight: int,
    rng: random.Random,
) -> float:
    """The seed 003 score of sending a request for ``service`` to ``node`` (table in the module docstring)."""
    name = canonical_service(service)
    points = 0.0
    if required_model and model_loaded(node, required_model):
        points += MODEL_LOADED
    if specialization_matches(node, name):
        points += SPECIALIZATION
    points += TIER_POINTS.get(node.worker_type, 0.0)
    if name in node.healthy_services:
        points += HEALTHY
    points -= CPU_LOAD_PER_UNIT * _clamp(node.current_load, 0.0, 1.0)
    points -= PER_ACTIVE_REQUEST * (max(0, node.active_requests) + max(0, in_flight))
    if node.worker_type == "gpu":
        points -= GPU_UTIL_PER_100 * _clamp(node.gpu_utilization, 0.0, 100.0) / 100.0
    if node.relayed:
        points -= RELAYED
    return points + rng.uniform(0.0, TIE_BREAK_MAX)


def rank(
    candidates: Iterable[NodeView],
    service: str,
    required_model: str | None,
    in_flight: Mapping[str, int],
    rng: random.Random,
) -> list[NodeView]:
    """The alive or suspect candidates that run ``service``, best score first.

    Candidates are scored in node-id order, so the rng's draws land on the
    same nodes whatever order they were given in; equal scores fall back to
    the node id.
    """
    name = canonical_service(service)
    eligible = sorted((n for n in candidates if n.is_alive and name in n.services), key=lambda n: n.node_id)
    scored = [(score(n, name, required_model, in_flight.get(n.node_id, 0), rng), n) for n in eligible]
    scored.sort(key=lambda sn: (-sn[0], sn[1].node_id))
    return [n for _, n in scored]


def _strip_tag(model: str) -> str:
    return model.split(":", 1)[0].strip().lower()


def _clamp(value: float, lo: float, hi: float) -> float:
    # Gossiped figures are hints; a NaN or out-of-range one must not dominate the score.
    if value != value:  # NaN
        return lo
    return min(hi, max(lo, value))
