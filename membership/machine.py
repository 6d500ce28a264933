"""SWIM with Lifeguard as a sans-I/O state machine.

The shape is aioquic's: the driver feeds bytes and time in, and takes bytes
and one deadline out::

    m.receive(datagram, src, now)          # a UDP datagram arrived
    reply = m.handle_stream(frame, src, now)   # a TCP request arrived; reply or None
    m.stream_reply(token, frame_or_None, now)  # the reply to one of our TCP requests
    m.tick(now)                            # call when now >= m.next_deadline()
    m.take_datagrams() -> [(bytes, addr)]  # send these over UDP
    m.take_streams() -> [StreamRequest]    # send these over TCP
    m.take_events() -> [MemberEvent]

After ``tick(now)``, ``next_deadline()`` is None or later than ``now`` in
every state, leaving included (a leaving machine only gossips its leave), so
a driver's single re-armed timer never spins. ``install_view`` starts a fresh
machine from a converged view instead of a join (warm starts, see
``sharing.py``).

Nothing here reads a clock, sleeps, opens a socket or touches the global
random generator: time comes in as ``now`` and randomness from the
``random.Random`` the driver passes in. The asyncio daemon and the
simulator drive the very same object.

Probing (one target per ``probe_interval``, round robin over a shuffled list):
ping → ack within ``probe_timeout`` or ask ``indirect_checks`` members to
ping-req it (and, with ``direct_retry``, ping it directly once more; with
``tcp_fallback``, over TCP too); no ack by the end of the interval →
suspect. A driver with evidence against a member (a refused connect) may
move it to the head of that order with ``probe_soon``, once per member per
``probe_soon_gap``; it is then probed the usual way. Lifeguard: both
timeouts are stretched by the awareness score, relays send nacks so a
prober can tell "the target is gone" from "I am the slow one", and suspicion timers shrink with independent confirmations; a
suspicion nobody confirmed gets one last direct check before it turns into
death. Updates are piggybacked on every datagram and pushed by the gossip
tick to ``gossip_nodes`` members while any are queued: random ones, except
that news goes first to our successors on the ring of sorted ids. Push-pull
exchanges digests over TCP and sends only what differs; what a joiner learns
from its seed is not re-gossiped (the pool has it), and the joiner catches
up by push-pull instead, merging those quietly too: once with its seed a
moment later (others joining at the same time), then with random members at
gaps doubling up to 10 s until one finds the two views equal (a seed that
served a join does the same). In a pool of at most ``join_announce`` others a
joiner also sends its alive straight to each member. A lost join is retried
by the machine once others have joined through it, and a node whose join got
through late pushes the pool to them. A suspicion learned by push-pull names
no witness (the suspect as its own accuser) and never confirms one.

Departures from memberlist, each for a measured reason (simulations/RESULTS.md):
the direct retry and the last check (false suspicions and deaths at 10 %
loss), the ring successors (nodes that missed every random copy of an
update), the quiet join and catch-ups and the bounded gossip queue (join
storms; suspicions, deaths and refutations are exempt from the bound), the
signed load summary (bandwidth; see ``update_load``).

Memory per member is one dict entry pointing at the member's signed
``Alive`` record (which a simulator shares among all its nodes) plus a small
record only while the member is suspect, dead or left: this is what lets a
single process hold 10,000 nodes that each know 10,000 members.
"""

from __future__ import annotations

import bisect
import logging
import math
import random
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from membership import state as rules
from membership import wire
from membership.awareness import Awareness
from membership.broadcast import BroadcastQueue, retransmit_limit
from membership.config import SwimConfig
from membership.errors import LocalProtocolError, RemoteProtocolError
from membership.events import EventKind, MemberEvent, StreamKind, StreamRequest
from membership.messages import (
    Ack,
    Addr,
    Alive,
    Dead,
    IndirectPing,
    LoadSummary,
    MemberState,
    Message,
    Nack,
    Ping,
    PushPull,
    PushPullReply,
    PushPullStates,
    Suspect,
    make_digest_entry,
    signed_alive_payload,
    signed_load_payload,
)
from membership.meta import Load, NodeMeta
from membership.sharing import ConvergedView, SharedCaches
from membership.signing import Signer, Verify
from membership.state import Status, Verdict
from membership.suspicion import Suspicion, suspicion_timeout

log = logging.getLogger(__name__)

_DATAGRAM_OVERHEAD = 1 + wire.ARRAY_HEADER_MAX


def _load_key(node: str) -> str:
    # Its own slot in the broadcast queue: a load summary must not displace the node's alive.
    return node + "/load"

_MAX_PENDING_STREAMS = 256
PAST_ADDRS_KEPT = 8
"""Addresses remembered after a readdress (a relayed node moves once per relay failure)."""


@dataclass(frozen=True, slots=True)
class MemberView:
    node: str
    status: Status
    incarnation: int
    addr: Addr
    meta: NodeMeta
    load: Load
    """First-hand load from the latest ack if we have one, else the gossiped summary."""
    last_seen: float | None
    since: float | None
    """When the member entered its current non-alive status (None while alive)."""


@dataclass(slots=True)
class MembershipStats:
    datagrams_in: int = 0
    datagrams_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    stream_bytes_in: int = 0
    stream_bytes_out: int = 0
    malformed: int = 0
    rejected: int = 0
    probes: int = 0
    probe_failures: int = 0
    indirect_probes: int = 0
    suspicions_raised: int = 0
    last_chance_checks: int = 0
    load_summaries: int = 0
    refutations: int = 0
    readdresses: int = 0
    push_pulls: int = 0
    gossip_messages: int = 0


@dataclass(slots=True)
class _Down:
    status: Status
    incarnation: int
    since: float


@dataclass(slots=True)
class _Probe:
    target: str
    seq: int
    started: float
    ack_deadline: float
    end: float
    indirect: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(slots=True)
class _Relay:
    orig_seq: int
    requester: Addr
    nack_deadline: float | None
    expires: float


@dataclass(slots=True)
class _PendingStream:
    kind: StreamKind
    addr: Addr
    seq: int = 0
    join: bool = False
    quiet: bool = False
    """Merge the reply without re-gossiping it: a join, or a joiner's catch-up."""
    seed_follow_up: bool = False
    """The push-pull with our seed just after the join: its outcome does not end catching up."""


_Rank = tuple[int, Status]
"""Precedence of what we know about a member, for push-pull comparisons: a higher
incarnation wins; at equal incarnation the graver status wins (plain tuple order)."""


class Membership:
    def __init__(
        self,
        config: SwimConfig,
        signer: Signer,
        verify: Verify,
        addr: Addr,
        meta: NodeMeta,
        rng: random.Random,
        now: float,
        incarnation: int = 0,
        cluster: str = "rmap2p",
        shared: SharedCaches | None = None,
    ) -> None:
        """A machine that knows only itself, at ``now``.

        ``signer`` signs our alive records and names us (``signer.node_id``); ``verify`` checks
        others' records; ``rng`` is all the randomness we use. ``incarnation``: where to start
        (a restarted daemon passes one above anything it announced before). ``shared``: caches
        a driver of many machines in one process gives all of them (see ``sharing.py``).
        """
        self.config = config
        self.cluster = cluster
        self._signer = signer
        self._verify = verify
        self._rng = rng
        self._addr = addr
        self._meta = meta
        self._intern = shared.alive_intern if shared is not None else None
        self._memo = shared.decode_memo if shared is not None else wire.AliveMemo()
        self.id = signer.node_id
        self.incarnation = incarnation
        self.stats = MembershipStats()
        self.awareness = Awareness(config.awareness_max_multiplier)
        self.leaving = False

        self._alive: dict[str, Alive] = {}
        self._down: dict[str, _Down] = {}
        self._ids: list[str] = []  # every known member but us, for O(1) random picks
        # Every known id, us included, sorted: the ring whose successors get our news first.
        # Shared (copy on write) when a simulator installs one converged view in many machines.
        self._ring: list[str] = [signer.node_id]
        self._ring_shared = False
        self._ring_mark = 0
        self._id_pos: dict[str, int] = {}
        self._probe_list: list[str] = []
        self._probe_index = 0
        self._probe: _Probe | None = None
        self._probe_next: list[str] = []  # probe_soon's members, probed before the round robin
        self._probe_soon_at: dict[str, float] = {}  # member -> when probe_soon last took it
        self._relays: dict[int, _Relay] = {}
        self._suspicions: dict[str, Suspicion] = {}
        self._broadcasts = BroadcastQueue(config.max_queued_updates, frozenset({self.id, _load_key(self.id)}))
        self._last_seen: dict[str, float] = {}
        self._fresh_load: dict[str, Load] = {}
        self._load_seen: dict[str, tuple[int, int]] = {}  # (incarnation, seq) of the newest summary
        self._reap_queue: deque[tuple[float, str]] = deque()
        self._pending_streams: dict[int, _PendingStream] = {}
        self._identity_checks: dict[int, Alive] = {}
        self._liveness_checks: dict[int, tuple[str, float]] = {}  # seq -> (member, when sent): check_alive
        self._corrections: dict[tuple[Addr, str], float] = {}
        self._pinged_by: dict[str, float] = {}
        # Addresses we gave up with readdress(): an older record of ours there is our own past,
        # not a copy of us, so it is never answered with an identity check.
        self._past_addrs: deque[Addr] = deque(maxlen=PAST_ADDRS_KEPT)
        self.rtt: float | None = None
        """Smoothed round trip of our direct probes, in seconds (None before the first ack)."""
        self._n_down = 0  # members dead or left: kept as a count so N is O(1)
        self._limit_for, self._limit = 0, 0  # retransmit limit, and the N it was computed for
        self._seq = 0
        self._token = 0
        self._load = meta.load
        self._gossiped_load = meta.load
        self._last_load_gossip = now
        self._load_seq = 0

        self._out: list[tuple[bytes, Addr]] = []
        self._out_streams: list[StreamRequest] = []
        self._events: list[MemberEvent] = []

        self._next_probe = now + rng.uniform(0, config.probe_interval)
        self._next_gossip = now + config.gossip_interval
        self._next_push_pull = now + rng.uniform(0, config.push_pull_interval)
        self._catch_up = 0.0  # while > 0: the next anti-entropy gap of a node that just joined
        self._catch_up_until = 0.0  # catching up ends by then, views equal or not
        self._joined = False  # a join reply has come back (or we started from a view)
        # Seeds whose join failed while we were not alone: retried by us (see _join_failed).
        self._rejoin: dict[Addr, tuple[float, float]] = {}  # addr -> (when, gap)
        self._seed_follow_up: tuple[Addr, float] | None = None  # (seed, when): see join_seed_follow_up
        self._next_reconnect = now + config.reconnect_interval
        self._announce(now)

    # ------------------------------------------------------------ inputs

    def receive(self, data: bytes, src: Addr, now: float) -> None:
        """A datagram arrived from ``src``. Bad input is dropped and counted, never raised."""
        self.stats.datagrams_in += 1
        self.stats.bytes_in += len(data)
        try:
            messages = wire.decode_datagram(data, self._memo)
        except RemoteProtocolError as exc:
            self.stats.malformed += 1
            log.debug("%s: dropped datagram from %s: %s", self.id, src, exc)
            return
        for msg in messages:
            if type(msg) is Alive and self._holds(msg):
                continue  # what most gossip brings; found here it costs no dispatch
            self._dispatch(msg, src, now)

    def handle_stream(self, data: bytes, src: Addr, now: float) -> bytes | None:
        """A TCP request frame arrived; returns the reply frame, if any."""
        self.stats.stream_bytes_in += len(data)
        try:
            msg = wire.decode_frame(data, self._memo)
        except RemoteProtocolError as exc:
            self.stats.malformed += 1
            log.debug("%s: dropped stream frame from %s: %s", self.id, src, exc)
            return None
        reply: Message | None = None
        try:
            if isinstance(msg, PushPull):
                reply = self._serve_push_pull(msg, src, now)
            elif isinstance(msg, PushPullStates):
                if msg.cluster == self.cluster:
                    self._merge(msg.states, now)
            elif isinstance(msg, Ping):
                if msg.target == self.id:
                    reply = Ack(msg.seq, self._load)
            else:
                raise RemoteProtocolError(f"{type(msg).__name__} is not a stream request")
        except RemoteProtocolError as exc:
            self.stats.rejected += 1
            log.debug("%s: rejected stream request from %s: %s", self.id, src, exc)
            return None
        if reply is None:
            return None
        frame = wire.encode_frame(reply)
        self.stats.stream_bytes_out += len(frame)
        return frame

    def stream_reply(self, token: int, data: bytes | None, now: float) -> bool:
        """The outcome of one of our TCP requests; True if a valid reply was used."""
        pending = self._pending_streams.pop(token, None)
        if pending is None:
            return False
        if data is None:
            if pending.join:
                self._join_failed(pending.addr, now)
            return False
        self.stats.stream_bytes_in += len(data)
        try:
            msg = wire.decode_frame(data, self._memo)
            if pending.kind is StreamKind.PUSH_PULL and isinstance(msg, PushPullReply):
                if msg.cluster != self.cluster:
                    raise RemoteProtocolError(f"peer is in cluster {msg.cluster!r}, not ours")
                # Members we knew before our first join got through joined through us while ours
                # was under way (a slow TCP connect): they hold our view of then, just us, and end
                # their catch-ups on it, an island the pool does not know. Told below.
                island = [self._alive[n].addr for n in self._ids[:8]] if pending.join and not self._joined else []
                # What a joiner learns from its seed the pool already knows: re-gossiping it would
                # make every join cost N broadcasts, and a join wave O(N^2 log N) messages.
                self._merge(msg.states, now, gossip=not pending.quiet)
                for addr in island:
                    if addr != pending.addr:
                        self._push_pull(addr, now, join=False)
                if (
                    pending.quiet and not pending.join and not pending.seed_follow_up
                    and not msg.states and not msg.digest and self._catch_up > 0
                ):
                    # A catch-up that found our two views equal: we have caught up. Back to the
                    # normal period (from now, at a random phase) rather than more doubling gaps.
                    # Equal, not merely "nothing we lacked": while a join storm is still
                    # spreading, a peer that lacks what we have likely lacks what we lack too
                    # (at 300 nodes and 10 % loss a node stopped at 13 s missing one member that
                    # its peer had not heard of either, and waited 85 s for the next push-pull).
                    self._catch_up = 0.0
                    period = self.config.push_pull_period(self.num_active())
                    self._next_push_pull = now + self._rng.uniform(0.5, 1.0) * period
                if pending.join:
                    self._joined = True
                    self._rejoin.clear()
                    # Nobody re-gossips what a joiner learned, so whatever its seed had not
                    # heard of yet (others joining at the same time) it pulls from random
                    # members: soon, then at doubling gaps up to the normal period. In a join
                    # storm gossip is backlogged for minutes; anti-entropy is not.
                    self._start_catching_up(now)
                    if self.num_active() <= self.config.join_announce + 1:
                        # A small pool: tell every member at once. (In a big one, 32 such seeds
                        # of the epidemic only crowded the bounded queues in a join storm: a
                        # 1,000-node cold start took 54 s instead of 31.)
                        own = wire.encode_message(self._alive[self.id])
                        for node in self._random_members(self.config.join_announce, now):
                            addr = self._alive[node].addr
                            if addr != pending.addr:  # the seed has our record from this exchange
                                self._emit(addr, [own])  # alone: our queued alive still gets gossiped
                    if self.config.join_seed_follow_up > 0:
                        when = now + self._rng.uniform(0.5, 1.0) * self.config.join_seed_follow_up
                        self._seed_follow_up = (pending.addr, when)
                wanted = [self._state_of(e.node) for e in msg.digest if e.node in self._alive]
                if wanted:
                    self._stream(pending.addr, PushPullStates(self.cluster, tuple(wanted)), False, StreamKind.STATES)
                return True
            if pending.kind is StreamKind.PING and isinstance(msg, Ack):
                self._on_ack(msg, pending.addr, now)
                return True
        except RemoteProtocolError as exc:
            self.stats.rejected += 1
            log.debug("%s: bad stream reply from %s: %s", self.id, pending.addr, exc)
        if pending.join:
            self._join_failed(pending.addr, now)
        return False

    def _start_catching_up(self, now: float) -> None:
        gap = self._rng.uniform(0.5, 1.0) * self.config.join_follow_up
        self._catch_up = 2 * gap
        self._catch_up_until = now + self.config.push_pull_period(self.num_active())
        self._next_push_pull = min(self._next_push_pull, now + gap)

    def _join_failed(self, addr: Addr, now: float) -> None:
        """A join push-pull got no valid reply: try that seed again later unless a join succeeds.

        A driver retries its seeds while we are alone, but not once someone has joined through
        us: a node whose join was lost (10 % loss: a TCP connect fails now and then) while
        later joiners already used it as their seed becomes an island that knows only them,
        and they only it (caught up with each other, they stop). Nobody re-gossips what a
        join brings, so the island and the pool would meet only by chance at a push-pull
        period. So we retry the seed ourselves, at doubling gaps, until a join gets through.
        """
        if self._joined or (addr not in self._rejoin and len(self._rejoin) >= 8):
            return
        _, gap = self._rejoin.get(addr, (0.0, 0.5 * self.config.join_follow_up))
        gap = min(2 * gap, self.config.push_pull_interval)
        self._rejoin[addr] = (now + self._rng.uniform(0.5, 1.0) * gap, gap)

    def join(self, addr: Addr, now: float) -> int:
        """Start a push-pull with a seed address; returns the stream token."""
        return self._push_pull(addr, now, join=True)

    def push_pull(self, addr: Addr, now: float) -> int:
        """Start an anti-entropy exchange with ``addr`` (what the periodic timer does); returns the token."""
        return self._push_pull(addr, now, join=False)

    def leave(self, now: float) -> None:
        """Announce a graceful leave: peers mark us ``left``, not ``dead``."""
        self.leaving = True
        d = Dead(self.id, self.incarnation, self.id)
        self._set_down(self.id, Status.LEFT, self.incarnation, now)
        encoded = wire.encode_message(d)
        self._broadcasts.queue(self.id, encoded)
        for node in self._random_members(self.config.gossip_nodes * 2, now):
            self._send(self._alive[node].addr, [encoded])

    def install_view(
        self,
        view: ConvergedView,
        now: float,
        *,
        probe_order: Sequence[str] | None = None,
        next_push_pull: float | None = None,
        last_load_gossip: float | None = None,
    ) -> None:
        """Start from ``view``: every member in it alive, nothing left to gossip (a warm start).

        The state a pool reaches once a join has converged and its broadcast queues have
        drained, without the N² messages it takes to get there: what lets a simulator start
        10,000 nodes that know each other. Only a fresh machine takes a view (one that knows
        no member but itself and has not ticked), and the view must hold our own current
        record; otherwise LocalProtocolError. The records were checked when the view was
        built (``ConvergedView.of``), not again here; no events are emitted (the driver knows
        what it installed).

        - ``probe_order``: the members to probe first, in order; once they are used up the
          machine shuffles all members as usual. Default: a shuffle of all of them. A driver
          starting many machines may pass a short random sample drawn from its own generator,
          distributed like the prefix of a full shuffle for a fraction of the cost.
        - ``next_push_pull``: when the first anti-entropy exchange is due. Default: a random
          phase within the push-pull period for the view's size. (The constructor drew one
          within the period of a pool of one; a long-running pool has its phases spread over
          the whole N-scaled period.)
        - ``last_load_gossip``: when our last load summary went out, which paces the next one
          (``load_gossip_period``). Default: unchanged (the construction time).
        """
        if self._ids or self._down or self._probe is not None or self._pending_streams:
            raise LocalProtocolError("install_view needs a fresh machine: this one already knows members")
        k = view.index.get(self.id)
        if k is None or view.records[k] != self._alive[self.id]:
            raise LocalProtocolError("the view must hold our own current record")
        self._alive.update(view.pairs)
        others = view.ids[:k] + view.ids[k + 1 :]
        self._ids = others
        self._id_pos = dict(zip(others, view.positions))
        if probe_order is None:
            probe_order = list(others)
            self._rng.shuffle(probe_order)
        self._probe_list = list(probe_order)
        self._probe_index = 0
        # Our own alive, queued at construction, is in every member's view already.
        self._broadcasts.clear()
        self._joined = True
        self._ring, self._ring_shared = view.ring, True
        if next_push_pull is None:
            next_push_pull = now + self._rng.uniform(0, self.config.push_pull_period(len(view)))
        self._next_push_pull = next_push_pull
        if last_load_gossip is not None:
            self._last_load_gossip = last_load_gossip

    def probe_soon(self, node: str, now: float) -> bool:
        """The driver has evidence against ``node`` (a refused or timed-out connect): probe it next.

        Only the order of probing changes: ``node`` is probed at once (or right after the probe
        in flight), by the usual ping, indirect pings and suspicion, so a live member acks and
        nothing is suspected, and a dead one is suspected about one probe interval after the
        evidence instead of whenever its turn came. Suspecting or killing stays the protocol's
        decision alone: a connect can fail for reasons that say nothing about the member (a
        service restarting, a full backlog, a path only this node lacks). At most once per
        member every ``probe_soon_gap`` seconds. True when the probe was moved up.
        """
        if self.leaving or node == self.id or node not in self._alive or self._is_down(node):
            return False
        last = self._probe_soon_at.get(node)
        if last is not None and now - last < self.config.probe_soon_gap:
            return False
        if (self._probe is not None and self._probe.target == node) or node in self._probe_next:
            return False
        if len(self._probe_soon_at) >= 64:
            gap = self.config.probe_soon_gap
            self._probe_soon_at = {n: t for n, t in self._probe_soon_at.items() if now - t < gap}
        self._probe_soon_at[node] = now
        self._probe_next.append(node)
        if self._probe is None:
            self._start_probe(now)
        return True

    def check_alive(self, nodes: Iterable[str], now: float) -> int:
        """Ping each of ``nodes`` now, outside the probe schedule; an ack sets its ``last_seen``.

        For a driver that needs fresh first-hand evidence from several members at once (a
        storage primary that must know a majority still answers it before it gives up a
        guarantee), where the probe schedule would take one member per interval. Evidence
        for, never against: a missing answer changes nothing, the usual probes and suspicion
        decide. A member with a check in flight younger than ``probe_timeout`` is not pinged
        again. Returns how many pings went out.
        """
        if self.leaving:
            return 0
        timeout = self.config.probe_timeout
        self._liveness_checks = {s: c for s, c in self._liveness_checks.items() if now - c[1] < timeout}
        pending = {node for node, _ in self._liveness_checks.values()}
        sent = 0
        for node in nodes:
            if node == self.id or node in pending or node not in self._alive or self._is_down(node):
                continue
            if len(self._liveness_checks) >= self.config.max_pending_probes:
                break
            seq = self._next_seq()
            self._liveness_checks[seq] = (node, now)
            pending.add(node)
            self._send(self._alive[node].addr, [wire.encode_message(Ping(seq, node, self.id))])
            sent += 1
        return sent

    def update_meta(self, meta: NodeMeta, now: float) -> None:
        """Our metadata changed: bump the incarnation and gossip the new signed alive."""
        if meta == self._meta:
            return
        self._meta = meta
        self._load = meta.load
        self._gossiped_load = meta.load
        self._last_load_gossip = now
        self.incarnation += 1
        self._announce(now)

    def readdress(self, addr: Addr, now: float, meta: NodeMeta | None = None) -> None:
        """We are now reached at ``addr`` (a relay allocation changed): bump and gossip our alive.

        Members apply an alive record of a higher incarnation whatever its address (the
        state table compares incarnations only), so the new address replaces the old one
        everywhere gossip reaches, and a suspicion raised against the old incarnation is
        refuted by the same record. ``meta``, when given, changes in the same bump (the
        relayed node's ``http`` and ``relays`` move with its address). The address given up
        is remembered: our older records still carrying it are our past, not a second daemon.
        """
        if self.leaving:
            return
        if addr == self._addr and (meta is None or meta == self._meta):
            return
        if addr != self._addr:
            if addr in self._past_addrs:
                self._past_addrs.remove(addr)
            self._past_addrs.append(self._addr)
            self._addr = addr
        if meta is not None:
            self._meta = meta
            self._load = meta.load
            self._gossiped_load = meta.load
            self._last_load_gossip = now
        self.incarnation += 1
        self.stats.readdresses += 1
        self._announce(now)

    def update_load(self, load: Load, now: float) -> None:
        """New local load figures: sent on acks at once; gossiped only on a marked change, rarely.

        The gossiped form is a signed ``LoadSummary`` (about 100 bytes, sent
        ``load_retransmits`` times by each node, a hint that may miss a few),
        at most once per ``load_gossip_period(N)``: the pool's bill for load
        summaries then stays within ``load_gossip_budget`` bytes/s per node
        however large N grows.
        """
        self._load = load
        if now - self._last_load_gossip < self.config.load_gossip_period(self.num_active()):
            return
        if not load.differs_markedly(self._gossiped_load, self.config.load_change_threshold):
            return
        self._last_load_gossip = now
        self._gossiped_load = load
        self._load_seq += 1
        signature = self._signer.sign(signed_load_payload(self.id, self.incarnation, self._load_seq, load))
        summary = LoadSummary(self.id, self.incarnation, self._load_seq, load, signature)
        self.stats.load_summaries += 1
        self._broadcasts.queue(_load_key(self.id), wire.encode_message(summary), self.config.load_retransmits)

    # ------------------------------------------------------------ timers

    def next_deadline(self) -> float | None:
        """When ``tick`` next has something to do; None when nothing is pending.

        After ``tick(now)`` this is always None or later than ``now``, in every
        state: a driver that re-arms one timer on it never spins.
        """
        if self.leaving:
            # A leaving machine only gossips its leave (see tick): its probe, relay, suspicion,
            # push-pull and reap timers will never fire, so reporting them would leave a
            # deadline in the past that no tick can move.
            return self._next_gossip if self._broadcasts else None
        # Called after every input a driver feeds in: a running minimum, no list.
        d = self._next_probe
        if self._next_push_pull < d:
            d = self._next_push_pull
        if self._next_gossip < d and self._broadcasts:
            d = self._next_gossip
        probe = self._probe
        if probe is not None:
            p = probe.end if probe.indirect else probe.ack_deadline
            if p < d:
                d = p
        for relay in self._relays.values():
            r = relay.nack_deadline if relay.nack_deadline is not None else relay.expires
            if r < d:
                d = r
        for susp in self._suspicions.values():
            if susp.deadline < d:
                d = susp.deadline
        if self._reap_queue:
            r = self._reap_queue[0][0] + self.config.reap_after
            if r < d:
                d = r
        if self._n_down and self._next_reconnect < d:
            d = self._next_reconnect
        for when, _ in self._rejoin.values():
            if when < d:
                d = when
        if self._seed_follow_up is not None and self._seed_follow_up[1] < d:
            d = self._seed_follow_up[1]
        return d

    def tick(self, now: float) -> None:
        """Fire every timer that is due at ``now``."""
        if self.leaving:
            # Nothing but the leave (and what else is queued) goes out from here on: no probes,
            # no suspicions of others, no anti-entropy. The driver stops the machine once the
            # queue is empty or its grace period ends.
            if self._broadcasts and now >= self._next_gossip:
                self._gossip(now)
            return
        probe = self._probe
        if probe is not None:
            if not probe.indirect and now >= probe.ack_deadline:
                self._go_indirect(probe, now)
            if now >= probe.end:
                self._probe_failed(probe, now)
        if self._probe is None and (now >= self._next_probe or self._probe_next):
            self._start_probe(now)
        if self._relays:
            self._tick_relays(now)
        if self._suspicions:
            for node in [n for n, s in self._suspicions.items() if s.deadline <= now]:
                self._suspicion_expired(node, now)
        if now >= self._next_gossip:
            self._gossip(now)
        if now >= self._next_push_pull:
            self._periodic_push_pull(now)
        if now >= self._next_reconnect:
            self._reconnect(now)
        if self._rejoin:
            self._retry_joins(now)
        if self._seed_follow_up is not None and now >= self._seed_follow_up[1]:
            seed, self._seed_follow_up = self._seed_follow_up[0], None
            token = self._push_pull(seed, now, join=False, quiet=True)
            pending = self._pending_streams.get(token)
            if pending is not None:
                pending.seed_follow_up = True
        while self._reap_queue and self._reap_queue[0][0] + self.config.reap_after <= now:
            self._reap(*self._reap_queue.popleft())

    # ------------------------------------------------------------ outputs

    def take_datagrams(self) -> list[tuple[bytes, Addr]]:
        out, self._out = self._out, []
        return out

    def take_streams(self) -> list[StreamRequest]:
        out, self._out_streams = self._out_streams, []
        return out

    def take_events(self) -> list[MemberEvent]:
        out, self._events = self._events, []
        return out

    # ------------------------------------------------------------ queries

    @property
    def addr(self) -> Addr:
        return self._addr

    @property
    def meta(self) -> NodeMeta:
        return self._meta

    @property
    def load(self) -> Load:
        """Our own latest load figures (what our acks carry)."""
        return self._load

    def status_of(self, node: str) -> Status | None:
        down = self._down.get(node)
        if down is not None:
            return down.status
        return Status.ALIVE if node in self._alive else None

    def incarnation_of(self, node: str) -> int | None:
        down = self._down.get(node)
        if down is not None:
            return down.incarnation
        alive = self._alive.get(node)
        return None if alive is None else alive.incarnation

    def alive_record(self, node: str) -> Alive | None:
        return self._alive.get(node)

    def known(self) -> int:
        return len(self._alive)

    def num_active(self) -> int:
        """Members (us included) that are alive or suspect: the N of the formulas."""
        return max(1, len(self._alive) - self._n_down)

    def members(self) -> list[MemberView]:
        views = []
        for node, alive in self._alive.items():
            down = self._down.get(node)
            try:
                meta = alive.meta
            except RemoteProtocolError:  # verified at receipt; cannot happen for a kept record
                continue
            views.append(
                MemberView(
                    node=node,
                    status=down.status if down else Status.ALIVE,
                    incarnation=down.incarnation if down else alive.incarnation,
                    addr=alive.addr,
                    meta=meta,
                    load=self._load if node == self.id else self._fresh_load.get(node, meta.load),
                    last_seen=self._last_seen.get(node),
                    since=down.since if down else None,
                )
            )
        return views

    def inbound_peers(self, now: float, window: float) -> int:
        """Distinct members that reached us with a ping of their own in the last ``window`` s.

        Evidence that others can open contact to our advertised address (we are
        reachable, not only able to reach out), which edge qualification asks for.
        """
        return sum(1 for node, at in self._pinged_by.items() if now - at <= window and node in self._alive)

    def broadcasts_queued(self) -> int:
        return len(self._broadcasts)

    # ------------------------------------------------------------ dispatch

    def _dispatch(self, msg: Message, src: Addr, now: float) -> None:
        try:
            match msg:
                case Alive():  # first: most of what gossip carries
                    self._on_alive(msg, now)
                case Ping():
                    self._on_ping(msg, src, now)
                case Ack():
                    self._on_ack(msg, src, now)
                case IndirectPing():
                    self._on_indirect_ping(msg, src, now)
                case Nack():
                    if self._probe is not None and msg.seq == self._probe.seq:
                        self._probe.nacks += 1
                case LoadSummary():
                    self._on_load_summary(msg)
                case Suspect():
                    self._correct_stale(msg.node, msg.incarnation, src, now)
                    self._on_suspect(msg, now)
                case Dead():
                    self._correct_stale(msg.node, msg.incarnation, src, now)
                    self._on_dead(msg, now)
                case _:
                    raise RemoteProtocolError(f"{type(msg).__name__} is not a datagram message")
        except RemoteProtocolError as exc:
            self.stats.rejected += 1
            log.debug("%s: rejected %s from %s: %s", self.id, type(msg).__name__, src, exc)

    def _on_ping(self, msg: Ping, src: Addr, now: float) -> None:
        if msg.target != self.id:
            # Someone has a stale address for another node: not for us to answer.
            raise RemoteProtocolError(f"ping for {msg.target}")
        if msg.source in self._alive:
            self._last_seen[msg.source] = now
            self._pinged_by[msg.source] = now
        self._send(src, [wire.encode_message(Ack(msg.seq, self._load))])

    def _on_ack(self, msg: Ack, src: Addr, now: float) -> None:
        probe = self._probe
        if probe is not None and msg.seq == probe.seq:
            self._last_seen[probe.target] = now
            if msg.load is not None:
                # Only the target itself puts its load on an ack: this one came straight back.
                self._fresh_load[probe.target] = msg.load
                sample = now - probe.started
                self.rtt = sample if self.rtt is None else 0.8 * self.rtt + 0.2 * sample
            self._probe = None
            if self.config.lifeguard:
                self.awareness.apply_delta(-1)
            if self._probe_next and not self.leaving:
                self._start_probe(now)
            return
        check = self._liveness_checks.pop(msg.seq, None)
        if check is not None:
            if check[0] in self._alive:
                self._last_seen[check[0]] = now
            return
        other = self._identity_checks.pop(msg.seq, None)
        if other is not None:
            # Something at another address answers to our id: a second daemon with our identity.
            self._event(EventKind.CONFLICT, self.id, other.incarnation, now, f"{other.host}:{other.port}", record=other)
            return
        relay = self._relays.pop(msg.seq, None)
        if relay is not None:
            self._send(relay.requester, [wire.encode_message(Ack(relay.orig_seq, None))])

    def _on_indirect_ping(self, msg: IndirectPing, src: Addr, now: float) -> None:
        if len(self._relays) >= self.config.max_pending_probes:
            raise RemoteProtocolError("too many relayed probes in flight")
        seq = self._next_seq()
        timeout = self.config.probe_timeout
        nack_at = now + self.config.nack_ratio * timeout if msg.want_nack and self.config.lifeguard else None
        self._relays[seq] = _Relay(msg.seq, src, nack_at, now + self.config.probe_interval)
        self._send((msg.target_host, msg.target_port), [wire.encode_message(Ping(seq, msg.target, self.id))])

    # ------------------------------------------------------------ state changes

    def _holds(self, a: Alive) -> bool:
        """Whether we already hold another member's record at ``a``'s incarnation or a newer one.

        The state table's verdict on such an alive is IGNORE; this finds it with one lookup.
        """
        old = self._alive.get(a.node)
        return old is not None and a.incarnation <= old.incarnation and a.node != self.id

    def _on_alive(self, a: Alive, now: float, gossip: bool = True) -> None:
        if self._holds(a):
            return
        about_self = a.node == self.id
        status = self.status_of(a.node)
        inc = self.incarnation if about_self else (self.incarnation_of(a.node) or 0)
        verdict = rules.on_alive(status, inc, a.incarnation, about_self)
        if about_self and a.addr != self._addr and not self.leaving:
            if a.incarnation >= inc:
                # Our identity at another address, as new as ours: a second daemon runs from a
                # copy of our data dir (our own older lives always carry lower incarnations).
                if not self._verify(a.node, a.public_key, a.signed_payload(), a.signature):
                    raise RemoteProtocolError("unsigned alive in our name")
                self._event(EventKind.CONFLICT, self.id, a.incarnation, now, f"{a.host}:{a.port}", record=a)
            elif (
                a.addr not in self._past_addrs
                and a.addr not in self._identity_checks.values()
                and len(self._identity_checks) < 16
            ):
                # An older record of ours elsewhere: a past life (that address is silent now)
                # or a copy of us that started earlier. Ask that address for our own id.
                seq = self._next_seq()
                self._identity_checks[seq] = a
                self._send(a.addr, [wire.encode_message(Ping(seq, self.id, self.id))])
        if verdict is Verdict.IGNORE:
            return
        if verdict is Verdict.REFUTE:
            if self.leaving:
                return
            if not self._verify(a.node, a.public_key, a.signed_payload(), a.signature):
                raise RemoteProtocolError("unsigned alive in our name")
            self._refute(a.incarnation, now)
            if a.addr != self._addr:
                # Tell the other daemon directly: nobody gossips to it, since every view holds
                # one address for our id, and it must learn it is the copy to stand down.
                self._send(a.addr, [wire.encode_message(self._alive[self.id])])
            return
        a = self._accept_alive(a)
        node = a.node
        old = self._alive.get(node)
        if old is None and len(self._alive) >= self.config.max_members:
            raise RemoteProtocolError("member table full")
        self._alive[node] = a
        down = None
        if old is None:
            self._add_member(node)
            self._event(EventKind.JOINED, node, a.incarnation, now)
        else:
            if a.incarnation > old.incarnation:
                self._fresh_load.pop(node, None)  # the new alive's metadata carries its current load
            down = self._clear_down(node)
            self._suspicions.pop(node, None)
            if down is not None:
                self._event(EventKind.ALIVE, node, a.incarnation, now, down.status.label)
            else:
                self._event(EventKind.UPDATED, node, a.incarnation, now)
        if gossip:
            # A refutation (or a recovery) must reach everyone who heard the suspicion: never
            # dropped from a full queue. Joins and metadata updates may be (anti-entropy has them).
            self._broadcasts.queue(node, wire.encode_message(a), keep=down is not None)

    def _on_load_summary(self, msg: LoadSummary) -> None:
        alive = self._alive.get(msg.node)
        if alive is None or msg.node == self.id or self._is_down(msg.node):
            return
        # Another incarnation's summary: an older one is stale, and a newer one we cannot check
        # without the alive that carries its key (that alive is on its way).
        if msg.incarnation != alive.incarnation:
            return
        if (msg.incarnation, msg.seq) <= self._load_seen.get(msg.node, (-1, -1)):
            return
        if not self._verify(msg.node, alive.public_key, msg.signed_payload(), msg.signature):
            raise RemoteProtocolError(f"bad signature on load summary for {msg.node}")
        self._load_seen[msg.node] = (msg.incarnation, msg.seq)
        self._fresh_load[msg.node] = msg.load
        self._broadcasts.queue(_load_key(msg.node), wire.encode_message(msg), self.config.load_retransmits)

    def _accept_alive(self, a: Alive) -> Alive:
        """Verify (once) and intern an alive record; raises RemoteProtocolError if forged."""
        key = (a.node, a.incarnation, a.signature)
        if self._intern is not None:
            known = self._intern.get(key)
            if known is not None:
                return known
        old = self._alive.get(a.node)
        if old is not None and old.public_key != a.public_key:
            raise RemoteProtocolError(f"alive for {a.node} under a different key")
        if len(a.meta_raw) > self.config.meta_max_bytes:
            raise RemoteProtocolError("metadata too large")
        a.meta  # decode now, so a bad record is rejected before it is stored
        if not self._verify(a.node, a.public_key, a.signed_payload(), a.signature):
            raise RemoteProtocolError(f"bad signature on alive for {a.node}")
        if self._intern is not None:
            self._intern[key] = a
        return a

    def _correct_stale(self, node: str, claimed: int, src: Addr, now: float) -> None:
        """Answer a suspicion or death claim about an older incarnation with the newer record.

        A node that missed a member's newer alive (it came back at a new address, say)
        keeps probing the old one and accusing it; the rest of the pool ignores the stale
        accusation, so without this the accuser learns the truth only at its next
        push-pull. We send the record straight back to whoever relayed the claim, at
        most once per member per source every probe interval.
        """
        alive = self._alive.get(node)
        if alive is None or node == self.id or self._is_down(node) or claimed >= alive.incarnation:
            return
        key = (src, node)
        if now - self._corrections.get(key, -1e18) < self.config.probe_interval:
            return
        if len(self._corrections) >= 256:
            self._corrections.clear()
        self._corrections[key] = now
        self._send(src, [wire.encode_message(alive)])

    def _on_suspect(self, s: Suspect, now: float, gossip: bool = True) -> None:
        about_self = s.node == self.id
        status = self.status_of(s.node)
        inc = self.incarnation if about_self else (self.incarnation_of(s.node) or 0)
        verdict = rules.on_suspect(status, inc, s.incarnation, about_self)
        if verdict is Verdict.IGNORE:
            return
        if verdict is Verdict.REFUTE:
            if not self.leaving:
                self._refute(s.incarnation, now)
            return
        # A suspicion with the suspect as its accuser names no witness: it came by anti-entropy.
        witness = None if s.accuser == s.node else s.accuser
        if verdict is Verdict.CONFIRM:
            timer = self._suspicions.get(s.node)
            if witness is not None and timer is not None and timer.confirm(witness) and gossip:
                self._broadcasts.queue(s.node, wire.encode_message(s), keep=True)
            return
        self._set_down(s.node, Status.SUSPECT, s.incarnation, now)
        n = self.num_active()
        base = suspicion_timeout(self.config.suspicion_mult, n, self.config.probe_interval)
        if self.config.lifeguard:
            # Expect confirmations from k others, but never more than there are to give them.
            k = int(self.config.suspicion_mult) - 2
            if n - 2 < k:
                k = 0
            longest = self.config.suspicion_max_mult * base
        else:
            k, longest = 0, base
        self._suspicions[s.node] = Suspicion.begin(s.incarnation, witness, now, k, base, longest)
        if gossip:
            # Suspicions and deaths are never dropped from a full queue (see broadcast.py).
            self._broadcasts.queue(s.node, wire.encode_message(s), keep=True)
        self._event(EventKind.SUSPECT, s.node, s.incarnation, now, s.accuser)

    def _on_dead(self, d: Dead, now: float, gossip: bool = True) -> None:
        about_self = d.node == self.id
        status = self.status_of(d.node)
        inc = self.incarnation if about_self else (self.incarnation_of(d.node) or 0)
        verdict = rules.on_dead(status, inc, d.incarnation, about_self, d.accuser == d.node, self.leaving)
        if verdict is Verdict.IGNORE:
            return
        if verdict is Verdict.REFUTE:
            if not self.leaving:
                self._refute(d.incarnation, now)
            return
        if about_self:
            return  # our own leave, already applied in leave()
        new = Status.LEFT if d.accuser == d.node else Status.DEAD
        self._suspicions.pop(d.node, None)
        self._set_down(d.node, new, d.incarnation, now)
        if gossip:
            self._broadcasts.queue(d.node, wire.encode_message(d), keep=True)
        self._event(EventKind.LEFT if new is Status.LEFT else EventKind.DEAD, d.node, d.incarnation, now, d.accuser)

    def _set_down(self, node: str, status: Status, incarnation: int, now: float) -> None:
        rules.check_transition(self.status_of(node), status)
        old = self._down.get(node)
        if status.is_down and (old is None or not old.status.is_down):
            self._n_down += 1
        self._down[node] = _Down(status, incarnation, now)
        if status.is_down:
            self._reap_queue.append((now, node))

    def _clear_down(self, node: str) -> _Down | None:
        old = self._down.pop(node, None)
        if old is not None and old.status.is_down:
            self._n_down -= 1
        return old

    def _refute(self, claimed: int, now: float) -> None:
        self.incarnation = rules.refuted_incarnation(self.incarnation, claimed)
        self.stats.refutations += 1
        if self.config.lifeguard:
            self.awareness.apply_delta(1)
        self._announce(now)

    def _announce(self, now: float) -> None:
        meta_raw = self._meta.encode()
        if len(meta_raw) > self.config.meta_max_bytes:
            raise LocalProtocolError(f"our metadata is {len(meta_raw)} bytes, over meta_max_bytes")
        host, port = self._addr
        payload = signed_alive_payload(self.id, self.incarnation, host, port, meta_raw)
        alive = Alive(self.id, self.incarnation, host, port, meta_raw, self._signer.public_key, self._signer.sign(payload))
        self._alive[self.id] = alive
        self._clear_down(self.id)
        self._broadcasts.queue(self.id, wire.encode_message(alive))

    def _suspicion_expired(self, node: str, now: float) -> None:
        timer = self._suspicions[node]
        if self.status_of(node) is not Status.SUSPECT:
            del self._suspicions[node]
            return
        if self.config.lifeguard and timer.k >= 1 and timer.confirmations == 0 and not timer.last_chance:
            # Nobody else confirmed in the whole maximum timeout: most likely every other node
            # heard the refutation and only we missed all its retransmissions. Before declaring
            # death, tell the suspect once more, directly; its refutation rides on its ack.
            timer.last_chance = True
            timer.deadline = now + self.config.probe_interval
            self.stats.last_chance_checks += 1
            self._send(self._alive[node].addr, self._probe_parts(node, self._next_seq()))
            return
        del self._suspicions[node]
        log.debug("%s: suspicion of %s timed out after %d confirmations", self.id, node, timer.confirmations)
        self._on_dead(Dead(node, timer.incarnation, self.id), now)

    def _reap(self, since: float, node: str) -> None:
        down = self._down.get(node)
        if down is None or not down.status.is_down or down.since != since or node == self.id:
            return  # it came back, or went down again later (a newer entry will reap it)
        self._clear_down(node)
        del self._alive[node]
        self._last_seen.pop(node, None)
        self._fresh_load.pop(node, None)
        self._load_seen.pop(node, None)
        self._pinged_by.pop(node, None)
        self._probe_soon_at.pop(node, None)
        if self._ring_shared:
            self._ring, self._ring_shared = list(self._ring), False
        at = bisect.bisect_left(self._ring, node)
        if at < len(self._ring) and self._ring[at] == node:
            del self._ring[at]
        pos = self._id_pos.pop(node)
        last = self._ids.pop()
        if last != node:
            self._ids[pos] = last
            self._id_pos[last] = pos
        self._event(EventKind.REAPED, node, down.incarnation, since)

    def _add_member(self, node: str) -> None:
        if node == self.id:
            return
        self._id_pos[node] = len(self._ids)
        self._ids.append(node)
        if self._ring_shared:
            self._ring, self._ring_shared = list(self._ring), False
        bisect.insort(self._ring, node)
        # Insert at a random place in the rest of this probe round (memberlist does the same),
        # so that a newcomer is not probed by everyone at the same moment.
        self._probe_list.append(node)
        lo = self._probe_index
        j = lo + int(self._rng.random() * (len(self._probe_list) - lo))  # randrange, 3x cheaper
        self._probe_list[j], self._probe_list[-1] = self._probe_list[-1], self._probe_list[j]

    # ------------------------------------------------------------ probing

    def _start_probe(self, now: float) -> None:
        interval = self.awareness.scale(self.config.probe_interval)
        self._next_probe = now + interval
        target = self._next_probe_target()
        if target is None:
            return
        seq = self._next_seq()
        timeout = self.awareness.scale(self.config.probe_timeout)
        self._probe = _Probe(target, seq, now, now + timeout, now + interval)
        self.stats.probes += 1
        self._send(self._alive[target].addr, self._probe_parts(target, seq))

    def _probe_parts(self, target: str, seq: int) -> list[bytes]:
        parts = [wire.encode_message(Ping(seq, target, self.id))]
        down = self._down.get(target)
        if down is not None and down.status is Status.SUSPECT:
            # Tell the target it is suspected so that it can refute at once (Lifeguard's buddy
            # system). The suspicion goes first: the target refutes before it acks, so its new
            # alive rides back on the ack and reaches us even if the gossip never does.
            parts.insert(0, wire.encode_message(Suspect(target, down.incarnation, self.id)))
        return parts

    def _next_probe_target(self) -> str | None:
        while self._probe_next:
            node = self._probe_next.pop(0)
            if node in self._alive and not self._is_down(node):
                return node
        checked = 0
        while checked <= len(self._probe_list):
            if self._probe_index >= len(self._probe_list):
                self._probe_list = [n for n in self._ids if not self._is_down(n)]
                self._rng.shuffle(self._probe_list)
                self._probe_index = 0
                if not self._probe_list:
                    return None
            node = self._probe_list[self._probe_index]
            self._probe_index += 1
            checked += 1
            if node in self._alive and not self._is_down(node):
                return node
        return None

    def _is_down(self, node: str) -> bool:
        down = self._down.get(node)
        return down is not None and down.status.is_down

    def _go_indirect(self, probe: _Probe, now: float) -> None:
        probe.indirect = True
        target = self._alive.get(probe.target)
        if target is None:
            return
        relays = self._random_members(self.config.indirect_checks, now, exclude=probe.target)
        want_nack = self.config.lifeguard
        msg = wire.encode_message(IndirectPing(probe.seq, probe.target, target.host, target.port, self.id, want_nack))
        for node in relays:
            self._send(self._alive[node].addr, [msg])
        if self.config.direct_retry:
            # A second direct ping with the indirect ones: on a lossy link the first ping or its
            # ack is the likeliest loss (19 % at 10 % loss), and one more datagram pair costs
            # less than a suspicion gossiped to every node. Same seq: either ack ends the probe.
            self._send(target.addr, self._probe_parts(probe.target, probe.seq))
        self.stats.indirect_probes += 1
        probe.expected_nacks = len(relays) if want_nack else 0
        if self.config.tcp_fallback:
            self._stream(target.addr, Ping(probe.seq, probe.target, self.id), True, StreamKind.PING, seq=probe.seq)

    def _probe_failed(self, probe: _Probe, now: float) -> None:
        self._probe = None
        self.stats.probe_failures += 1
        if self.config.lifeguard:
            # Missing nacks mean our own messages are not getting through: we may be the slow one.
            missed = probe.expected_nacks - probe.nacks if probe.expected_nacks else 1
            self.awareness.apply_delta(missed)
        inc = self.incarnation_of(probe.target)
        if inc is None or self._is_down(probe.target):
            return
        self.stats.suspicions_raised += 1
        self._on_suspect(Suspect(probe.target, inc, self.id), now)

    def _tick_relays(self, now: float) -> None:
        for seq, relay in list(self._relays.items()):
            if relay.nack_deadline is not None and now >= relay.nack_deadline:
                relay.nack_deadline = None
                self._send(relay.requester, [wire.encode_message(Nack(relay.orig_seq))])
            if now >= relay.expires:
                del self._relays[seq]

    # ------------------------------------------------------------ dissemination

    def _gossip(self, now: float) -> None:
        self._next_gossip = now + self.config.gossip_interval
        if not self._broadcasts:
            return
        targets = self._random_members(self.config.gossip_nodes, now, include_dead=True)
        if self.config.ring_successors and self._broadcasts.queued_total != self._ring_mark:
            # News since our last ring send: our successors get it in this tick, fewest-sent
            # first. Random fanout alone leaves each node a chance of e^-R to miss an update
            # (Serf's 99.99 %); with every node forwarding to its successors, a node misses
            # one only if its predecessors missed it (or lost the datagram) too.
            self._ring_mark = self._broadcasts.queued_total
            ring = self._ring_successors(self.config.ring_successors)
            targets = ring + [t for t in targets if t not in ring][: max(1, len(targets) - len(ring))]
        for node in targets:
            budget = self.config.max_datagram - _DATAGRAM_OVERHEAD
            parts = self._broadcasts.take(budget, self._retransmit_limit())
            if not parts:
                break
            self.stats.gossip_messages += 1
            self._emit(self._alive[node].addr, parts)

    def _ring_successors(self, k: int) -> list[str]:
        """The next ``k`` alive or suspect members after us on the ring of sorted ids."""
        ring = self._ring
        out: list[str] = []
        start = bisect.bisect_right(ring, self.id)
        for step in range(len(ring)):
            node = ring[(start + step) % len(ring)]
            if node == self.id:
                break
            if not self._is_down(node):
                out.append(node)
                if len(out) == k:
                    break
        return out

    def _retransmit_limit(self) -> int:
        n = self.num_active()
        if n != self._limit_for:
            self._limit_for, self._limit = n, retransmit_limit(self.config.retransmit_mult, n)
        return self._limit

    def _send(self, addr: Addr, parts: list[bytes]) -> None:
        """Send ``parts`` to ``addr``, filling the rest of the datagram with queued updates."""
        budget = self.config.max_datagram - _DATAGRAM_OVERHEAD - sum(len(p) for p in parts)
        if self._broadcasts and budget > 24:
            parts = parts + self._broadcasts.take(budget, self._retransmit_limit())
        self._emit(addr, parts)

    def _emit(self, addr: Addr, parts: list[bytes]) -> None:
        data = wire.pack_datagram(parts)
        self.stats.datagrams_out += 1
        self.stats.bytes_out += len(data)
        self._out.append((data, addr))

    def _random_members(
        self, k: int, now: float, include_dead: bool = False, exclude: str | None = None
    ) -> list[str]:
        """Up to ``k`` distinct random members other than us (and ``exclude``), in O(k) expected.

        Alive and suspect members qualify; with ``include_dead``, so do members dead for
        less than ``gossip_to_dead`` (they may be partitioned, not gone, and can refute).
        """
        if not self._ids or k <= 0:
            return []
        picked: list[str] = []
        seen: set[str] = set()
        ids, random_ = self._ids, self._rng.random
        n = len(ids)
        for _ in range(4 * k + 8):
            node = ids[int(random_() * n)]
            if node in seen or node == exclude:
                continue
            seen.add(node)
            down = self._down.get(node)
            if down is not None and down.status.is_down:
                if not (include_dead and down.status is Status.DEAD):
                    continue
                if now - down.since > self.config.gossip_to_dead:
                    continue
            picked.append(node)
            if len(picked) == k:
                break
        return picked

    # ------------------------------------------------------------ anti-entropy

    def _periodic_push_pull(self, now: float) -> None:
        period = self.config.push_pull_period(self.num_active())
        # A catch-up is a joiner pulling what it missed: old news to the pool, like the join's
        # own reply, so it is merged without re-gossip (else every catch-up turns the hundreds
        # of records a joiner lacks into broadcasts, and a join storm into minutes of backlog).
        catching_up = self._catch_up > 0
        if catching_up and now + self._catch_up < self._catch_up_until:
            # Doubling gaps, but at most 2 x join_follow_up apart until the views agree (or one
            # normal period has passed since the join): in a join storm the records the bounded
            # queues dropped reach early joiners only this way, and with gaps doubled up to the
            # period (20-40 s by then) one such node still lacked 19 members 20 s after the rest.
            self._next_push_pull = now + self._catch_up
            self._catch_up = min(2 * self._catch_up, 2 * self.config.join_follow_up)
        else:
            self._catch_up = 0.0
            self._next_push_pull = now + period
        peers = self._random_members(1, now)
        if peers:
            self._push_pull(self._alive[peers[0]].addr, now, join=False, quiet=catching_up)

    def _retry_joins(self, now: float) -> None:
        for addr, (when, gap) in list(self._rejoin.items()):
            if when > now:
                continue
            if self.num_active() <= 1:
                # Alone: the driver retries its seeds itself; we only look again later.
                self._rejoin[addr] = (now + gap, gap)
                continue
            # In flight: its failure schedules it again at a doubled gap, its reply clears it.
            self._rejoin[addr] = (math.inf, gap)
            self._push_pull(addr, now, join=True)

    def _reconnect(self, now: float) -> None:
        """Push-pull with one random dead member: after a partition heals, this merges the halves."""
        self._next_reconnect = now + self.config.reconnect_interval
        dead = sorted(n for n, d in self._down.items() if d.status is Status.DEAD and n in self._alive)
        if dead:
            node = dead[self._rng.randrange(len(dead))]
            self._push_pull(self._alive[node].addr, now, join=False)

    def _push_pull(self, addr: Addr, now: float, join: bool, quiet: bool = False) -> int:
        self.stats.push_pulls += 1
        down = self._down
        alive_status = Status.ALIVE
        entry = make_digest_entry
        digest = tuple(
            entry((node, a.incarnation, alive_status))
            if (d := down.get(node)) is None
            else entry((node, d.incarnation, d.status))
            for node, a in self._alive.items()
        )
        token = self._stream(addr, PushPull(self.cluster, join, digest), True, StreamKind.PUSH_PULL)
        pending = self._pending_streams.get(token)
        if pending is not None:
            pending.join = join
            pending.quiet = join or quiet
        return token

    def _serve_push_pull(self, msg: PushPull, src: Addr, now: float) -> PushPullReply | None:
        if msg.cluster != self.cluster:
            raise RemoteProtocolError(f"push-pull from cluster {msg.cluster!r}")
        if msg.join and self._catch_up == 0:
            # Someone joins through us: a join storm may be under way, in which the bounded queues
            # drop joins that only anti-entropy then carries. A joiner catches up; so does its
            # seed (the pool's first node never joins at all: in a 1,000-node cold start it
            # lacked 11 members for minutes after everyone else had them all).
            self._start_catching_up(now)
        # Ranks are compared as (incarnation, status) tuples; this loop runs once per member per
        # exchange, so the lookups are inlined rather than calling _rank.
        theirs = {e.node: (e.incarnation, e.status) for e in msg.digest}
        alive, down = self._alive, self._down
        alive_status = Status.ALIVE
        send = []
        for node, a in alive.items():
            d = down.get(node)
            mine = (a.incarnation, alive_status) if d is None else (d.incarnation, d.status)
            other = theirs.get(node)
            # A joiner gets everything we hold, even records it claims to know as well: a daemon
            # started from a copied data dir announces our member's id from another address, and
            # only by seeing our record of "itself" can it notice that it is the copy.
            if other is None or mine > other or msg.join:
                send.append(MemberState(a, mine[1], mine[0]))
        want = []
        for e in msg.digest:
            a = alive.get(e.node)
            if a is None:
                want.append(e)
                continue
            d = down.get(e.node)
            mine = (a.incarnation, alive_status) if d is None else (d.incarnation, d.status)
            if (e.incarnation, e.status) > mine:
                want.append(e)
        return PushPullReply(self.cluster, tuple(want), tuple(send))

    def _merge(self, states: Iterable[MemberState], now: float, gossip: bool = True) -> None:
        for st in states:
            try:
                self._on_alive(st.alive, now, gossip)
                if st.status is Status.SUSPECT or st.status is Status.DEAD:
                    # One peer's "dead" is only grounds for suspicion here (see state.py). It names
                    # no witness (the member as its own accuser, see _on_suspect): in a cold start
                    # every join reply and catch-up carries the suspicions of the moment, and when
                    # each merging node accused in its own name, hundreds of "independent"
                    # confirmations of one lost ack cut the timer to its minimum before the suspect
                    # had heard of it (false deaths at 1,000 nodes and 10 % loss).
                    node = st.alive.node
                    self._on_suspect(Suspect(node, st.incarnation, node), now, gossip)
                elif st.status is Status.LEFT:
                    self._on_dead(Dead(st.alive.node, st.incarnation, st.alive.node), now, gossip)
            except RemoteProtocolError as exc:
                self.stats.rejected += 1
                log.debug("%s: rejected merged state for %s: %s", self.id, st.alive.node, exc)

    def _rank(self, node: str) -> _Rank:
        down = self._down.get(node)
        if down is not None:
            return (down.incarnation, down.status)
        return (self._alive[node].incarnation, Status.ALIVE)

    def _state_of(self, node: str) -> MemberState:
        inc, status = self._rank(node)
        return MemberState(self._alive[node], status, inc)

    def _stream(self, addr: Addr, msg: Message, expect_reply: bool, kind: StreamKind, seq: int = 0) -> int:
        self._token += 1
        frame = wire.encode_frame(msg)
        if len(frame) > self.config.max_stream_frame:
            log.warning("%s: %s frame of %d bytes exceeds max_stream_frame; not sent", self.id, kind, len(frame))
            return self._token
        self.stats.stream_bytes_out += len(frame)
        if expect_reply:
            if len(self._pending_streams) >= _MAX_PENDING_STREAMS:
                # A driver that loses replies must not make us grow: forget the oldest.
                del self._pending_streams[next(iter(self._pending_streams))]
            self._pending_streams[self._token] = _PendingStream(kind, addr, seq)
        self._out_streams.append(StreamRequest(self._token, addr, frame, expect_reply, kind))
        return self._token

    # ------------------------------------------------------------ helpers

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % wire.MAX_INT
        return self._seq

    def _event(
        self, kind: EventKind, node: str, incarnation: int, now: float, detail: str = "", record: Alive | None = None
    ) -> None:
        self._events.append(MemberEvent(kind, node, incarnation, now, detail, record))
