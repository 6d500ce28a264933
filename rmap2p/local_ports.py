"""Ports for daemons started on this host by the soak, the benchmarks and the tests."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def free_port(rng: random.Random | None = None, host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` (gossip uses the same number for both).

    Drawn below the kernel's ephemeral range: a port the OS hands out for an outgoing
    connection or a service bound to port 0 must not take it between this check and
    the daemon's bind. ``rng`` makes the draw reproducible (the soak's seed).
    """
    rng = rng or random.Random()
    low, _ = ephemeral_range()
    for _ in range(500):
        port = rng.randrange(20000, min(low, 32768))
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                t.bind((host, port))
                u.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no free port on {host}")


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for ports handed out automatically (Linux; a common default elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999
