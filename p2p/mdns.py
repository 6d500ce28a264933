"""Finding pool members on the local network with mDNS (zeroconf).

Every node registers ``<node id>._rmap2p._udp.local.`` with its gossip
address and TXT properties ``id``, ``cluster`` and ``v`` (protocol version),
and browses the same type. Peers of another cluster name are ignored here;
peers of another key could not talk to us anyway. Discovery only proposes
addresses: the daemon joins through them with an ordinary push-pull, so mDNS
can never inject a member that does not answer the protocol.

Resolving a found service is done in a task owned by the discovery object
(bounded in number), never in zeroconf's callback, which must not block.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from p2p.discovery import format_host_port

log = logging.getLogger(__name__)

SERVICE_TYPE = "_rmap2p._udp.local."
RESOLVE_TIMEOUT_MS = 3000
MAX_PEERS = 1024
MAX_RESOLVING = 16

Addr = tuple[str, int]


class MdnsDiscovery:
    def __init__(self, node_id: str, cluster: str, addr: Addr, version: int = 1) -> None:
        self.node_id = node_id
        self.cluster = cluster
        self.addr = addr
        self.version = version
        self._azc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._peers: dict[str, Addr] = {}
        self._resolving: set[asyncio.Task[None]] = set()
        self.ignored_other_cluster = 0

    def peers(self) -> list[Addr]:
        """Gossip addresses of same-cluster nodes seen on the LAN (not us), in a stable order."""
        return [self._peers[k] for k in sorted(self._peers)]

    async def start(self) -> None:
        host, port = self.addr
        addresses = [socket.inet_aton(host)] if _is_ipv4(host) else None
        self._azc = AsyncZeroconf(ip_version=IPVersion.V4Only)
        self._info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{self.node_id}.{SERVICE_TYPE}",
            port=port,
            addresses=addresses,
            properties={"id": self.node_id, "cluster": self.cluster, "v": str(self.version)},
            server=f"rmap2p-{self.node_id}.local.",
        )
        await self._azc.async_register_service(self._info, allow_name_change=False)
        self._browser = AsyncServiceBrowser(self._azc.zeroconf, SERVICE_TYPE, handlers=[self._on_change])
        log.info("node %s: mDNS advertising %s as %s", self.node_id, format_host_port(host, port), SERVICE_TYPE)

    async def close(self) -> None:
        for task in list(self._resolving):
            task.cancel()
        for task in list(self._resolving):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._azc is not None:
            if self._info is not None:
                with contextlib.suppress(Exception):
                    await self._azc.async_unregister_service(self._info)
            await self._azc.async_close()
        self._azc = self._browser = self._info = None

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        key = name.split(".", 1)[0]
        if key == self.node_id:
            return
        if state_change is ServiceStateChange.Removed:
            self._peers.pop(key, None)
            return
        if len(self._resolving) >= MAX_RESOLVING or len(self._peers) >= MAX_PEERS:
            return
        task = asyncio.get_running_loop().create_task(self._resolve(service_type, name, key))
        self._resolving.add(task)
        task.add_done_callback(self._resolving.discard)

    async def _resolve(self, service_type: str, name: str, key: str) -> None:
        if self._azc is None:
            return
        info = AsyncServiceInfo(service_type, name)
        try:
            found = await info.async_request(self._azc.zeroconf, RESOLVE_TIMEOUT_MS)
        except Exception as exc:  # noqa: BLE001 - a peer's bad record must not end discovery
            log.debug("node %s: mDNS resolve of %s failed: %s", self.node_id, name, exc)
            return
        if not found or not info.port:
            return
        props = {k.decode(errors="replace"): (v or b"").decode(errors="replace") for k, v in info.properties.items()}
        if props.get("cluster") != self.cluster:
            self.ignored_other_cluster += 1
            log.debug("node %s: ignoring %s of cluster %r", self.node_id, name, props.get("cluster"))
            return
        addrs = info.parsed_addresses(IPVersion.V4Only)
        if not addrs:
            return
        addr = (addrs[0], info.port)
        if key not in self._peers:
            log.info("node %s: mDNS found %s at %s", self.node_id, key, format_host_port(*addr))
        self._peers[key] = addr


def _is_ipv4(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv4Address)
    except ValueError:
        return False
