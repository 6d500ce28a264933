"""The daemon's ``Node`` as ``services/`` sees it: an adapter to ``services.handle.PoolHandle``."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable
from pathlib import Path

from membership import Load, Membership, MemberView, NodeMeta
from rmap2p.daemon import Node
from services.engine_choice import Gpu, gpus_from
from services.handle import RequestCounter, ViewListener
from services.route_auth import Signer

POOL_SECRET_CONTEXT = b"rmap2p pool secret v1"


class NodeHandle:
    """``PoolHandle`` over a running ``Node`` (every property needs the node started)."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def _machine(self) -> Membership:
        machine = self._node.machine
        if machine is None:
            raise RuntimeError("node not started: services/ used it too early")
        return machine

    @property
    def node_id(self) -> str:
        return self._machine().id

    @property
    def meta(self) -> NodeMeta:
        return self._machine().meta

    @property
    def load(self) -> Load:
        return self._machine().load

    @property
    def leaving(self) -> bool:
        machine = self._node.machine
        return machine is None or machine.leaving

    @property
    def service_host(self) -> str:
        host, _ = self._node.http_addr or self._node.config.http
        return host

    @property
    def gpus(self) -> tuple[Gpu, ...]:
        hardware = self._node.hardware
        return gpus_from(hardware.gpus) if hardware is not None else ()

    @property
    def identity(self) -> Signer:
        identity = self._node.identity
        if identity is None:
            raise RuntimeError("node not started: services/ used it too early")
        return identity

    @property
    def requests(self) -> RequestCounter:
        return self._node.requests

    @property
    def data_dir(self) -> Path:
        return self._node.config.data_dir.expanduser()

    @property
    def pool_secret(self) -> bytes | None:
        """Derived from the keyring's primary key (never the key itself); None without a keyring.

        Storage passwords are derived from it once and then kept in their
        files, so a key rotation does not change a running database's password.
        """
        keyring = self._node.keyring
        if keyring is None:
            return None
        return hmac.new(keyring.primary, POOL_SECRET_CONTEXT, hashlib.sha256).digest()

    def members(self) -> list[MemberView]:
        return self._node.members()

    def update_meta(self, change: Callable[[NodeMeta], NodeMeta]) -> None:
        self._node.update_meta(change)

    def now(self) -> float:
        return self._node._now()

    def probe_soon(self, node: str) -> None:
        self._node.probe_soon(node)

    def check_alive(self, nodes: Iterable[str]) -> None:
        self._node.check_alive(nodes)

    def on_view_change(self, listener: ViewListener) -> None:
        self._node.on_view_change(listener)

    async def wait_settled(self) -> None:
        await self._node.ready.wait()
        await self._node.settled.wait()
