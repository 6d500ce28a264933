"""The service catalog: the one source of truth for the 14 services.

Names, tiers, required worker types and ports come from the seeds
(``000_…`` "Service Catalog" and ``002_…`` "Supported Services"); priorities
come from ``000_…`` where it gives them. Priority 1 is critical.

Choices the seeds leave open, and why:

- ``postgres`` 3, ``minio`` 4, ``neo4j`` 5. The seeds give only chromadb (1)
  and redis (2) among the storage services, and scenario 5 of ``000_…`` says
  the first storage node runs exactly chromadb and redis. So the other three
  must rank strictly after redis. Distinct values keep their order from
  depending on catalog position: postgres holds relational case records
  (the most useful of the three once search and cache exist), minio holds
  uploaded files (the document pipeline can fall back to local disk), and
  neo4j is an optional graph enrichment.
- ``target``: how many runners the allocator aims for before it calls a
  service covered. It is 1 for every service except ``coordinator``, which
  is 2: scenario 7 gives the second edge node another coordinator "for
  redundancy" while edge-proxy, already running once, gets no second copy.
  ``gaps()`` still reports ``warning`` for any service with one runner, as
  the seed's document does; the target only steers allocation.
- ``order``: the position in the catalog below (the seeds' listing order),
  the last tie-break of the allocator. Scenario 1 needs llm-inference before
  vision-ocr (both priority 1) and scenario 4 ner-extraction before
  document-processing (both priority 2), which is exactly listing order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

WORKER_TYPES: tuple[str, ...] = ("gpu", "cpu", "storage", "edge")

# Tier of each worker type (000: "4-Tier Architecture").
TIER_OF_TYPE: dict[str, int] = {"gpu": 1, "cpu": 2, "storage": 3, "edge": 4}

# Worker types whose nodes may also run another type's services, as a
# fallback where that type's own nodes leave them uncovered: seed 003's tip
# "Let GPU workers handle CPU tasks during idle time". Only a host whose
# advertised ``can_run`` names the service is eligible (see allocator/allocate.py).
FALLBACK_HOSTS: dict[str, tuple[str, ...]] = {"cpu": ("gpu",)}


def tier_of(worker_type: str) -> int:
    """The tier of a worker type; a type this version does not know counts as CPU (tier 2),
    as ``allocator.members.worker_type_of`` treats it."""
    return TIER_OF_TYPE.get(worker_type, TIER_OF_TYPE["cpu"])


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One service of the catalog.

    ``requires`` is the worker type that runs it; ``tier`` is that type's tier.
    ``priority`` 1 is critical, larger is less urgent. ``target`` is the
    redundancy the allocator aims for (see the module docstring). ``order`` is
    the catalog position, used only to break ties.
    """

    name: str
    tier: int
    requires: str
    priority: int
    port: int
    target: int = 1
    order: int = 0

    def __post_init__(self) -> None:
        # A catalog is code, not peer input: a bad entry is our bug, so fail loudly.
        if not self.name:
            raise ValueError("service name must not be empty")
        if self.requires not in WORKER_TYPES:
            raise ValueError(f"{self.name}: requires must be one of {WORKER_TYPES}, not {self.requires!r}")
        if self.tier != TIER_OF_TYPE[self.requires]:
            raise ValueError(f"{self.name}: tier {self.tier} does not match worker type {self.requires}")
        if self.priority < 1:
            raise ValueError(f"{self.name}: priority must be >= 1 (1 is critical)")
        if not 0 < self.port < 65536:
            raise ValueError(f"{self.name}: port {self.port} out of range")
        if self.target < 1:
            raise ValueError(f"{self.name}: target must be >= 1")

    @property
    def critical(self) -> bool:
        return self.priority == 1

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "tier": self.tier,
            "requires": self.requires,
            "priority": self.priority,
            "port": self.port,
            "target": self.target,
        }


def _catalog(*rows: tuple[str, str, int, int, int]) -> tuple[ServiceSpec, ...]:
    return tuple(
        ServiceSpec(
            name=name,
            tier=TIER_OF_TYPE[requires],
            requires=requires,
            priority=priority,
            port=port,
            target=target,
            order=i,
        )
        for i, (name, requires, priority, port, target) in enumerate(rows)
    )


# (name, requires, priority, port, target)
CATALOG: tuple[ServiceSpec, ...] = _catalog(
    # Tier 1, GPU (000)
    ("llm-inference", "gpu", 1, 8105, 1),
    ("vision-ocr", "gpu", 1, 8104, 1),
    ("rag-embeddings", "gpu", 2, 8102, 1),
    # Tier 2, CPU (000)
    ("ner-extraction", "cpu", 2, 8108, 1),
    ("document-processing", "cpu", 2, 8103, 1),
    ("notes-coa", "cpu", 3, 8100, 1),
    # Tier 3, storage (000 for chromadb/redis; 002 for the ports of the rest;
    # priorities of the rest chosen above)
    ("chromadb", "storage", 1, 8000, 1),
    ("redis", "storage", 2, 6379, 1),
    ("postgres", "storage", 3, 5432, 1),
    ("minio", "storage", 4, 9000, 1),
    ("neo4j", "storage", 5, 7474, 1),
    # Tier 4, edge (000); the coordinator is wanted twice (scenario 7)
    ("coordinator", "edge", 1, 8080, 2),
    ("edge-proxy", "edge", 1, 8787, 1),
    ("load-balancer", "edge", 2, 8090, 1),
)

_BY_NAME: dict[str, ServiceSpec] = {s.name: s for s in CATALOG}


def by_name(name: str, catalog: tuple[ServiceSpec, ...] = CATALOG) -> ServiceSpec | None:
    """The spec called ``name`` in ``catalog``, or None when there is none."""
    if catalog is CATALOG:
        return _BY_NAME.get(name)
    for spec in catalog:
        if spec.name == name:
            return spec
    return None


def service_names(catalog: tuple[ServiceSpec, ...] = CATALOG) -> tuple[str, ...]:
    return tuple(s.name for s in catalog)


def ordered(catalog: Iterable[ServiceSpec]) -> list[ServiceSpec]:
    """One spec per name (the first by catalog order), sorted by catalog order.

    Every function that takes a catalog goes through this, so that a caller's
    hand-made catalog (repeated names, shuffled rows) cannot make a result
    depend on the order it was written in.
    """
    seen: dict[str, ServiceSpec] = {}
    for spec in sorted(catalog, key=lambda s: (s.order, s.name)):
        seen.setdefault(spec.name, spec)
    return list(seen.values())
