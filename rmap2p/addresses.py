"""Which addresses a node binds and which it tells peers: gossip and HTTP.

Two rules, both about reaching a node from *another host*:

- The HTTP port follows the gossip bind host unless ``--http`` says
  otherwise: ``--bind 10.0.0.5:7946`` serves HTTP on ``10.0.0.5:8080``, a
  wildcard bind (``0.0.0.0``, ``::``) serves HTTP on the same wildcard. A
  node is thereby reachable by its peers' gateways with default flags.
- What peers get is the *reachable* address: the advertised gossip host
  (``--advertise``, or the detected one behind a wildcard) with the HTTP port,
  whenever the HTTP bind host is a wildcard or the gossip bind host. An
  explicit other host (``--http 127.0.0.1:8080``) is advertised as is, and
  :func:`loopback_http_problem` says when that cannot work.

Everything here is pure except :func:`advertise_host`, which asks the kernel
for the source address of its default route.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterable

from p2p.discovery import format_host_port

Addr = tuple[str, int]

DEFAULT_HTTP_PORT = 8080
WILDCARD_HOSTS = frozenset({"0.0.0.0", "", "::"})


def default_http_bind(gossip_bind: Addr) -> Addr:
    """The HTTP bind address when ``--http`` is not given: the gossip bind host, port 8080."""
    return (gossip_bind[0], DEFAULT_HTTP_PORT)


def advertised_http(http_bind: Addr, gossip_bind_host: str, gossip_addr: Addr | None) -> str:
    """``host:port`` peers should use for our HTTP port (the node's metadata ``http``).

    A wildcard bind or one on the gossip bind host is reached where peers
    reach our gossip (``gossip_addr``, the advertised address); any other
    explicit host is advertised as bound.
    """
    host, port = http_bind
    if gossip_addr is not None and (host in WILDCARD_HOSTS or host == gossip_bind_host):
        host = gossip_addr[0]
    return format_host_port(host, port)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return host == "localhost"


def loopback_http_problem(http_host: str, member_hosts: Iterable[str], own_host: str) -> str | None:
    """A member host that cannot reach our HTTP port because it is bound to loopback, or None.

    ``member_hosts`` are the gossip hosts of the other live members; members on
    a loopback address or on our own gossip host (``own_host``) share our
    machine and reach a loopback port fine.
    """
    if not is_loopback(http_host):
        return None
    return next((h for h in sorted(set(member_hosts)) if not is_loopback(h) and h != own_host), None)


def wildcard_for(host: str) -> str:
    """The wildcard bind of ``host``'s address family, as ``--http`` takes it."""
    return "[::]" if ":" in host else "0.0.0.0"


def advertise_host(bind_host: str) -> str:
    """The address peers should use when we bind a wildcard: the one our default route uses.

    ``::`` asks the IPv6 routes (an IPv6 pool); ``0.0.0.0`` the IPv4 ones.
    """
    if bind_host not in WILDCARD_HOSTS:
        return bind_host
    family, probe, fallback = (
        (socket.AF_INET6, "2001:db8::1", "::1") if bind_host == "::" else (socket.AF_INET, "192.0.2.1", "127.0.0.1")
    )
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as s:
        # connect() on UDP sends nothing; it only asks the kernel which source address it would use.
        s.connect((probe, 9))
        return str(s.getsockname()[0])
    return fallback
