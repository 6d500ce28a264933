"""Ports for daemons started on this host by the soak, the benchmarks and the tests."""

from __future__ import annotations

import os
import random
import re
import socket
from pathlib import Path

# Ports this process has handed out. A port is only checked free, not held, until
# the daemon that gets it binds; a node's gossip and HTTP ports (or two nodes'
# ports) are often drawn before any of them starts, so a second draw must not
# return a number the first one gave (a node once got the same port for both).
_handed_out: set[int] = set()

_LOW = 20000


def free_port(rng: random.Random | None = None, host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` (gossip uses the same number for both).

    Drawn below the kernel's ephemeral range: a port the OS hands out for an outgoing
    connection or a service bound to port 0 must not take it between this check and
    the daemon's bind. Never the same port twice in one process, and under
    pytest-xdist each worker draws from its own slice of the range, so parallel
    test workers cannot pick the same port either. ``rng`` makes the draw
    reproducible (the soak's seed).
    """
    rng = rng or random.Random()
    low, high = _slice()
    for _ in range(1000):
        port = rng.randrange(low, high)
        if port in _handed_out:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                t.bind((host, port))
                u.bind((host, port))
        except OSError:
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port on {host} in {low}-{high - 1}")


def _slice() -> tuple[int, int]:
    """This process's share of the ports below the ephemeral range."""
    top = min(ephemeral_range()[0], 32768)
    match = re.fullmatch(r"gw(\d+)", os.environ.get("PYTEST_XDIST_WORKER", ""))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not match or workers <= 1:
        return _LOW, top
    width = (top - _LOW) // workers
    index = int(match.group(1)) % workers
    return _LOW + index * width, _LOW + (index + 1) * width


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for ports handed out automatically (Linux; a common default elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999
