"""What a simulation run is: its options, and the actions a scenario schedules, all plain data.

``SimOptions`` describes one run (size, length, seed, start, faults, the
scenario's counts of crashes, leaves and updates) and can print the
``rmap2p simulate`` command that replays it; the actions (``Crash``,
``Restart``, ``Leave``, ``MetaUpdate``, ``CrashRunners``) are scheduled by
time, next to the ones ``SimOptions`` derives from counts. ``derive_seed``
gives every purpose its own random stream, and simulated nodes get ids and
addresses of their real sizes. The event pump that runs all this is
``simulations.engine``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from membership import SwimConfig
from simulations.network import NetworkOptions

WORKER_MIX: tuple[tuple[str, int], ...] = (("gpu", 2), ("cpu", 4), ("storage", 2), ("edge", 2))
"""Worker types of simulated nodes, by weight (a node's type is a hash of its index)."""


def derive_seed(*parts: object) -> int:
    """A 64-bit seed from ``parts``: independent streams for every purpose and node."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "big")


def node_id_of(index: int) -> str:
    """16 hex characters, like a real node id (blake2b-64 of the public key), so sizes stay true."""
    return hashlib.blake2b(f"rmap2p-sim-node-{index}".encode(), digest_size=8).hexdigest()


def node_addr_of(index: int) -> tuple[str, int]:
    return (f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}", 7946)


# ---------------------------------------------------------------- actions as data


@dataclass(frozen=True, slots=True)
class Crash:
    node: int
    at: float


@dataclass(frozen=True, slots=True)
class Restart:
    """Start the node again with the same identity and address, joining through a random live node."""

    node: int
    at: float


@dataclass(frozen=True, slots=True)
class Leave:
    node: int
    at: float


@dataclass(frozen=True, slots=True)
class MetaUpdate:
    """The node changes its metadata (a fresh incarnation to disseminate); None: a random live node."""

    node: int | None
    at: float


@dataclass(frozen=True, slots=True)
class CrashRunners:
    """Crash every live node whose metadata lists ``service``: the allocator's worst case."""

    service: str
    at: float


Action = Crash | Restart | Leave | MetaUpdate | CrashRunners


@dataclass(frozen=True, slots=True)
class SimOptions:
    nodes: int = 50
    seconds: float = 60.0
    seed: int = 1
    profile: str = "lan"
    """``lan`` (memberlist DefaultLANConfig) or ``local``."""
    lifeguard: bool = True
    start: str = "cold"
    join_waves: int = 8
    join_interval_s: float = 1.0
    kills: int = 0
    """Nodes crashed mid-run, evenly spread over [kill_at_s, kill_at_s + kill_spread_s]."""
    kill_at_s: float | None = None
    """Default: a third into the run."""
    kill_spread_s: float | None = None
    """Default: a sixth of the run."""
    restart_after_s: float | None = None
    """Crashed nodes restart (same identity, fresh machine, incarnation 0) after this long."""
    leaves: int = 0
    leave_at_s: float | None = None
    leave_linger_s: float = 2.0
    """A leaving node keeps running this long to gossip its leave, as the daemon does."""
    updates: int = 20
    """Fresh metadata updates injected (one random live node each), evenly spread after convergence."""
    meta_interval_s: float = 0.0
    """Metadata heartbeat: each node's coarse load changes markedly every Exp(meta_interval_s)
    seconds and goes through ``update_load`` (the machine gossips a signed load summary at
    most once per ``load_gossip_period(N)``); 0 turns it off."""
    actions: tuple[Action, ...] = ()
    network: NetworkOptions = field(default_factory=NetworkOptions)
    sample_every_s: float | None = None
    """Time-series resolution (default: 1/200 of the run, at least 0.5 s)."""
    measure_from_s: float | None = None
    """Start of the bandwidth window (default: first convergence, or 0 for a warm start)."""
    allocator: bool = False
    """Run ``allocator.allocate`` on every node's view and let nodes adopt their row."""
    service_start_s: float = 5.0
    """With the allocator: how long a newly assigned service takes to report healthy."""
    swim: tuple[tuple[str, object], ...] = ()
    by_kind: bool = False
    """Also break the bandwidth down by message kind (decodes every datagram: slower)."""
    """Overrides of SwimConfig fields, as (name, value) pairs."""

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError("nodes must be >= 1")
        if self.seconds <= 0:
            raise ValueError("seconds must be > 0")
        if self.start not in ("cold", "warm"):
            raise ValueError("start must be cold or warm")
        if self.profile not in ("lan", "local"):
            raise ValueError("profile must be lan or local")
        if self.kills + self.leaves >= self.nodes:
            raise ValueError("kills + leaves must leave at least one node running")
        if self.join_waves < 1:
            raise ValueError("join_waves must be >= 1")

    def swim_config(self) -> SwimConfig:
        base = SwimConfig.local if self.profile == "local" else SwimConfig.lan
        return base(lifeguard=self.lifeguard, **dict(self.swim))

    def repro(self) -> str:
        """The ``rmap2p simulate`` command line that replays this run (actions given as data are not expressible)."""
        net = self.network
        lat = net.latency
        defaults = NetworkOptions()
        parts = [
            "python -m rmap2p simulate",
            f"--nodes {self.nodes}",
            f"--seconds {self.seconds:g}",
            f"--seed {self.seed}",
            f"--start {self.start}",
        ]
        if self.profile != "lan":
            parts.append(f"--profile {self.profile}")
        if not self.lifeguard:
            parts.append("--no-lifeguard")
        if self.start == "cold" and self.join_waves != 8:
            parts.append(f"--waves {self.join_waves}")
        if self.kills:
            parts.append(f"--kill {self.kills}")
            if self.kill_at_s is not None:
                parts.append(f"--kill-at {self.kill_at_s:g}")
            if self.kill_spread_s is not None:
                parts.append(f"--kill-spread {self.kill_spread_s:g}")
        if self.restart_after_s is not None:
            parts.append(f"--restart-after {self.restart_after_s:g}")
        if self.leaves:
            parts.append(f"--leave {self.leaves}")
        if self.updates != 20:
            parts.append(f"--updates {self.updates}")
        if self.meta_interval_s:
            parts.append(f"--meta-interval {self.meta_interval_s:g}")
        if self.allocator:
            parts.append("--allocator")
        if net.loss:
            parts.append(f"--loss {net.loss:g}")
        if net.duplicate:
            parts.append(f"--dup {net.duplicate:g}")
        if lat != defaults.latency:
            parts.append(
                f"--latency-ms {lat.base_s * 1000:g} --jitter-ms {lat.jitter_s * 1000:g} "
                f"--link-spread-ms {lat.link_spread_s * 1000:g}"
            )
        for p in net.partitions:
            end = "" if p.end_s is None else f"{p.end_s:g}"
            parts.append(f"--partition {p.fraction:g}@{p.start_s:g}-{end}{'' if p.symmetric else ':asym'}")
        for c in net.clogs:
            parts.append(f"--clog {c.count}@{c.start_s:g}-{c.end_s:g}")
        st = net.starvation
        k = st.how_many(self.nodes)
        if k:
            parts.append(f"--starved {st.fraction:g}" if st.fraction and st.count is None else f"--starved {k}")
            parts.append(f"--stall-mean {st.stall_mean_s:g} --run-mean {st.run_mean_s:g}")
            if st.timers_late:
                parts.append("--stall-timers")
        if net.seal_overhead != defaults.seal_overhead:
            parts.append("--no-seal")
        return " ".join(parts)
