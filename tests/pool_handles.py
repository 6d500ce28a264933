"""``services.handle.PoolHandle`` over a real ``Membership``, driven by a test's manual clock.

The service manager and the gateway run in-process against it: the members,
metadata changes and view events are the membership machine's own, moved by
``tests.cluster.Cluster`` (or the simulator) instead of the daemon's loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from cluster import Cluster

from membership import Load, Membership, MemberView, NodeMeta
from membership.signing import UnsignedIdentity
from services.engine_choice import Gpu
from services.handle import RequestCounter, ViewListener


class MachineHandle:
    """A ``PoolHandle`` over ``machine()`` at time ``now()``; ``after_change`` moves its outbox."""

    def __init__(
        self,
        machine: Callable[[], Membership],
        now: Callable[[], float],
        after_change: Callable[[], None] = lambda: None,
        service_host: str = "127.0.0.1",
        data_dir: Path | None = None,
        pool_secret: bytes | None = None,
    ) -> None:
        self._machine = machine
        self._now = now
        self._after_change = after_change
        self._service_host = service_host
        self.data_dir = data_dir
        self.pool_secret = pool_secret
        self._listeners: list[ViewListener] = []
        self.requests = RequestCounter()
        self.gpus: tuple[Gpu, ...] = ()

    @classmethod
    def of_cluster(cls, cluster: Cluster, index: int) -> MachineHandle:
        return cls(lambda: cluster.nodes[index], lambda: cluster.now, lambda: cluster.flush(index))

    @property
    def machine(self) -> Membership:
        return self._machine()

    @property
    def identity(self) -> UnsignedIdentity:
        return UnsignedIdentity(self.machine.id)

    @property
    def node_id(self) -> str:
        return self.machine.id

    @property
    def meta(self) -> NodeMeta:
        return self.machine.meta

    @property
    def load(self) -> Load:
        return self.machine.load

    @property
    def leaving(self) -> bool:
        return self.machine.leaving

    @property
    def service_host(self) -> str:
        return self._service_host

    def members(self) -> list[MemberView]:
        return self.machine.members()

    def update_meta(self, change: Callable[[NodeMeta], NodeMeta]) -> None:
        self.machine.update_meta(change(self.machine.meta), self._now())
        self._after_change()

    def now(self) -> float:
        return self._now()

    def probe_soon(self, node: str) -> None:
        self.machine.probe_soon(node, self._now())
        self._after_change()

    def check_alive(self, nodes: Iterable[str]) -> None:
        self.machine.check_alive(nodes, self._now())
        self._after_change()

    def on_view_change(self, listener: ViewListener) -> None:
        self._listeners.append(listener)

    async def wait_settled(self) -> None:
        return None
