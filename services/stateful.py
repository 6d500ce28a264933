"""The interface of a stateful service's runner: a copy that is either primary or replica.

The manager computes each copy's role from the view
(``allocator.replicas.primary_of``) and drives every local copy with
``set_role``:

- ``set_role("primary", None)``: accept writes (Redis ``REPLICAOF NO ONE``,
  ``pg_ctl promote``). A replica promoted keeps its data: a primary is never
  a fresh empty runner while a copy with data exists.
- ``set_role("replica", Endpoint(host, port))``: follow that primary and
  refuse writes. A copy that was primary and comes back finds another
  primary in the view and becomes its replica (its unreplicated writes are
  discarded in favour of the current primary's history: no split brain).

The role wanted at start is given before ``start()`` (``set_role`` on a
runner not started yet only records it), so a returning old primary never
comes up writable, not even for the moment before the manager looks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from services.runner import Runner

Role = Literal["primary", "replica"]
ROLES: tuple[Role, ...] = ("primary", "replica")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a copy of a service accepts connections (a host this machine can reach)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ReplicationState:
    """What a copy says about its replication, as the engine reports it."""

    role: str
    """``primary`` or ``replica`` as the engine sees itself (may lag ``set_role`` briefly)."""
    linked: bool
    """Replica: streaming from its primary now. Primary: always True."""
    replicas: int
    """Primary: replicas connected and streaming. Replica: 0."""
    offset: int
    """Replication position in the engine's unit (Redis bytes, PostgreSQL WAL LSN as bytes)."""


class StatefulRunner(Runner, Protocol):
    @property
    def role(self) -> Role: ...

    @property
    def endpoint(self) -> Endpoint | None:
        """Where clients and replicas reach this copy; None before start."""
        ...

    async def set_role(self, role: Role, primary: Endpoint | None) -> None:
        """Become ``role``; ``primary`` is the copy to follow (required for ``replica``)."""
        ...

    async def replication(self) -> ReplicationState: ...
