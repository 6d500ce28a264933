"""Finding and staying in the pool: seeds, remembered edges, the join/rejoin/recontact loop.

Seeds, in order: the ``--join`` addresses, the bootstrap file
(``bootstrap_nodes.txt``), edge nodes remembered from earlier runs
(``<data dir>/known_edges.txt``) and peers found by mDNS. All are tried at once.

The loop (:class:`JoinLoop`):

- **alone** (no other active member): ``join`` every seed; if none answers,
  wait and retry with back-off (``rejoin_interval`` doubling up to 8×; at most
  2 s between rounds while mDNS may still hear a neighbour);
- **in a pool**: every ``recontact_interval``, push-pull with up to
  ``RECONTACT_LIMIT`` seeds that are not alive in our view: a bootstrap node on
  the far side of a healed partition, or a second pool that formed on the same
  LAN, merges without an operator.

``settled`` is set after the first round either way, so the service manager
does not allocate before it has seen the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from membership import EventKind, MemberEvent, Membership
from p2p import identity as ident
from p2p.discovery import (
    BootstrapError,
    find_bootstrap_file,
    format_host_port,
    load_bootstrap,
    parse_bootstrap,
    resolve,
)
from p2p.mdns import MdnsDiscovery

log = logging.getLogger(__name__)

Addr = tuple[str, int]

MAX_KNOWN_EDGES = 32
EDGES_FILE = "known_edges.txt"
RECONTACT_LIMIT = 3
"""Seeds pushed-pulled per recontact round: enough to bridge a partition, not a storm."""
BACKOFF_FACTOR_LIMIT = 8
MDNS_RETRY_CAP = 2.0
"""While alone with mDNS on, retry at least this often: a neighbour may appear any moment."""
FIRST_ROUND_MDNS_WAIT = (20, 0.15)
"""Before deciding we are alone at start, poll mDNS this many times, this many seconds apart."""
ANSWER_WAIT_CAP = 2.0


@dataclass(frozen=True, slots=True)
class JoinTimings:
    rejoin_interval: float = 5.0
    """While alone, retry every seed this often (with back-off up to 8×)."""
    recontact_interval: float = 30.0
    """Once in a pool, push-pull this often with seeds that are not alive in our view."""


def join_targets(alone: bool, seeds: list[Addr], live: set[Addr]) -> list[Addr]:
    """Whom to contact this round: every seed while alone, else a few seeds we do not see alive."""
    if alone:
        return list(seeds)
    return [a for a in seeds if a not in live][:RECONTACT_LIMIT]


def next_backoff(delay: float, rejoin_interval: float) -> float:
    """The wait after another unanswered round while alone: doubled, capped at 8× the interval."""
    return min(delay * 2, rejoin_interval * BACKOFF_FACTOR_LIMIT)


def alone_wait(delay: float, mdns: bool) -> float:
    return min(delay, MDNS_RETRY_CAP) if mdns else delay


# ------------------------------------------------------------------ known edges


class KnownEdges:
    """Edge nodes met before, newest first, kept in ``<data dir>/known_edges.txt`` for the next start."""

    def __init__(self, data_dir: Path, addrs: list[Addr]) -> None:
        self.data_dir = data_dir
        self.addrs = addrs[:MAX_KNOWN_EDGES]

    @classmethod
    def load(cls, data_dir: Path) -> KnownEdges:
        try:
            text = (data_dir / EDGES_FILE).read_text()
        except OSError:
            return cls(data_dir, [])
        try:
            return cls(data_dir, parse_bootstrap(text))
        except BootstrapError as exc:
            return cls(data_dir, list(getattr(exc, "addresses", ())))

    def remember(self, addrs: Iterable[Addr]) -> bool:
        """Put new addresses first (dropping the oldest beyond the limit); save if anything changed."""
        changed = False
        for addr in addrs:
            if addr in self.addrs:
                continue
            self.addrs = [addr, *self.addrs][:MAX_KNOWN_EDGES]
            changed = True
        if changed:
            self._save()
        return changed

    def _save(self) -> None:
        lines = ["# Edge nodes this node has seen; used as introducers at the next start."]
        lines += [format_host_port(h, p) for h, p in self.addrs]
        with contextlib.suppress(OSError):
            ident.atomic_write(self.data_dir / EDGES_FILE, ("\n".join(lines) + "\n").encode(), mode=0o644)


def edges_in(events: list[MemberEvent], machine: Membership) -> list[Addr]:
    """Gossip addresses of other members that these events show alive as edge nodes."""
    found: list[Addr] = []
    for ev in events:
        if ev.kind not in (EventKind.JOINED, EventKind.UPDATED, EventKind.ALIVE) or ev.node == machine.id:
            continue
        rec = machine.alive_record(ev.node)
        if rec is not None and rec.meta.worker_type == "edge" and rec.addr not in found:
            found.append(rec.addr)
    return found


# ------------------------------------------------------------------ seeds


class Seeds:
    """Collects and resolves the seed addresses (see the module docstring for the order)."""

    def __init__(
        self,
        join: Iterable[Addr],
        bootstrap_file: str | None,
        data_dir: Path,
        known_edges: KnownEdges,
        mdns: MdnsDiscovery | None,
        own: Addr,
        node_id: str,
    ) -> None:
        self.join = list(join)
        self.bootstrap_file = bootstrap_file
        self.data_dir = data_dir
        self.known_edges = known_edges
        self.mdns = mdns
        self.own = own
        self.node_id = node_id

    def describe(self) -> str:
        """Where the seeds come from, in words, for the start-up log a volunteer reads."""
        parts = []
        if self.join:
            parts.append("--join " + ", ".join(format_host_port(h, p) for h, p in self.join))
        try:
            path = find_bootstrap_file(self.bootstrap_file, self.data_dir)
            if path is not None:
                parts.append(f"bootstrap file {path} ({len(load_bootstrap(path))} edge nodes)")
        except (BootstrapError, OSError) as exc:
            parts.append(f"bootstrap file ({exc})")
        if self.known_edges.addrs:
            parts.append(f"{len(self.known_edges.addrs)} edge nodes met before")
        if self.mdns is not None:
            parts.append("mDNS on the LAN")
        return "; ".join(parts) or "nothing (no --join, no bootstrap file, no mDNS): a pool of one until a peer joins it"

    def configured(self) -> list[Addr]:
        seeds = list(self.join)
        try:
            path = find_bootstrap_file(self.bootstrap_file, self.data_dir)
            if path is not None:
                seeds += load_bootstrap(path)
        except BootstrapError as exc:
            # Bad lines are reported; the good ones are still worth trying.
            log.warning("node %s: bootstrap file: %s", self.node_id, exc)
            seeds += list(getattr(exc, "addresses", ()))
        except OSError as exc:
            log.warning("node %s: bootstrap file: %s", self.node_id, exc)
        seeds += self.known_edges.addrs
        if self.mdns is not None:
            seeds += self.mdns.peers()
        return seeds

    async def resolved(self) -> list[Addr]:
        """Every seed as IP addresses, without duplicates and without our own address."""
        out: list[Addr] = []
        for host, port in self.configured():
            try:
                for addr in await resolve(host, port):
                    if addr not in out and addr != self.own:
                        out.append(addr)
            except OSError as exc:
                log.warning("node %s: cannot resolve seed %s: %s", self.node_id, format_host_port(host, port), exc)
        return out


# ------------------------------------------------------------------ the loop


class JoinLoop:
    """Joins through the seeds, retries while alone, re-contacts absent seeds once in a pool.

    ``flush`` and ``now`` are the daemon's pump: after calling the machine the
    loop flushes its outboxes; :meth:`push_pull_answered` is called by the
    daemon when a push-pull reply arrives, to end a round's wait early.
    """

    def __init__(
        self,
        machine: Membership,
        seeds: Seeds,
        flush: Callable[[], None],
        now: Callable[[], float],
        settled: asyncio.Event,
        timings: JoinTimings,
        refused_by: Mapping[Addr, float] | None = None,
    ) -> None:
        self.refused_by = refused_by if refused_by is not None else {}
        """Seeds that answered they cannot authenticate us (filled by the daemon's stream exchanges)."""
        self.machine = machine
        self.seeds = seeds
        self.flush = flush
        self.now = now
        self.settled = settled
        self.timings = timings
        self._answered = asyncio.Event()

    def push_pull_answered(self) -> None:
        self._answered.set()

    async def _first_seeds(self) -> list[Addr]:
        seeds = await self.seeds.resolved()
        if not seeds and self.seeds.mdns is not None:
            # Give mDNS a moment to hear the neighbours before deciding we are alone.
            rounds, pause = FIRST_ROUND_MDNS_WAIT
            for _ in range(rounds):
                await asyncio.sleep(pause)
                seeds = await self.seeds.resolved()
                if seeds:
                    break
        return seeds

    async def run(self) -> None:
        machine = self.machine
        timings = self.timings
        delay = timings.rejoin_interval
        announced_alone = False
        announced_refused: list[Addr] = []
        log.info("node %s: discovering a pool through %s", machine.id, self.seeds.describe())
        seeds = await self._first_seeds()
        while True:
            alone = machine.num_active() <= 1
            live = {m.addr for m in machine.members() if not m.status.is_down}
            targets = join_targets(alone, seeds, live)
            if targets:
                for addr in targets:
                    if alone:
                        machine.join(addr, self.now())
                    else:
                        machine.push_pull(addr, self.now())
                self.flush()
                self._answered.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._answered.wait(), min(ANSWER_WAIT_CAP, delay))
            self.settled.set()
            if machine.num_active() > 1:
                if alone:
                    log.info("node %s joined a pool of %d", machine.id, machine.num_active())
                delay = timings.rejoin_interval
                await asyncio.sleep(timings.recontact_interval)
            else:
                refused = [a for a in seeds if a in self.refused_by]
                if refused and refused != announced_refused:
                    announced_refused = refused
                    log.warning(
                        "node %s: could not authenticate with seeds %s (they cannot read our packets: a different "
                        "keyring or cluster name?); running as a pool of one and still trying",
                        machine.id, ", ".join(format_host_port(h, p) for h, p in refused),
                    )
                    announced_alone = True
                elif not announced_alone:
                    log.warning(
                        "node %s: no peer answered (%s); running as a pool of one and still looking",
                        machine.id, ", ".join(format_host_port(h, p) for h, p in seeds) or "no seeds configured",
                    )
                    announced_alone = True
                await asyncio.sleep(alone_wait(delay, self.seeds.mdns is not None))
                delay = next_backoff(delay, timings.rejoin_interval)
            seeds = await self.seeds.resolved()
