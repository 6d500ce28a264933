"""What ``services/`` needs of the node it runs in: a narrow, typed handle.

The service manager and the gateway see the pool only through ``PoolHandle``:
the members, this node's own metadata and load, a way to change its
metadata, a subscription to view changes, and the request counter. The
daemon (``rmap2p``) provides one over its ``Node``; tests provide one over a
bare ``membership.Membership``. Nothing in ``services/`` imports ``rmap2p``.

``RequestCounter`` belongs to the gateway side: the gateway counts the
requests this node is serving, and the node reads the figure into the load it
gossips and puts on its acks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from membership import Load, MemberEvent, MemberView, NodeMeta
from services.engine_choice import Gpu
from services.route_auth import Signer


@dataclass(slots=True)
class RequestCounter:
    """Requests this node is serving now (``active``) and has served (``served``)."""

    active: int = 0
    served: int = 0

    def begin(self) -> None:
        self.active += 1

    def end(self) -> None:
        self.active = max(0, self.active - 1)
        self.served += 1


ViewListener = Callable[[Sequence[MemberEvent]], None]


class PoolHandle(Protocol):
    """This node as ``services/`` sees it."""

    @property
    def node_id(self) -> str: ...

    @property
    def meta(self) -> NodeMeta:
        """This node's metadata as it gossips it now."""
        ...

    @property
    def load(self) -> Load:
        """This node's last sampled load (``active_requests`` from ``requests``)."""
        ...

    @property
    def leaving(self) -> bool:
        """True once the node announced its leave: change nothing any more."""
        ...

    @property
    def service_host(self) -> str:
        """The address this node's services listen on (its HTTP bind host)."""
        ...

    @property
    def requests(self) -> RequestCounter: ...

    @property
    def identity(self) -> Signer:
        """This node's identity: the gateway signs the requests it forwards to peers with it."""
        ...

    @property
    def gpus(self) -> tuple[Gpu, ...]:
        """The GPUs the node detected at start (none: services run their CPU engines)."""
        ...

    @property
    def data_dir(self) -> Path | None:
        """Where this node keeps its data (stateful services under ``services/``); None: nowhere."""
        ...

    @property
    def pool_secret(self) -> bytes | None:
        """A secret every member of the pool holds (storage passwords derive from it); None in an open pool."""
        ...

    def members(self) -> list[MemberView]:
        """Every member this node knows, itself included."""
        ...

    def update_meta(self, change: Callable[[NodeMeta], NodeMeta]) -> None:
        """Replace this node's metadata by ``change(meta)`` and gossip it."""
        ...

    def now(self) -> float:
        """The clock membership keeps its times on (``MemberView.last_seen``, ``since``)."""
        ...

    def probe_soon(self, node: str) -> None:
        """This node could not connect to ``node``: have membership probe it next (rate-limited).

        Evidence, not a verdict: membership's own probes and suspicion decide whether it is dead.
        """
        ...

    def check_alive(self, nodes: Iterable[str]) -> None:
        """Ping ``nodes`` now: each that answers gets a fresh ``MemberView.last_seen`` (evidence for, never against)."""
        ...

    def on_view_change(self, listener: ViewListener) -> None:
        """Call ``listener(events)`` after every batch of membership events."""
        ...

    async def wait_settled(self) -> None:
        """Return once the node has joined its pool (or found nobody): the first view is worth acting on."""
        ...
