"""NodeView: what the allocator knows about one member, and how to read it from JSON.

The daemon builds one ``NodeView`` per known member from the gossiped
membership state (status, incarnation, metadata, coarse load); the CLI builds
them from JSON. Everything in ``allocator/`` is a function of a collection of
these and nothing else.

Status follows SWIM: ``alive`` and ``suspect`` members count as alive for
allocation, gaps and leadership (a suspect member is usually alive and only
slow; moving its services at the first missed probe would make every hiccup a
migration); ``dead`` and ``left`` members run nothing.

``normalize()`` is the single place that makes the functions order-independent:
it sorts by node id and collapses duplicate ids by SWIM precedence, so that
``allocate``, ``gaps`` and ``elect`` never depend on input order.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import astuple, dataclass

from allocator.catalog import WORKER_TYPES

STATUSES: tuple[str, ...] = ("alive", "suspect", "dead", "left")
ALIVE_STATUSES: frozenset[str] = frozenset({"alive", "suspect"})

# SWIM precedence at equal incarnation: left and dead override suspect,
# which overrides alive. Used only to collapse duplicate entries.
_STATUS_RANK = {"alive": 0, "suspect": 1, "dead": 2, "left": 3}


@dataclass(frozen=True, slots=True)
class NodeView:
    """One member as the allocator sees it.

    ``services`` is what the node runs now; ``can_run`` is what it is able to
    run (None: every service of its worker type). The load fields feed only
    request scoring: ``current_load`` is CPU load 0..1, ``gpu_utilization``
    0..100 percent, ``active_requests`` the node's own gossiped count, and
    ``healthy_services`` the services it reports healthy, ``relayed`` whether
    peers reach it through an edge's relay.
    """

    node_id: str
    worker_type: str
    services: tuple[str, ...] = ()
    status: str = "alive"
    can_run: tuple[str, ...] | None = None
    specialization: str = ""
    incarnation: int = 0
    loaded_models: tuple[str, ...] = ()
    current_load: float = 0.0
    gpu_utilization: float = 0.0
    active_requests: int = 0
    healthy_services: tuple[str, ...] = ()
    relayed: bool = False
    """Reached through a relay on an edge node (request scoring charges the extra hop)."""

    @property
    def is_alive(self) -> bool:
        return self.status in ALIVE_STATUSES

    def able_to_run(self, service: str) -> bool:
        """True when ``can_run`` allows ``service`` (the worker type is checked by the caller)."""
        return self.can_run is None or service in self.can_run

    @classmethod
    def from_json(cls, raw: object) -> NodeView:
        """Build a NodeView from a decoded JSON object; ValueError says which field is wrong."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"a node must be a JSON object, not {_kind(raw)}")
        node_id = raw.get("node_id")
        if not isinstance(node_id, str) or not node_id:
            raise ValueError(f"node_id must be a non-empty string, not {_show(node_id)}")
        where = f"node {node_id!r}"
        worker_type = raw.get("worker_type")
        if worker_type not in WORKER_TYPES:
            raise ValueError(f"{where}: worker_type must be one of {', '.join(WORKER_TYPES)}, not {_show(worker_type)}")
        status = raw.get("status", "alive")
        if status not in STATUSES:
            raise ValueError(f"{where}: status must be one of {', '.join(STATUSES)}, not {_show(status)}")
        can_run_raw = raw.get("can_run")
        can_run = None if can_run_raw is None else _str_tuple(can_run_raw, f"{where}: can_run")
        specialization = raw.get("specialization", "")
        if specialization is None:
            specialization = ""
        if not isinstance(specialization, str):
            raise ValueError(f"{where}: specialization must be a string, not {_show(specialization)}")
        return cls(
            node_id=node_id,
            worker_type=worker_type,
            services=_str_tuple(raw.get("services", []), f"{where}: services"),
            status=status,
            can_run=can_run,
            specialization=specialization,
            incarnation=_int(raw.get("incarnation", 0), f"{where}: incarnation", 0, 2**63 - 1),
            loaded_models=_str_tuple(raw.get("loaded_models", []), f"{where}: loaded_models"),
            current_load=_number(raw.get("current_load", 0.0), f"{where}: current_load", 0.0, 1.0),
            gpu_utilization=_number(raw.get("gpu_utilization", 0.0), f"{where}: gpu_utilization", 0.0, 100.0),
            active_requests=_int(raw.get("active_requests", 0), f"{where}: active_requests", 0, 2**31 - 1),
            healthy_services=_str_tuple(raw.get("healthy_services", []), f"{where}: healthy_services"),
        )

    def to_json(self) -> dict[str, object]:
        return {
            "node_id": self.node_id,
            "worker_type": self.worker_type,
            "services": list(self.services),
            "status": self.status,
            "can_run": None if self.can_run is None else list(self.can_run),
            "specialization": self.specialization,
            "incarnation": self.incarnation,
            "loaded_models": list(self.loaded_models),
            "current_load": self.current_load,
            "gpu_utilization": self.gpu_utilization,
            "active_requests": self.active_requests,
            "healthy_services": list(self.healthy_services),
        }


def view_from_json(doc: object) -> tuple[NodeView, ...]:
    """Parse ``{"nodes": [...]}``; ValueError on a bad document or a repeated node_id."""
    if not isinstance(doc, Mapping):
        raise ValueError(f'expected a JSON object {{"nodes": [...]}}, not {_kind(doc)}')
    nodes = doc.get("nodes")
    if not isinstance(nodes, list):
        raise ValueError(f'"nodes" must be a list, not {_show(nodes)}')
    view = []
    seen: set[str] = set()
    for i, raw in enumerate(nodes):
        try:
            node = NodeView.from_json(raw)
        except ValueError as exc:
            raise ValueError(f"nodes[{i}]: {exc}") from None
        if node.node_id in seen:
            raise ValueError(f"nodes[{i}]: node_id {node.node_id!r} appears more than once")
        seen.add(node.node_id)
        view.append(node)
    return tuple(view)


def rank_key(node_id: str) -> tuple[bytes, str]:
    """The stable ordering key of a node: blake2b-64 of its id, then the id.

    Every node computes the same key for the same id, whatever the Python
    process (the built-in ``hash()`` is salted per process). Hashing spreads
    roles over ids instead of favouring ids that sort first; the id breaks the
    (astronomically unlikely) digest tie.
    """
    return hashlib.blake2b(node_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(), node_id


def normalize(view: Iterable[NodeView]) -> tuple[NodeView, ...]:
    """The view sorted by node_id, one entry per id.

    Duplicate ids (two gossip snapshots of one member) collapse to the entry
    with the higher incarnation, then the stronger status (left > dead >
    suspect > alive, as SWIM orders them), then the larger ``repr`` of its
    fields, so the choice never depends on input order.
    """
    best: dict[str, NodeView] = {}
    for node in view:
        old = best.get(node.node_id)
        if old is None or _precedence(node) > _precedence(old):
            best[node.node_id] = node
    return tuple(best[k] for k in sorted(best))


def _precedence(node: NodeView) -> tuple[int, int, str]:
    return (node.incarnation, _STATUS_RANK.get(node.status, -1), repr(astuple(node)))


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _show(value: object) -> str:
    text = repr(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else _kind(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _str_tuple(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where} must be a list of strings, not {_kind(value)}")
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"{where} must hold only strings, found {_show(item)}")
    return tuple(value)


def _int(value: object, where: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{where} must be an integer, not {_show(value)}")
    if not lo <= value <= hi:
        raise ValueError(f"{where} must be between {lo} and {hi}, not {value}")
    return value


def _number(value: object, where: str, lo: float, hi: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{where} must be a number, not {_show(value)}")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ValueError(f"{where} must be between {lo:g} and {hi:g}, not {value}")
    return float(value)


def alive_members(view: Sequence[NodeView]) -> tuple[NodeView, ...]:
    """The alive and suspect members of an already normalized view."""
    return tuple(n for n in view if n.is_alive)
