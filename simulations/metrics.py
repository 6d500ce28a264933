"""What a simulation run measures, computed incrementally from the machines' own events.

The engine reports four things here: a node came up, a node went down (crash,
or the moment it announced a leave), the ``MemberEvent``s each machine emits,
and the fresh updates it injected. Everything else is derived:

- **Convergence.** ``seen[o]`` counts the live members that live observer
  ``o`` lists as alive; since ``seen[o] <= L - 1`` for ``L`` live nodes, the
  view is converged exactly when ``sum(seen) == L * (L - 1)``. The sum is kept
  up to date in O(1) per event (O(N) per node up or down), so checking
  convergence after every event costs nothing at 10,000 nodes.
- **Dissemination.** For each fresh update (a node's new incarnation) the
  time until every live node other than its origin holds that incarnation
  or newer, in gossip rounds ``ceil(elapsed / gossip_interval)``.
- **Detection.** For each crash, when each live observer that knew the node
  declares it dead: the first, the median and the last.
- **False positives.** A ``suspect`` raised by an observer's own failed probe of
  a node that is running (not crashed, not leaving) is a false suspicion; a ``dead``
  about a running node, for an incarnation of its current life, is a false
  death, counted once per (member, incarnation) however many observers
  declare it.
- **The event log digest.** Every event, fault and injected update, with its
  time, is folded into a blake2b digest: the determinism check compares it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum

from membership import EventKind, MemberEvent, Status


class UpdateCause(StrEnum):
    """Why a node announced a new incarnation whose spread is timed (written into the event log)."""

    INJECTED = "injected"
    """A metadata update the scenario injected."""
    HEARTBEAT = "heartbeat"
    """A load change that, through ``update_load``, became a new incarnation."""


_DOWN_KINDS = {EventKind.DEAD: Status.DEAD, EventKind.LEFT: Status.LEFT}
_HASH_BATCH = 4096


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) by linear interpolation between ranks; None when empty."""
    if not values:
        return None
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def gossip_rounds(elapsed: float, gossip_interval: float) -> int:
    """Whole gossip ticks needed to cover ``elapsed`` seconds (a tiny epsilon absorbs float noise)."""
    return max(0, math.ceil(elapsed / gossip_interval - 1e-9))


@dataclass(slots=True)
class _Update:
    origin: int
    incarnation: int
    start: float
    cause: UpdateCause
    got: dict[int, float] = field(default_factory=dict)


@dataclass(slots=True)
class _Kill:
    subject: int
    at: float
    waiting: set[int]
    times: list[float] = field(default_factory=list)
    expected: int = 0


@dataclass(slots=True)
class Sample:
    """One point of the membership-over-time series."""

    t: float
    live: int
    seen_fraction: float
    """Share of (live observer, live member) pairs that the observer lists as alive."""
    suspect_views: int
    dead_views: int


@dataclass(slots=True)
class Figures:
    """The figures of one run; ``to_json()`` is what ``simulate --json`` prints."""

    nodes: int
    seed: int
    sim_s: float
    wall_s: float
    start: str
    profile: str
    lifeguard: bool
    loss: float
    starved: int
    join_convergence_s: float | None
    dissemination_rounds_p50: float | None
    dissemination_rounds_p99: float | None
    dissemination_rounds_max: int | None
    dissemination_samples: int
    dissemination_incomplete: int
    detection_first_s: float | None
    detection_p50_s: float | None
    detection_all_s: float | None
    """Crash until the last live observer declares it dead; like first and p50, the median over
    the crashes of the run (``detection_all_max_s`` is the worst crash)."""
    detection_all_max_s: float | None
    kills: int
    detection_incomplete: int
    false_suspicions: int
    """Failed probes of a running node that raised a suspicion (what the 0.1 % target counts)."""
    imported_suspicions: int
    """Suspicions of running nodes taken over from a push-pull peer's dead/suspect verdict."""
    probe_rounds: int
    false_suspicion_rate: float | None
    false_deaths: int
    false_deaths_healthy: int
    """False deaths of nodes that are neither crashed nor starved (Lifeguard's "healthy members")."""
    false_death_views: int
    bytes_per_node_per_s: float | None
    udp_bytes_per_node_per_s: float | None
    tcp_bytes_per_node_per_s: float | None
    msgs_per_node_per_period: float | None
    measure_from_s: float
    partition_merge_s: float | None
    refutations: int
    events: int
    events_hash: str
    sim_speed: float | None
    services_covered_s: float | None = None
    services_moved: int | None = None
    uncovered_at_end: int | None = None
    bytes_by_kind: dict[str, float] | None = None
    """With ``by_kind``: bytes/node/s sent in the bandwidth window, by message kind (sealed;
    UDP headers and seals under their own key, each TCP frame under its request's kind)."""
    stuck_deadlines: int = 0
    """Ticks after which a machine's deadline was still due (<= now): a protocol bug, 0 in every run.
    Such a machine is not re-armed until its next input (re-arming at once would spin)."""

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float):
                out[key] = round(value, 6)
            elif isinstance(value, dict):
                out[key] = {k: round(v, 3) for k, v in value.items()}
        return out


class Recorder:
    """Incremental bookkeeping of one run. The engine owns it and feeds it in event order."""

    def __init__(
        self,
        n: int,
        ids: Sequence[str],
        status_of: Callable[[int, str], Status | None],
        gossip_interval: float,
        update_timeout_s: float = 60.0,
        on_first_converged: Callable[[float], None] | None = None,
    ) -> None:
        self.n = n
        self.ids = list(ids)
        self.index = {node_id: i for i, node_id in enumerate(ids)}
        self._status_of = status_of
        self.gossip_interval = gossip_interval
        self.update_timeout_s = update_timeout_s
        self._on_first_converged = on_first_converged

        self.live = [False] * n
        self.live_count = 0
        self.seen = [0] * n
        self.total_seen = 0
        self.nonalive: list[dict[int, Status]] = [{} for _ in range(n)]
        self.life_floor = [-1] * n
        """Events about incarnations up to this one belong to a node's previous (crashed) life."""

        self.converged_at: float | None = None
        self.first_converged_at: float | None = None
        self.expect_convergence = False
        """Set by the engine once every node has started: only then does convergence count as the join's."""
        self.heal_at: float | None = None
        self.merged_after_heal_s: float | None = None

        self._updates: dict[int, list[_Update]] = {}
        self.update_rounds: list[int] = []
        self.update_receiver_rounds: list[int] = []
        self.updates_incomplete = 0

        self._kills: dict[int, _Kill] = {}
        self.kills_done: list[_Kill] = []

        self.false_suspicions = 0
        self.imported_suspicions = 0
        self.false_death_keys: set[tuple[int, int]] = set()
        self.unhealthy: set[int] = set()
        """Starved nodes: running but stalling, so a verdict on them is reported apart."""
        self.false_death_views = 0

        self.events = 0
        self._hash = hashlib.blake2b(digest_size=16)
        self._pending_lines: list[str] = []
        self.samples: list[Sample] = []

    # ------------------------------------------------------------ the digest

    def log(self, line: str) -> None:
        """Fold one line (a fault, an injected update) into the event log digest."""
        self._pending_lines.append(line)
        if len(self._pending_lines) >= _HASH_BATCH:
            self._flush_hash()

    def _flush_hash(self) -> None:
        if self._pending_lines:
            self._hash.update(("\n".join(self._pending_lines) + "\n").encode())
            self._pending_lines.clear()

    def events_hash(self) -> str:
        self._flush_hash()
        return self._hash.hexdigest()

    # ------------------------------------------------------------ nodes up and down

    def _is_converged(self) -> bool:
        lc = self.live_count
        return lc > 0 and self.total_seen == lc * (lc - 1)

    def arm_convergence(self, now: float) -> None:
        """Every node has started: the next time the view is whole is the join convergence."""
        self.expect_convergence = True
        self.converged_at = None
        self._check_converged(now)

    def _check_converged(self, now: float) -> None:
        if self._is_converged():
            if self.converged_at is None:
                self.converged_at = now
                if self.first_converged_at is None and self.expect_convergence:
                    self.first_converged_at = now
                    if self._on_first_converged is not None:
                        self._on_first_converged(now)
                if self.heal_at is not None and self.merged_after_heal_s is None and now >= self.heal_at:
                    self.merged_after_heal_s = now - self.heal_at
        else:
            self.converged_at = None

    def node_up(self, i: int, now: float, knows_everyone: bool = False) -> None:
        """Node ``i`` runs a fresh machine (started, or restarted with an empty view)."""
        if self.live[i]:
            return
        self.live[i] = True
        self.live_count += 1
        self.nonalive[i] = {}
        node_id = self.ids[i]
        for o in range(self.n):
            if o != i and self.live[o] and self._status_of(o, node_id) is Status.ALIVE:
                self.seen[o] += 1
                self.total_seen += 1
        self.seen[i] = self.live_count - 1 if knows_everyone else 0
        self.total_seen += self.seen[i]
        self.log(f"{now!r}|up|{i}")
        self._check_converged(now)

    def warm_start(self, now: float, nodes: Sequence[int]) -> None:
        """Every node in ``nodes`` is up and lists every other one as alive (O(N), not O(N²))."""
        for i in nodes:
            self.live[i] = True
            self.nonalive[i] = {}
        self.live_count = len(nodes)
        for i in nodes:
            self.seen[i] = self.live_count - 1
        self.total_seen = self.live_count * (self.live_count - 1)
        self.log(f"{now!r}|warm|{len(nodes)}")
        self.arm_convergence(now)

    def node_down(self, i: int, now: float, reason: str, incarnation: int) -> None:
        """Node ``i`` stopped being a live member: it crashed, or it announced a leave."""
        if not self.live[i]:
            return
        self.live[i] = False
        self.live_count -= 1
        self.total_seen -= self.seen[i]
        node_id = self.ids[i]
        for o in range(self.n):
            if self.live[o] and self._status_of(o, node_id) is Status.ALIVE:
                self.seen[o] -= 1
                self.total_seen -= 1
        if reason == "crash":
            self.life_floor[i] = incarnation
            self._start_kill(i, now)
        # An observer that is gone can no longer detect or receive anything.
        for kill in self._kills.values():
            kill.waiting.discard(i)
        self._close_finished_kills(now)
        for records in self._updates.values():
            for u in records:
                u.got.pop(i, None)
        # An origin that went down before its update reached everyone yields no sample.
        self._updates.pop(i, None)
        self._check_updates(now)
        self.log(f"{now!r}|down|{i}|{reason}|{incarnation}")
        self._check_converged(now)

    def restarted(self, i: int, now: float) -> None:
        """Node ``i`` came back: a detection still waiting for observers ends here."""
        kill = self._kills.pop(i, None)
        if kill is not None:
            self.kills_done.append(kill)

    # ------------------------------------------------------------ partitions

    def partition_healed(self, now: float) -> None:
        self.heal_at = now
        self.merged_after_heal_s = None
        self.log(f"{now!r}|heal")
        if self._is_converged():
            self.merged_after_heal_s = 0.0

    # ------------------------------------------------------------ events

    def on_events(self, o: int, events: list[MemberEvent], now: float, after_tick: bool = False) -> None:
        """Fold one machine's events in. ``after_tick``: they came out of ``tick()``, where the
        only suspicion an observer raises itself is a failed probe (one raised while merging a
        push-pull is an imported verdict, counted apart)."""
        index = self.index
        live = self.live
        nonalive = self.nonalive[o]
        o_live = live[o]
        my_id = self.ids[o]
        lines = self._pending_lines
        delta = 0
        for ev in events:
            s = index.get(ev.node)
            lines.append(f"{ev.at!r}|{o}|{ev.kind}|{s}|{ev.incarnation}|{ev.detail}")
            self.events += 1
            if s is None or s == o:
                continue
            kind = ev.kind
            s_live = live[s]
            if kind is EventKind.JOINED:
                if s_live:
                    delta += 1
                self._updated(s, o, ev.incarnation, now)
            elif kind is EventKind.UPDATED:
                self._updated(s, o, ev.incarnation, now)
            elif kind is EventKind.ALIVE:
                if nonalive.pop(s, None) is not None and s_live:
                    delta += 1
                self._updated(s, o, ev.incarnation, now)
            elif kind is EventKind.SUSPECT:
                if s not in nonalive and s_live:
                    delta -= 1
                nonalive[s] = Status.SUSPECT
                if ev.detail == my_id and s_live and o_live:
                    if after_tick:
                        self.false_suspicions += 1
                    else:
                        self.imported_suspicions += 1
            elif kind in _DOWN_KINDS:
                if s not in nonalive and s_live:
                    delta -= 1
                nonalive[s] = _DOWN_KINDS[kind]
                if kind is EventKind.DEAD:
                    kill = self._kills.get(s)
                    if kill is not None and o in kill.waiting:
                        kill.waiting.discard(o)
                        kill.times.append(now - kill.at)
                        if not kill.waiting:
                            self.kills_done.append(self._kills.pop(s))
                    if s_live and ev.incarnation > self.life_floor[s]:
                        self.false_death_views += 1
                        self.false_death_keys.add((s, ev.incarnation))
            elif kind is EventKind.REAPED:
                nonalive.pop(s, None)
        if len(lines) >= _HASH_BATCH:
            self._flush_hash()
        if delta:
            self.seen[o] += delta
            if o_live:
                self.total_seen += delta
                self._check_converged(now)

    # ------------------------------------------------------------ dissemination

    def update_injected(self, origin: int, incarnation: int, now: float, cause: UpdateCause) -> None:
        """``origin`` announced a new incarnation at ``now``: time its spread to every live node."""
        self._updates.setdefault(origin, []).append(_Update(origin, incarnation, now, cause))
        self.log(f"{now!r}|update|{origin}|{incarnation}|{cause}")

    def _updated(self, s: int, o: int, incarnation: int, now: float) -> None:
        records = self._updates.get(s)
        if not records:
            return
        done = False
        for u in records:
            if incarnation >= u.incarnation and o not in u.got and self.live[o]:
                u.got[o] = now
                if len(u.got) >= self.live_count - 1:
                    done = True
        if done:
            self._check_updates(now)

    def _check_updates(self, now: float) -> None:
        for origin in list(self._updates):
            records = self._updates[origin]
            keep = []
            for u in records:
                if len(u.got) >= self.live_count - 1 and all(
                    o in u.got for o in range(self.n) if self.live[o] and o != origin
                ):
                    last = max(u.got.values(), default=u.start)
                    self.update_rounds.append(gossip_rounds(last - u.start, self.gossip_interval))
                    self.update_receiver_rounds.extend(
                        gossip_rounds(t - u.start, self.gossip_interval) for t in u.got.values()
                    )
                elif now - u.start > self.update_timeout_s:
                    self.updates_incomplete += 1
                else:
                    keep.append(u)
            if keep:
                self._updates[origin] = keep
            else:
                del self._updates[origin]

    # ------------------------------------------------------------ detection

    def _start_kill(self, i: int, now: float) -> None:
        old = self._kills.pop(i, None)
        if old is not None:
            self.kills_done.append(old)
        node_id = self.ids[i]
        waiting = set()
        for o in range(self.n):
            if self.live[o]:
                st = self._status_of(o, node_id)
                if st is not None and not st.is_down:
                    waiting.add(o)
        kill = _Kill(i, now, waiting, expected=len(waiting))
        if waiting:
            self._kills[i] = kill
        else:
            self.kills_done.append(kill)

    def _close_finished_kills(self, now: float) -> None:
        for s in [s for s, k in self._kills.items() if not k.waiting]:
            self.kills_done.append(self._kills.pop(s))

    # ------------------------------------------------------------ sampling and results

    def sample(self, now: float) -> None:
        lc = self.live_count
        suspect = dead = 0
        for o in range(self.n):
            if self.live[o]:
                for st in self.nonalive[o].values():
                    if st is Status.SUSPECT:
                        suspect += 1
                    else:
                        dead += 1
        pairs = lc * (lc - 1)
        self.samples.append(Sample(now, lc, self.total_seen / pairs if pairs else 1.0, suspect, dead))
        self._check_updates(now)

    def finish(self, now: float) -> None:
        self._check_updates(now)
        for records in self._updates.values():
            self.updates_incomplete += len(records)
        self._updates.clear()
        for kill in self._kills.values():
            self.kills_done.append(kill)
        self._kills.clear()

    def detection(self) -> tuple[float | None, float | None, float | None, float | None, int]:
        """(median first, median p50, median last, worst last, incomplete) over the crashes.

        A crash is complete when every live observer that knew the node declared it dead;
        the "all" figures are None if any crash stayed incomplete.
        """
        firsts, mids, lasts = [], [], []
        incomplete = 0
        for k in self.kills_done:
            if k.waiting or (k.expected and not k.times):
                incomplete += 1
            if k.times:
                firsts.append(min(k.times))
                mids.append(percentile(k.times, 50))
                lasts.append(max(k.times))
        first = percentile(firsts, 50)
        mid = percentile([m for m in mids if m is not None], 50)
        last = percentile(lasts, 50) if lasts and not incomplete else None
        worst = max(lasts) if lasts and not incomplete else None
        return first, mid, last, worst, incomplete
