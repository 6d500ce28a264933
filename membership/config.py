"""Membership settings: one frozen dataclass, every knob documented.

Defaults are memberlist's LAN profile (``DefaultLANConfig``); ``local()`` is
memberlist's ``DefaultLocalConfig`` (one machine, loopback); ``sim()`` is the
LAN profile with the checks a simulator wants. Formulas that use these values
live next to the code that applies them (``suspicion.py``, ``broadcast.py``,
``awareness.py``) and are quoted here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from membership.errors import ConfigError

LOAD_SUMMARY_BYTES = 104
"""A load summary's size on the wire with its piggyback framing (tests/test_wire.py checks it)."""


@dataclass(frozen=True, slots=True)
class SwimConfig:
    probe_interval: float = 1.0
    """Seconds between probes of one member; stretched by awareness (``× (score + 1)``)."""
    probe_timeout: float = 0.5
    """Seconds to wait for a direct ack before asking ``indirect_checks`` members; also stretched."""
    indirect_checks: int = 5
    """k: members asked to ping-req a target that missed its direct ack (memberlist: 3). Each
    relay path is four datagrams, lost with probability 0.34 at 10 % loss; five relays instead of
    three cut false suspicions ten-fold (0.024 % → 0.0025 % of probe rounds, 100 nodes, 20 min),
    and every false suspicion costs the pool a suspicion and a refutation gossiped to all N
    nodes: at 1,000 nodes and 10 % loss that was two thirds of the traffic. The extra ping-reqs
    go out only when a direct ack was missed (never without loss)."""
    direct_retry: bool = True
    """At the ack timeout, ping the target directly once more alongside the indirect checks
    (not in memberlist): halves false suspicions' main cause on lossy links for one datagram."""
    tcp_fallback: bool = True
    """Also ping an unresponsive target over TCP (memberlist's fallback): survives heavy UDP loss."""
    probe_soon_gap: float = 5.0
    """``probe_soon`` moves a member to the head of the probe order at most once per this many
    seconds: evidence from outside the protocol (a driver's refused connects) can speed a probe
    up, but never multiply probes of a live member beyond one extra per gap."""
    nack_ratio: float = 0.8
    """An intermediary nacks if the target has not acked after ``nack_ratio * probe_timeout``."""
    retransmit_mult: int = 4
    """Each update is sent ``retransmit_mult * ceil(log10(N + 1))`` times by every node."""
    suspicion_mult: float = 4.0
    """Suspicion timeout ``= suspicion_mult * max(1, log10(N)) * probe_interval`` at least."""
    suspicion_max_mult: float = 6.0
    """Suspicion starts at ``suspicion_max_mult`` × the base and shrinks with confirmations."""
    gossip_interval: float = 0.2
    """Seconds between gossip ticks; a tick sends only when updates are queued."""
    gossip_nodes: int = 3
    """Fanout of each gossip tick."""
    ring_successors: int = 2
    """After news, the next gossip tick goes to this many successors on the ring of sorted
    member ids (in place of random targets; not in memberlist): every node then has neighbours
    that forward everything new to it, which closes the e^-R chance of missing an update."""
    gossip_to_dead: float = 30.0
    """Keep gossiping to members dead for less than this, so they can refute."""
    push_pull_interval: float = 30.0
    """Anti-entropy period with one random member; scaled with N above ``push_pull_scale_threshold``."""
    push_pull_scale_threshold: int = 32
    """memberlist's pushPullScale: ``interval * ceil(log2(N) - log2(threshold))`` above it."""
    join_follow_up: float = 5.0
    """After a join, push-pull with a random member within this many seconds, then at doubling
    gaps up to the normal period: the seed may not yet know everyone who joined with us, and a
    joiner re-gossips nothing it learns from its seed (that would make each join cost N
    broadcasts)."""
    join_seed_follow_up: float = 0.25
    """After a join, push-pull once more with the seed itself within this many seconds (0: never):
    nodes that joined through the same seed at the same moment reached it just after our join
    reply left, so the seed is the one member sure to know them all by then. Without it a wave
    of 15 simultaneous joiners of a 16-node pool waited for gossip and the first random catch-up
    (median 1.4 s, up to 3.8 s in the simulator; 4.4 s and 13 s with the local profile)."""
    join_announce: int = 32
    """Once joined to a pool of at most this many others, send our alive straight to each of them
    (0: never): the pool learns of a join from the seed's gossip, and when a dozen nodes join
    within a second the seed's few datagrams a tick carry each of them to only a few members, so
    a member could miss one until its next catch-up (3 s in 16 real daemons on one host). At most
    32 datagrams (~10 kB) a join; a bigger pool relies on gossip and catch-ups as before."""
    reconnect_interval: float = 30.0
    """Every this many seconds push-pull with one random dead (not left) member: heals partitions."""
    reap_after: float = 4 * 3600.0
    """Dead and left members are forgotten after this many seconds."""
    awareness_max_multiplier: int = 8
    """Lifeguard: the awareness score ranges over ``[0, max - 1]``."""
    lifeguard: bool = True
    """False turns off awareness, suspicion acceleration and nacks (plain SWIM, for comparison)."""
    max_datagram: int = 1400
    """Largest datagram we build (before sealing)."""
    max_members: int = 100_000
    """Refuse to learn of more members than this (bounds memory against hostile joins)."""
    max_queued_updates: int = 64
    """Bound on the joins and metadata updates in the gossip queue; beyond it the most-sent of
    them is dropped (anti-entropy carries them too). Suspicions, deaths and refutations are never
    dropped and not counted (see broadcast.py). A node sends at most ``gossip_nodes`` datagrams
    (~15 alives) a tick, so a full queue is 12 retransmits × 64 / 15 ≈ 50 ticks ≈ 10 s of backlog at 1,000
    nodes: after a join storm that backlog, not the joins, is what a deeper queue costs (256:
    about 6 kB/s per node for a minute after a 1,000-node cold start; 64: 1.2)."""
    max_pending_probes: int = 1024
    """Bound on outstanding ping-req relays we serve for others."""
    max_stream_frame: int = 4 * 1024 * 1024
    """Largest push-pull frame we build or accept."""
    load_gossip_interval: float = 30.0
    """A coarse load summary is re-gossiped at most this often, and only when it changed markedly."""
    load_gossip_budget: float = 80.0
    """Bytes/s per node that load summaries may cost the pool at worst (every node changing
    markedly all the time): stretches the interval above with N (``load_gossip_period``)."""
    load_retransmits: int = 4
    """Times each node forwards a load summary: it reaches ~98 % of nodes (a hint, not news
    every node must have), for a quarter of an alive's 4·log10(N) at 1,000 nodes."""
    load_change_threshold: float = 25.0
    """Percentage points of CPU/GPU (or active requests) that count as a marked change."""
    meta_max_bytes: int = 1024
    """Largest encoded node metadata we send or accept."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and value < 0:
                raise ConfigError(f"{f.name} must be >= 0, got {value}")
        if self.probe_interval <= 0 or self.gossip_interval <= 0:
            raise ConfigError("probe_interval and gossip_interval must be > 0")
        if not 0 < self.probe_timeout <= self.probe_interval:
            raise ConfigError("probe_timeout must be in (0, probe_interval]")
        if not 0 < self.nack_ratio < 1:
            raise ConfigError("nack_ratio must be in (0, 1)")
        if self.suspicion_max_mult < 1:
            raise ConfigError("suspicion_max_mult must be >= 1")
        if self.awareness_max_multiplier < 1:
            raise ConfigError("awareness_max_multiplier must be >= 1")
        if self.max_datagram < 512:
            raise ConfigError("max_datagram must be >= 512")

    @classmethod
    def lan(cls, **overrides: object) -> SwimConfig:
        """memberlist's DefaultLANConfig."""
        return replace(cls(), **overrides)  # type: ignore[arg-type]

    @classmethod
    def local(cls, **overrides: object) -> SwimConfig:
        """memberlist's DefaultLocalConfig: every peer on one host or a fast LAN segment."""
        base = cls(
            probe_timeout=0.2,
            indirect_checks=1,
            retransmit_mult=2,
            suspicion_mult=3.0,
            gossip_interval=0.1,
            gossip_to_dead=15.0,
            push_pull_interval=15.0,
            reconnect_interval=10.0,
        )
        return replace(base, **overrides)  # type: ignore[arg-type]

    @classmethod
    def sim(cls, **overrides: object) -> SwimConfig:
        """The LAN profile, as the simulator measures it."""
        return cls.lan(**overrides)

    def load_gossip_period(self, n: int) -> float:
        """Shortest time between one node's load summaries in a pool of ``n``.

        ``max(load_gossip_interval, n * load_retransmits * LOAD_SUMMARY_BYTES / load_gossip_budget)``:
        every summary is forwarded ``load_retransmits`` times by every node.
        """
        if self.load_gossip_budget <= 0:
            return self.load_gossip_interval
        stretched = n * self.load_retransmits * LOAD_SUMMARY_BYTES / self.load_gossip_budget
        return max(self.load_gossip_interval, stretched)

    def push_pull_period(self, n: int) -> float:
        """``push_pull_interval * ceil(log2(n) - log2(threshold))`` for ``n > threshold``."""
        if n <= self.push_pull_scale_threshold:
            return self.push_pull_interval
        mult = math.ceil(math.log2(n) - math.log2(self.push_pull_scale_threshold))
        return self.push_pull_interval * max(1, mult)
