"""The reachability check's sockets: the edge that probes back, the node that asks (issue 16).

The protocol and the verdict are in ``membership/reach.py``; this module
moves its bytes. Both probes of an edge leave from *fresh* sockets (an
ephemeral UDP socket, a new TCP connection), never from the gossip socket:
a home router lets in what comes from the address and port its host last
sent to, so a probe from the edge's gossip port could pass a NAT that
nothing else passes. Datagrams and frames are sealed with the cluster's
keyring like gossip (``udp_aad``/``stream_aad``), so a probe opens only in
the pool it was meant for.

Bounded: an edge probes for at most ``PROBE_TIMEOUT`` seconds per check and
the daemon runs at most ``MAX_CHECKS_IN_FLIGHT`` at once; a node remembers
the nonces of at most ``ProbeInbox.limit`` checks of its own, and ignores
probes for nonces it does not expect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from membership import wire
from membership.errors import RemoteProtocolError
from membership.messages import Addr, ReachCheck, ReachProbe, ReachResult
from membership.reach import EdgeAnswer, Reachability, judge
from p2p.discovery import format_host_port
from p2p.keyring import NullSealer, Sealer
from p2p.stream import StreamError, request, stream_aad
from p2p.transport import udp_aad

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 3.0
"""Seconds an edge gives its TCP probe (connect, frame, echo)."""
UDP_COPIES = 3
"""The UDP probe is sent this many times, ``UDP_SPACING`` apart: one lost datagram must not decide."""
UDP_SPACING = 0.1
CHECK_TIMEOUT = 8.0
"""Seconds a node waits for an edge's answer (the edge's probing plus two round trips)."""
ARRIVAL_GRACE = 1.0
"""After the edge answered, how long its UDP probe may still be on its way."""
MAX_CHECKS_IN_FLIGHT = 8


@dataclass
class _Expected:
    seen: set[str]
    both: asyncio.Event


class ProbeInbox:
    """The nonces of this node's checks in flight, and by which way ("udp", "tcp") their probes came."""

    def __init__(self, limit: int = 16) -> None:
        self.limit = limit
        self._expected: dict[bytes, _Expected] = {}

    def expect(self, nonce: bytes) -> None:
        if len(self._expected) >= self.limit:
            # Oldest first out: a check that old has timed out already.
            self._expected.pop(next(iter(self._expected)))
        self._expected[nonce] = _Expected(set(), asyncio.Event())

    def arrived(self, probe: ReachProbe, channel: str) -> bool:
        """Record a probe that came in by ``channel``; False (ignored) if we did not ask for it."""
        entry = self._expected.get(probe.nonce)
        if entry is None:
            return False
        entry.seen.add(channel)
        if {"udp", "tcp"} <= entry.seen:
            entry.both.set()
        return True

    def seen(self, nonce: bytes) -> set[str]:
        entry = self._expected.get(nonce)
        return set(entry.seen) if entry else set()

    async def wait_both(self, nonce: bytes, timeout: float) -> None:
        entry = self._expected.get(nonce)
        if entry is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await entry.both.wait()

    def forget(self, nonce: bytes) -> None:
        self._expected.pop(nonce, None)


# ------------------------------------------------------------------ the edge


async def probe_back(
    check: ReachCheck,
    edge: str,
    observed: Addr,
    *,
    bind_host: str,
    sealer: Sealer | None = None,
    cluster: str = "rmap2p",
    timeout: float = PROBE_TIMEOUT,
    max_frame: int = 65536,
) -> ReachResult:
    """Probe ``check.host:check.port`` from fresh sockets (UDP and TCP) and say what happened.

    ``observed`` is where the check came from; ``bind_host`` is the edge's
    gossip bind host, so the UDP probe leaves from the edge's own address.
    """
    sealer = sealer if sealer is not None else NullSealer()
    target = (check.host, check.port)
    probe = ReachProbe(edge, check.nonce)
    udp_err, tcp_err = await asyncio.gather(
        _udp_probe(target, sealer.seal(wire.encode_datagram([probe]), udp_aad(cluster)), bind_host),
        _tcp_probe(target, probe, sealer, cluster, timeout, max_frame),
    )
    error = "; ".join(e for e in (f"udp: {udp_err}" if udp_err else "", f"tcp: {tcp_err}" if tcp_err else "") if e)
    return ReachResult(edge, check.nonce, not udp_err, not tcp_err, error, observed[0], observed[1])


async def _udp_probe(target: Addr, payload: bytes, bind_host: str) -> str:
    """Send ``payload`` to ``target`` from a fresh UDP socket; "" when sent, else the error."""
    v6 = ":" in target[0]
    family = socket.AF_INET6 if v6 else socket.AF_INET
    src = bind_host if (":" in bind_host) == v6 and bind_host not in ("", "::", "0.0.0.0") else ("::" if v6 else "0.0.0.0")
    loop = asyncio.get_running_loop()
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            s.bind((src, 0))
            for i in range(UDP_COPIES):
                if i:
                    await asyncio.sleep(UDP_SPACING)
                await loop.sock_sendto(s, payload, target)
    except OSError as exc:
        return exc.strerror or str(exc)
    return ""


async def _tcp_probe(target: Addr, probe: ReachProbe, sealer: Sealer, cluster: str, timeout: float, max_frame: int) -> str:
    """Open a new TCP connection to ``target``, send the probe, expect it echoed; "" on success."""
    try:
        reply = await _exchange(target, probe, sealer, cluster, timeout, max_frame)
    except StreamError as exc:
        return str(exc)
    echoed = wire.reach_frame_of(reply)
    if not isinstance(echoed, ReachProbe) or echoed.nonce != probe.nonce:
        return "the peer there did not echo our probe"
    return ""


async def _exchange(
    target: Addr, msg: ReachCheck | ReachProbe, sealer: Sealer | None, cluster: str, timeout: float, max_frame: int
) -> bytes:
    """Send one reachability frame on a fresh stream connection to ``target``; the reply frame (b"" if none)."""
    reply = await request(target, wire.encode_frame(msg), sealer, timeout=timeout, max_frame=max_frame, aad=stream_aad(cluster))
    return reply or b""


# ------------------------------------------------------------------ the node


async def ask_edge(
    edge: str,
    edge_addr: Addr,
    me: str,
    advertised: Addr,
    inbox: ProbeInbox,
    *,
    sealer: Sealer | None = None,
    cluster: str = "rmap2p",
    timeout: float = CHECK_TIMEOUT,
    grace: float = ARRIVAL_GRACE,
    max_frame: int = 65536,
) -> EdgeAnswer:
    """Ask one edge to reach us back at ``advertised``; what arrived decides, not what it says."""
    nonce = secrets.token_bytes(wire.NONCE_BYTES)
    inbox.expect(nonce)
    try:
        check = ReachCheck(me, nonce, advertised[0], advertised[1])
        try:
            result = wire.decode_frame(await _exchange(edge_addr, check, sealer, cluster, timeout, max_frame))
        except (StreamError, RemoteProtocolError) as exc:
            return EdgeAnswer(edge, False, error=str(exc))
        if not isinstance(result, ReachResult) or result.nonce != nonce:
            return EdgeAnswer(edge, False, error="the edge answered something else")
        await inbox.wait_both(nonce, grace)
        seen = inbox.seen(nonce)
        observed = (result.observed_host, result.observed_port) if result.observed_port else None
        return EdgeAnswer(edge, True, "udp" in seen, "tcp" in seen, observed, result.error)
    finally:
        inbox.forget(nonce)


async def check_reachability(
    edges: Sequence[tuple[str, Addr]],
    advertised: Addr,
    me: str,
    inbox: ProbeInbox,
    *,
    sealer: Sealer | None = None,
    cluster: str = "rmap2p",
    timeout: float = CHECK_TIMEOUT,
    grace: float = ARRIVAL_GRACE,
) -> tuple[Reachability, list[EdgeAnswer]]:
    """Ask every edge of ``edges`` (node id, gossip address) at once; the verdict and each answer.

    No edges: the verdict is unknown (membership/reach.py: treated as direct).
    """
    answers = list(
        await asyncio.gather(*(
            ask_edge(e, addr, me, advertised, inbox, sealer=sealer, cluster=cluster, timeout=timeout, grace=grace)
            for e, addr in edges
        ))
    )
    for a in answers:
        if not a.answered:
            log.debug("node %s: edge %s did not answer the reachability check: %s", me, a.edge, a.error)
        elif a.error:
            log.debug("node %s: edge %s could not reach %s: %s", me, a.edge, format_host_port(*advertised), a.error)
    return judge(advertised, answers), answers
