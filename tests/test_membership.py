"""The membership state machine, driven directly with messages and a manual clock (no sleeping)."""

from __future__ import annotations

import random

import pytest
from cluster import Cluster
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from membership import ConvergedView, EventKind, LocalProtocolError, Membership, NodeMeta, SharedCaches, Status, StreamKind, SwimConfig
from membership.meta import Load
from membership import wire
from membership.broadcast import BroadcastQueue, retransmit_limit
from membership.messages import Ack, Alive, Dead, IndirectPing, MemberState, Nack, Ping, PushPullReply, Suspect, make_digest_entry
from membership.signing import UnsignedIdentity, accept_unsigned


def machine(name: str = "me", now: float = 0.0, config: SwimConfig | None = None, verify=accept_unsigned, inc: int = 0) -> Membership:
    return Membership(
        config or SwimConfig.lan(),
        UnsignedIdentity(name),
        verify,
        ("10.0.0.1", 7946),
        NodeMeta(name=name),
        random.Random(1),
        now,
        incarnation=inc,
    )


def alive(node: str, inc: int, port: int = 8000) -> Alive:
    meta = NodeMeta(name=node).encode()
    return Alive(node, inc, "10.0.0.2", port, meta, bytes(32), bytes(64))


def feed(m: Membership, *msgs: object, src=("10.0.0.2", 8000), now: float = 0.0) -> list:
    m.receive(wire.encode_datagram(msgs), src, now)  # type: ignore[arg-type]
    return [wire.decode_datagram(d) for d, _ in m.take_datagrams()]


def quiet(m: Membership) -> float:
    """Let gossip drain the update queue, so the probe timers are the only deadlines left."""
    now = 0.0
    for _ in range(100):
        if not m.broadcasts_queued():
            break
        now = m.next_deadline()  # type: ignore[assignment]
        m.tick(now)
        m.take_datagrams()
        m.take_streams()
    assert not m.broadcasts_queued()
    if m._probe is not None:  # type: ignore[attr-defined]
        m._probe = None  # type: ignore[attr-defined]
    m._next_probe = now + 5.0  # type: ignore[attr-defined]
    return now + 5.0


def test_refutes_suspicion_of_itself_with_a_higher_incarnation() -> None:
    m = machine(inc=3)
    feed(m, Suspect("me", 5, "other"))
    assert m.incarnation == 6
    assert m.stats.refutations == 1
    assert m.awareness.score == 1, "having to refute means we may be slow: Lifeguard raises awareness"
    # The refutation is queued for gossip: the next datagram we send carries it.
    feed(m, alive("peer", 1))
    out = feed(m, Ping(9, "me", "peer"))
    assert any(isinstance(x, Alive) and x.node == "me" and x.incarnation == 6 for x in out[0])


def test_stale_suspicion_of_itself_is_ignored() -> None:
    m = machine(inc=7)
    feed(m, Suspect("me", 6, "other"))
    assert m.incarnation == 7


def test_dead_about_itself_is_refuted_unless_leaving() -> None:
    m = machine()
    feed(m, Dead("me", 0, "x"))
    assert m.incarnation == 1 and m.status_of("me") is Status.ALIVE


def test_alive_suspect_dead_rules_for_others() -> None:
    m = machine()
    feed(m, Suspect("ghost", 1, "x"))
    assert m.status_of("ghost") is None, "suspicion of an unknown member is ignored"
    feed(m, alive("p", 2))
    assert m.status_of("p") is Status.ALIVE
    feed(m, Suspect("p", 1, "x"))
    assert m.status_of("p") is Status.ALIVE, "a suspicion older than what we know is ignored"
    feed(m, Suspect("p", 2, "x"))
    assert m.status_of("p") is Status.SUSPECT
    feed(m, alive("p", 2))
    assert m.status_of("p") is Status.SUSPECT, "an alive must carry a higher incarnation to clear suspicion"
    feed(m, alive("p", 3))
    assert m.status_of("p") is Status.ALIVE
    feed(m, Dead("p", 3, "x"))
    assert m.status_of("p") is Status.DEAD
    feed(m, Suspect("p", 3, "y"))
    assert m.status_of("p") is Status.DEAD, "the dead cannot become suspect"
    feed(m, alive("p", 4))
    assert m.status_of("p") is Status.ALIVE, "a higher incarnation brings a member back"
    feed(m, Dead("p", 4, "p"))
    assert m.status_of("p") is Status.LEFT, "a dead message from the member itself is a graceful leave"
    kinds = [e.kind for e in m.take_events() if e.node == "p"]
    assert kinds == ["joined", "suspect", "alive", "dead", "alive", "left"]


def test_a_stale_accusation_is_answered_with_the_newer_record() -> None:
    m = machine()
    feed(m, alive("p", 5))
    out = feed(m, Suspect("p", 3, "slowpoke"), src=("10.0.0.7", 7000))
    assert m.status_of("p") is Status.ALIVE
    assert any(isinstance(x, Alive) and x.node == "p" and x.incarnation == 5 for d in out for x in d)
    assert not feed(m, Dead("p", 3, "slowpoke"), src=("10.0.0.7", 7000)), "at most once per probe interval"


def test_forged_alive_is_rejected_and_counted() -> None:
    m = machine(verify=lambda node, pk, payload, sig: sig == b"\x01" * 64)
    feed(m, alive("p", 1))
    assert m.status_of("p") is None and m.stats.rejected == 1
    good = Alive("p", 1, "10.0.0.2", 8000, NodeMeta().encode(), bytes(32), b"\x01" * 64)
    feed(m, good)
    assert m.status_of("p") is Status.ALIVE


def test_probe_deadlines_are_exact_and_indirect_probe_follows_a_missed_ack() -> None:
    assert SwimConfig.lan().indirect_checks == 5
    m = machine(config=SwimConfig.lan(indirect_checks=3))
    for i in range(5):
        feed(m, alive(f"p{i}", 1, port=8000 + i))
    t = quiet(m)
    assert m.next_deadline() == t
    m.tick(t)
    (data, addr), = m.take_datagrams()
    ping = wire.decode_datagram(data)[0]
    assert isinstance(ping, Ping) and ping.source == "me"
    assert m.next_deadline() == pytest.approx(t + 0.5), "the ack timeout is the next deadline"
    m.tick(t + 0.5)
    sent = [(wire.decode_datagram(d)[0], a) for d, a in m.take_datagrams()]
    relayed = [x for x, _ in sent if isinstance(x, IndirectPing)]
    assert len(relayed) == 3 and all(x.seq == ping.seq for x in relayed)
    retry = [(x, a) for x, a in sent if isinstance(x, Ping)]
    assert retry == [(ping, addr)], "a second direct ping, same seq, goes out with the ping-reqs"
    assert [s.kind for s in m.take_streams()] == ["ping"], "TCP fallback probe goes out with the ping-reqs"
    assert m.next_deadline() == pytest.approx(t + 1.0), "the end of the probe interval is next"
    # One relay says it could not reach the target; two say nothing: we missed 2 nacks.
    feed(m, Nack(ping.seq), now=t + 0.6)
    m.tick(t + 1.0)
    assert m.status_of(ping.target) is Status.SUSPECT
    assert m.awareness.score == 2
    # The next probe starts in the same tick, its timers stretched by (score + 1) = 3.
    nxt = m._probe  # type: ignore[attr-defined]
    assert nxt is not None and nxt.started == t + 1.0
    assert nxt.ack_deadline == pytest.approx(t + 1.0 + 1.5)
    assert nxt.end == pytest.approx(t + 1.0 + 3.0)


def test_a_successful_probe_lowers_awareness() -> None:
    m = machine()
    feed(m, alive("p", 1))
    t = quiet(m)
    m.awareness.apply_delta(3)
    m.tick(t)
    (data, _), = m.take_datagrams()
    ping = wire.decode_datagram(data)[0]
    feed(m, Ack(ping.seq), now=t + 0.1)
    assert m.awareness.score == 2


def test_relay_forwards_ack_and_sends_nack_when_target_is_silent() -> None:
    m = machine()
    feed(m, alive("asker", 1, port=5000))
    t = quiet(m) - 2.0
    (ping,) = feed(m, IndirectPing(77, "t", "10.0.0.9", 9000, "asker", True), src=("10.0.0.5", 5000), now=t)
    assert isinstance(ping[0], Ping) and ping[0].target == "t" and ping[0].seq != 77
    assert m.next_deadline() == pytest.approx(t + 0.8 * 0.5), "Lifeguard nack at 80% of the probe timeout"
    m.tick(t + 0.4)
    ((data, addr),) = m.take_datagrams()
    assert addr == ("10.0.0.5", 5000) and wire.decode_datagram(data) == [Nack(77)]
    # A second relayed probe whose target answers: the ack is forwarded under the asker's seq.
    (ping2,) = feed(m, IndirectPing(78, "t", "10.0.0.9", 9000, "asker", True), src=("10.0.0.5", 5000), now=t + 1)
    (fwd,) = feed(m, Ack(ping2[0].seq), src=("10.0.0.9", 9000), now=t + 1.1)
    assert fwd == [Ack(78, None)]


def test_suspicion_times_out_to_dead_and_confirmations_speed_it_up() -> None:
    m = machine()
    for i in range(30):
        feed(m, alive(f"p{i}", 1, port=8000 + i))
    feed(m, Suspect("p0", 1, "a"), now=10.0)
    base = 4 * max(1, __import__("math").log10(31))
    slow = m._suspicions["p0"].deadline  # type: ignore[attr-defined]
    assert slow == pytest.approx(10.0 + 6 * base)
    feed(m, Suspect("p0", 1, "b"), now=11.0)
    feed(m, Suspect("p0", 1, "c"), now=12.0)
    assert m._suspicions["p0"].deadline == pytest.approx(10.0 + base)  # type: ignore[attr-defined]
    m.tick(10.0 + base + 1e-9)
    assert m.status_of("p0") is Status.DEAD


def test_without_lifeguard_the_suspicion_timeout_is_fixed() -> None:
    m = machine(config=SwimConfig.lan(lifeguard=False))
    for i in range(30):
        feed(m, alive(f"p{i}", 1, port=8000 + i))
    feed(m, Suspect("p0", 1, "a"), now=10.0)
    assert m._suspicions["p0"].deadline == pytest.approx(10.0 + 4 * __import__("math").log10(31))  # type: ignore[attr-defined]


def test_each_update_is_sent_exactly_the_retransmit_limit() -> None:
    q = BroadcastQueue()
    q.queue("a", b"x" * 10)
    sent = 0
    for _ in range(100):
        sent += len(q.take(1000, limit=retransmit_limit(4, 20)))
    assert sent == 8
    q.queue("b", b"old")
    q.queue("b", b"new")
    assert q.take(1000, 3) == [b"new"], "a newer update about the same member replaces the older one"


def test_broadcast_queue_prefers_least_sent_and_respects_budget() -> None:
    q = BroadcastQueue()
    q.queue("a", b"a" * 100)
    q.take(1000, 10)
    q.queue("b", b"b" * 100)
    assert q.take(150, 10) == [b"b" * 100]
    assert q.take(1000, 10) == [b"b" * 100, b"a" * 100], "among equals, the newest goes first"


def test_a_full_queue_drops_the_most_sent_update_but_never_a_protected_one() -> None:
    q = BroadcastQueue(max_items=2, protected=frozenset({"me"}))
    q.queue("me", b"m")
    for _ in range(5):
        q.take(1000, 10)  # "me" has now been sent 5 times: the most of all
    q.queue("a", b"a")
    q.take(1000, 10)
    q.queue("b", b"b")
    q.queue("c", b"c")
    assert len(q) == 3 and q.transmits("a") is None and q.pruned == 1, "a (sent most, not protected) went"
    assert q.transmits("me") == 6 and q.transmits("b") == 0 and q.transmits("c") == 0


def test_kept_updates_are_never_dropped_and_do_not_count_against_the_bound() -> None:
    # A mass failure queues a suspicion or death per crashed member: all must get out, and
    # they must not push out the few joins and metadata updates the bound leaves room for.
    q = BroadcastQueue(max_items=2)
    for i in range(10):
        q.queue(f"dead-{i}", b"d", keep=True)
        q.take(1000, 100)
    q.queue("update-1", b"u")
    q.queue("update-2", b"u")
    assert len(q) == 12 and q.pruned == 0
    q.take(1000, 100)
    q.queue("update-3", b"u")
    assert q.pruned == 1 and len(q) == 12
    assert all(q.transmits(f"dead-{i}") is not None for i in range(10)), "no kept item went"
    assert q.transmits("update-3") == 0


def test_suspicions_deaths_and_refutations_are_queued_to_be_kept() -> None:
    m = machine(config=SwimConfig.lan(max_queued_updates=1))
    for name in ("x", "y", "z", "w"):
        feed(m, alive(name, 1))  # joins: droppable, so only the newest one is still queued
    feed(m, Suspect("x", 1, "y"))
    feed(m, Dead("y", 1, "z"))
    feed(m, Suspect("z", 1, "y"))
    feed(m, alive("z", 2))  # z refutes
    feed(m, alive("w", 2))  # a metadata update: droppable
    assert m.broadcasts_queued() == 1 + 3 + 1, "own alive, 3 kept verdicts, 1 droppable update"


def test_push_pull_merge_turns_remote_dead_into_local_suspect() -> None:
    m = machine()
    for name in ("x", "y", "z"):
        feed(m, alive(name, 1))
    reply = PushPullReply(
        "rmap2p",
        (),
        (
            MemberState(alive("x", 1), Status.DEAD, 1),
            MemberState(alive("y", 1), Status.LEFT, 1),
            MemberState(alive("z", 2), Status.ALIVE, 2),
            MemberState(alive("me", 0), Status.DEAD, 0),
            MemberState(alive("new", 5), Status.ALIVE, 5),
        ),
    )
    token = m.join(("10.0.0.3", 1), 0.0)
    assert m.stream_reply(token, wire.encode_frame(reply), 0.0)
    assert m.status_of("x") is Status.SUSPECT, "one peer's word is grounds for suspicion, not death"
    assert m.status_of("y") is Status.LEFT
    assert m.incarnation_of("z") == 2
    assert m.status_of("new") is Status.ALIVE
    assert m.incarnation == 1, "we refute our own death when a push-pull reports it"


def test_push_pull_reply_sends_only_what_differs() -> None:
    a, b = machine("a"), machine("b")
    for name in ("x", "y"):
        feed(a, alive(name, 3))
        feed(b, alive(name, 3))
    feed(b, alive("y", 4))
    a.take_streams()
    token = a.push_pull(b.addr, 0.0)
    req = a.take_streams()[-1]
    reply_frame = b.handle_stream(req.payload, a.addr, 0.0)
    reply = wire.decode_frame(reply_frame)
    sent = sorted(s.alive.node for s in reply.states)  # type: ignore[union-attr]
    assert sent == ["b", "y"], "only b's own state and the newer y travel, not x"
    assert [e.node for e in reply.digest] == ["a"]  # type: ignore[union-attr]
    assert a.stream_reply(token, reply_frame, 0.0)
    (third,) = a.take_streams()
    assert third.kind == "states" and not third.expect_reply
    b.handle_stream(third.payload, a.addr, 0.0)
    assert b.status_of("a") is Status.ALIVE


def test_join_reply_shows_the_joiner_our_record_at_its_own_incarnation() -> None:
    b = machine("b")
    feed(b, alive("twin", 4, port=9000))
    twin = Membership(SwimConfig.lan(), UnsignedIdentity("twin"), accept_unsigned, ("10.0.0.9", 7000), NodeMeta(), random.Random(3), 0.0, incarnation=4)
    twin.join(b.addr, 0.0)
    req = twin.take_streams()[-1]
    reply = b.handle_stream(req.payload, twin.addr, 0.0)
    assert twin.stream_reply(req.token, reply, 0.0)
    conflicts = [e for e in twin.take_events() if e.kind == "conflict"]
    assert conflicts and conflicts[0].detail == "10.0.0.2:9000", "same id and incarnation at another address"


def test_join_reply_with_an_older_record_of_the_joiner_prompts_an_identity_check() -> None:
    b = machine("b")
    feed(b, alive("twin", 3, port=9000))
    twin = Membership(SwimConfig.lan(), UnsignedIdentity("twin"), accept_unsigned, ("10.0.0.9", 7000), NodeMeta(), random.Random(3), 0.0, incarnation=4)
    twin.join(b.addr, 0.0)
    req = twin.take_streams()[-1]
    assert twin.stream_reply(req.token, b.handle_stream(req.payload, twin.addr, 0.0), 0.0)
    pings = [(wire.decode_datagram(d), a) for d, a in twin.take_datagrams() if a == ("10.0.0.2", 9000)]
    assert pings and isinstance(pings[0][0][0], Ping) and pings[0][0][0].target == "twin"


def test_an_older_record_of_ourselves_elsewhere_is_checked_by_a_ping() -> None:
    m = machine(inc=5)
    (ping,) = feed(m, alive("me", 2, port=9999))
    assert isinstance(ping[0], Ping) and ping[0].target == "me", "ask that address whether it is us"
    assert not [e for e in m.take_events() if e.kind == "conflict"]
    feed(m, Ack(ping[0].seq), src=("10.0.0.2", 9999))
    (conflict,) = [e for e in m.take_events() if e.kind == "conflict"]
    assert conflict.detail == "10.0.0.2:9999" and conflict.record is not None


def test_push_pull_across_clusters_is_refused() -> None:
    a = machine("a")
    b = Membership(SwimConfig.lan(), UnsignedIdentity("b"), accept_unsigned, ("10.0.0.2", 1), NodeMeta(), random.Random(2), 0.0, cluster="other")
    token = a.join(b.addr, 0.0)
    req = a.take_streams()[-1]
    assert b.handle_stream(req.payload, a.addr, 0.0) is None
    assert not a.stream_reply(token, None, 0.0)
    assert b.status_of("a") is None


def test_event_and_stream_kinds_are_the_strings_drivers_compare() -> None:
    # The daemon and services compare kinds with plain strings and log them with %s; the
    # simulator formats them into the event log it digests. All must see the old strings.
    assert {k.value for k in EventKind} == {"joined", "updated", "suspect", "alive", "dead", "left", "reaped", "conflict"}
    assert all(k == k.value and f"{k}" == k.value and "%s" % k == k.value for k in EventKind)  # noqa: UP031
    assert {k.value for k in StreamKind} == {"push-pull", "states", "ping"}
    m = machine()
    feed(m, alive("p", 1))
    feed(m, Dead("p", 1, "p"))
    kinds = [e.kind for e in m.take_events()]
    assert kinds == [EventKind.JOINED, EventKind.LEFT] and kinds == ["joined", "left"]
    assert all(type(k) is EventKind for k in kinds)
    m.push_pull(("10.0.0.3", 1), 0.0)
    (req,) = m.take_streams()
    assert req.kind is StreamKind.PUSH_PULL and req.kind == "push-pull"


def test_garbage_is_counted_not_raised() -> None:
    m = machine()
    m.receive(b"\x01\xc1garbage", ("1.2.3.4", 5), 0.0)
    m.receive(b"", ("1.2.3.4", 5), 0.0)
    assert m.handle_stream(b"\x07", ("1.2.3.4", 5), 0.0) is None
    assert m.stats.malformed == 3


# ------------------------------------------------------------------ whole clusters


def test_cluster_converges_detects_a_crash_and_takes_a_restart_back() -> None:
    c = Cluster(12, seed=5)
    assert c.run_until(c.converged, 10)
    c.crash(7)
    t0 = c.now
    n = 12
    cfg = c.config
    bound = cfg.suspicion_max_mult * cfg.suspicion_mult * max(1, __import__("math").log10(n)) * cfg.probe_interval
    assert c.run_until(lambda: c.all_see(7, Status.DEAD), bound + 5)
    assert c.now - t0 < bound + 5
    c.restart(7)
    assert c.run_until(lambda: c.all_see(7, Status.ALIVE), 10)
    assert c.nodes[0].incarnation_of(c.nodes[7].id) >= 1
    false = [e for _, e in c.events if e.kind == "dead" and e.node != c.nodes[7].id]
    assert not false


def test_leave_is_left_not_dead() -> None:
    c = Cluster(8, seed=2)
    assert c.run_until(c.converged, 10)
    c.nodes[3].leave(c.now)
    c.flush(3)
    assert c.run_until(lambda: c.all_see(3, Status.LEFT), 5)
    c.crash(3)
    c.run_for(60)
    assert c.all_see(3, Status.LEFT), "a member that left is never reported dead afterwards"


def test_a_leave_with_a_probe_in_flight_leaves_no_deadline_in_the_past() -> None:
    m = machine()
    for i in range(4):
        feed(m, alive(f"p{i}", 1, port=8000 + i))
    t = quiet(m)
    m.tick(t)
    assert m._probe is not None, "a probe is in flight"  # type: ignore[attr-defined]
    m.take_datagrams()
    now = t + 0.1
    m.leave(now)
    sent = [x for d, _ in m.take_datagrams() for x in wire.decode_datagram(d)]
    for _ in range(100):
        d = m.next_deadline()
        if d is None:
            break
        now = max(now, d)
        m.tick(now)
        after = m.next_deadline()
        assert after is None or after > now, f"tick({now}) left the deadline at {after}"
        sent += [x for d, _ in m.take_datagrams() for x in wire.decode_datagram(d)]
    else:
        pytest.fail("a leaving machine kept a deadline for ever")
    assert not m.broadcasts_queued(), "the machine goes quiet once its leave is out"
    leaves = [x for x in sent if isinstance(x, Dead) and x.node == "me" and x.accuser == "me"]
    assert len(leaves) >= retransmit_limit(SwimConfig.lan().retransmit_mult, 5), "the leave went out in full"
    assert not [x for x in sent if isinstance(x, (Ping, IndirectPing))], "a leaving machine probes no more"


def _states(c: Cluster) -> set[str]:
    """What the machines of ``c`` are doing now, in the words of the deadline test."""
    found = set()
    for i, m in enumerate(c.nodes):
        if i in c.crashed:
            continue
        if m.leaving:
            found.add("left" if m.next_deadline() is None else "leaving")
            continue
        found.add("alive" if m.num_active() > 1 else "joining")
        if m._probe is not None:  # type: ignore[attr-defined]
            found.add("probing")
        if m._suspicions:  # type: ignore[attr-defined]
            found.add("suspecting")
        if m._reap_queue:  # type: ignore[attr-defined]
            found.add("reaping")
    return found


def test_next_deadline_is_later_than_now_after_every_tick_in_every_state() -> None:
    # The Cluster checks every tick (see tests/cluster.py); this run walks every node through
    # joining, probing, suspicion and death of a crashed peer, reaping, a leave with its probe
    # in flight, the quiet after the leave, and a restart, under loss.
    c = Cluster(12, seed=4, loss=0.05, config=SwimConfig.lan(reap_after=10.0), auto_join=False)
    seen: set[str] = set()
    for i in range(1, 12):
        c.nodes[i].join(c.nodes[0].addr, c.now)
        c.flush(i)
        c.run_for(0.05)
        seen |= _states(c)
    assert c.run_until(lambda: (seen.update(_states(c)), c.converged())[1], 30)
    c.crash(2)
    assert c.run_until(lambda: (seen.update(_states(c)), c.all_see(2, Status.DEAD))[1], 60)
    assert c.run_until(lambda: c.nodes[3]._probe is not None, 5)  # type: ignore[attr-defined]
    c.leave(3)
    assert c.nodes[3].broadcasts_queued(), "more retransmissions are due than leave() sends at once"
    assert c.run_until(lambda: (seen.update(_states(c)), c.all_see(3, Status.LEFT))[1], 10)
    assert c.run_until(lambda: (seen.update(_states(c)), c.nodes[3].next_deadline() is None)[1], 10)
    seen |= _states(c)
    c.run_for(15)  # past reap_after: the dead and the left are reaped
    seen |= _states(c)
    c.restart(2)
    assert c.run_until(lambda: (seen.update(_states(c)), c.all_see(2, Status.ALIVE, [j for j in range(12) if j != 3]))[1], 30)
    kinds = {e.kind for _, e in c.events}  # type: ignore[attr-defined]
    assert {"joined", "suspect", "dead", "left", "reaped"} <= kinds
    assert {"joining", "alive", "probing", "suspecting", "reaping", "leaving", "left"} <= seen
    assert not c.late_deadlines


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    loss=st.sampled_from([0.0, 0.1, 0.3]),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["crash", "leave", "restart", "partition", "heal", "update"]),
            st.integers(0, 4),
            st.floats(0.0, 12.0),
        ),
        max_size=8,
    ),
)
def test_no_tick_leaves_a_deadline_due_whatever_happens(seed: int, loss: float, steps: list) -> None:
    c = Cluster(5, seed=seed, loss=loss, config=SwimConfig.local(reap_after=8.0))
    for op, i, wait in steps:
        live = [j for j in c.live() if not c.nodes[j].leaving]
        if op == "crash" and len(live) > 1:
            c.crash(i)
        elif op == "leave" and i in live and len(live) > 1:
            c.leave(i)
        elif op == "restart" and (i in c.crashed or c.nodes[i].leaving) and live:
            c.restart(i)
        elif op == "partition":
            c.partition([j for j in range(5) if j <= i], [j for j in range(5) if j > i])
        elif op == "heal":
            c.heal()
        elif op == "update" and i in live:
            c.nodes[i].update_meta(NodeMeta(name=f"node-{i}", worker_type="gpu" if c.now % 2 < 1 else "cpu"), c.now)
            c.flush(i)
        c.run_for(wait)
    c.heal()
    c.run_for(30)
    assert not c.late_deadlines


def test_no_false_deaths_under_ten_percent_loss() -> None:
    c = Cluster(16, seed=11, loss=0.10)
    assert c.run_until(c.converged, 30)
    c.run_for(300)
    assert not [e for _, e in c.events if e.kind == "dead"]
    assert c.converged()


def test_healed_partition_merges_back() -> None:
    c = Cluster(8, seed=4)
    assert c.run_until(c.converged, 10)
    c.partition([0, 1, 2, 3, 4], [5, 6, 7])
    assert c.run_until(lambda: c.all_see(6, Status.DEAD, [0, 1, 2, 3, 4]) and c.all_see(0, Status.DEAD, [5, 6, 7]), 120)
    c.heal()
    t0 = c.now
    assert c.run_until(c.converged, 2 * c.config.push_pull_interval)
    assert c.now - t0 <= 2 * c.config.push_pull_interval


def test_same_seed_same_run() -> None:
    def trace(seed: int) -> list:
        c = Cluster(10, seed=seed, loss=0.05)
        c.run_for(20)
        c.crash(2)
        c.run_for(30)
        return [(j, e.kind, e.node, e.incarnation, round(e.at, 9)) for j, e in c.events]

    assert trace(9) == trace(9)
    assert trace(9) != trace(10)


def test_an_ack_to_the_retried_direct_ping_ends_the_probe() -> None:
    m = machine()
    for i in range(5):
        feed(m, alive(f"p{i}", 1, port=8000 + i))
    t = quiet(m)
    m.tick(t)
    (data, _), = m.take_datagrams()
    ping = wire.decode_datagram(data)[0]
    m.tick(t + 0.5)
    m.take_datagrams()
    feed(m, Ack(ping.seq, Load()), now=t + 0.7)
    m.tick(t + 1.0)
    assert m.status_of(ping.target) is Status.ALIVE and m.stats.probe_failures == 0


def test_probing_a_suspect_puts_the_suspicion_before_the_ping() -> None:
    # The target handles its compound in order: it refutes first, so the ack it sends
    # for the ping carries its new alive back to the prober.
    m = machine()
    feed(m, alive("p", 1))
    feed(m, Suspect("p", 1, "q"))
    probes: list = []
    for _ in range(20):
        m.tick(m.next_deadline())  # type: ignore[arg-type]
        sent = [wire.decode_datagram(d) for d, _ in m.take_datagrams()]
        probes = [p for p in sent if any(isinstance(x, Ping) for x in p)]
        if probes:
            break
    assert m.status_of("p") is Status.SUSPECT
    assert isinstance(probes[0][0], Suspect) and probes[0][0].node == "p"
    assert isinstance(probes[0][1], Ping)


def test_a_joiner_regossips_nothing_from_its_seed_and_asks_a_second_member_soon() -> None:
    m = machine()
    queued = m.broadcasts_queued()  # our own alive, with nobody yet to tell
    reply = PushPullReply("rmap2p", (), tuple(MemberState(alive(f"p{i}", 2), Status.ALIVE, 2) for i in range(20)))
    token = m.join(("10.0.0.3", 1), 10.0)
    assert m.stream_reply(token, wire.encode_frame(reply), 10.0)
    assert all(m.status_of(f"p{i}") is Status.ALIVE for i in range(20))
    assert m.broadcasts_queued() == queued, "the pool already knows what the seed told us"
    follow_up = SwimConfig.lan().join_follow_up
    assert m.next_deadline() is not None
    m.take_streams()
    t = 10.0
    while t < 10.0 + follow_up:
        t = m.next_deadline()  # type: ignore[assignment]
        m.tick(t)
        m.take_datagrams()
        if any(s.kind == "push-pull" for s in m.take_streams()):
            break
    assert 10.0 < t <= 10.0 + follow_up, "a second push-pull follows the join within join_follow_up"

    # A periodic push-pull (not a join) does re-gossip news: that is how a healed partition spreads.
    token = m.push_pull(("10.0.0.3", 1), t)
    news = PushPullReply("rmap2p", (), (MemberState(alive("late", 1), Status.ALIVE, 1),))
    before = m.broadcasts_queued()
    assert m.stream_reply(token, wire.encode_frame(news), t)
    assert m.broadcasts_queued() == before + 1


def test_catch_ups_merge_quietly_and_end_once_the_two_views_agree() -> None:
    cfg = SwimConfig.lan()
    m = machine(config=cfg)
    seed = PushPullReply("rmap2p", (), tuple(MemberState(alive(f"p{i}", 1), Status.ALIVE, 1) for i in range(40)))
    token = m.join(("10.0.0.3", 1), 0.0)
    assert m.stream_reply(token, wire.encode_frame(seed), 0.0)
    m.take_streams()

    def next_push_pull(since: float) -> tuple[float, int]:
        t = since
        for _ in range(10_000):
            t = m.next_deadline()  # type: ignore[assignment]
            m.tick(t)
            m.take_datagrams()
            pulls = [r for r in m.take_streams() if r.kind == "push-pull"]
            if pulls:
                return t, pulls[0].token
        raise AssertionError("no push-pull")

    # First catch-up: it brings a member the seed did not know. A joiner's catch-up is old news
    # to the pool (its peer has it), so it is merged without being queued for gossip.
    t1, token = next_push_pull(0.0)
    before = m.broadcasts_queued()
    late = PushPullReply("rmap2p", (), (MemberState(alive("late", 1), Status.ALIVE, 1),))
    assert m.stream_reply(token, wire.encode_frame(late), t1)
    assert m.status_of("late") is Status.ALIVE and m.broadcasts_queued() == before

    # Second catch-up, at a doubled gap: nothing new for us, but the peer lacks a member we hold.
    # Its view is behind ours, so likely behind the pool's too: not proof we have caught up.
    t2, token = next_push_pull(t1)
    assert t2 - t1 > 0.5 * cfg.join_follow_up
    behind = PushPullReply("rmap2p", (make_digest_entry(("p3", 1, Status.ALIVE)),), ())
    assert m.stream_reply(token, wire.encode_frame(behind), t2)
    t3, token = next_push_pull(t2)
    assert t3 - t2 > cfg.join_follow_up and t3 - t2 < 0.5 * cfg.push_pull_period(m.num_active())

    # Third catch-up: the two views are equal. Catching up is over, and the next
    # push-pull is a periodic one, at least half a normal period away.
    assert m.stream_reply(token, wire.encode_frame(PushPullReply("rmap2p", (), ())), t3)
    period = cfg.push_pull_period(m.num_active())
    t4, _ = next_push_pull(t3)
    assert t4 - t3 >= 0.5 * period


def test_a_joiner_asks_its_seed_again_soon_for_those_who_joined_with_it() -> None:
    # Nodes that join through the same seed at the same moment reach it just after our join
    # reply left: the seed is the one member sure to know them all a moment later.
    cfg = SwimConfig.lan()
    m = machine(config=cfg, now=10.0)
    seed = ("10.0.0.3", 1)
    reply = PushPullReply("rmap2p", (), tuple(MemberState(alive(f"p{i}", 1), Status.ALIVE, 1) for i in range(5)))
    token = m.join(seed, 10.0)
    assert m.stream_reply(token, wire.encode_frame(reply), 10.0)
    m.take_streams()
    pulls: list = []
    t = 10.0
    while not pulls:
        t = m.next_deadline()  # type: ignore[assignment]
        m.tick(t)
        m.take_datagrams()
        pulls = [r for r in m.take_streams() if r.kind == "push-pull"]
    assert 10.0 < t <= 10.0 + cfg.join_seed_follow_up
    (follow,) = pulls
    assert follow.addr == seed and not wire.decode_frame(follow.payload).join
    # It brings one who joined with us; merged quietly (the seed gossips it), and an answer
    # equal to our view does not end catching up: the seed's view is ours of a moment ago.
    before = m.broadcasts_queued()
    news = PushPullReply("rmap2p", (), (MemberState(alive("twin", 1), Status.ALIVE, 1),))
    assert m.stream_reply(follow.token, wire.encode_frame(news), t)
    assert m.status_of("twin") is Status.ALIVE and m.broadcasts_queued() == before
    assert m._catch_up > 0  # type: ignore[attr-defined]


def test_a_joiner_announces_itself_to_the_members_its_seed_named() -> None:
    # The pool hears of a join from the seed's gossip, a few datagrams a tick: when a dozen
    # nodes join within a second, a member could miss one until its next catch-up.
    cfg = SwimConfig.lan()
    m = machine(config=cfg, now=10.0)
    seed = ("10.0.0.3", 1)
    def joined(m: Membership, pool: int) -> set:
        states = tuple(MemberState(alive(f"p{i}", 1, port=8000 + i), Status.ALIVE, 1) for i in range(pool))
        token = m.join(seed, 10.0)
        assert m.stream_reply(token, wire.encode_frame(PushPullReply("rmap2p", (), states)), 10.0)
        sent = m.take_datagrams()
        return {a for d, a in sent if any(isinstance(x, Alive) and x.node == "me" for x in wire.decode_datagram(d))}

    to = joined(m, 20)
    assert len(to) == 20 and seed not in to, "a small pool: every member hears of us at once"
    # A big pool relies on gossip: 32 announcements per join crowded the queues of a join storm.
    assert not joined(machine(config=cfg, now=10.0), cfg.join_announce + 1)
    assert not joined(machine(config=SwimConfig.lan(join_announce=0), now=10.0), 20)


def test_a_seed_catches_up_after_serving_a_join() -> None:
    # In a join storm the bounded queues drop joins that only anti-entropy carries: the pool's
    # first node, which never joins, must pull them too.
    from membership.messages import PushPull

    cfg = SwimConfig.lan()
    m = machine(config=cfg, now=100.0)
    for i in range(40):
        feed(m, alive(f"p{i}", 1, port=8000 + i), now=100.0)
    m._next_push_pull = 1000.0  # type: ignore[attr-defined]
    digest = (make_digest_entry(("joiner", 0, Status.ALIVE)),)
    reply = m.handle_stream(wire.encode_frame(PushPull("rmap2p", True, digest)), ("10.0.0.9", 1), 100.0)
    assert reply is not None
    t = 100.0
    pulls: list = []
    while not pulls and t < 100.0 + cfg.join_follow_up:
        t = m.next_deadline()  # type: ignore[assignment]
        m.tick(t)
        m.take_datagrams()
        pulls = [r for r in m.take_streams() if r.kind == "push-pull"]
    assert pulls and 100.0 < t <= 100.0 + cfg.join_follow_up


def test_a_suspicion_learned_by_push_pull_names_no_witness() -> None:
    # In a cold start every join reply carries the suspicions of the moment. Were each merging
    # node to accuse in its own name, one lost ack would gather hundreds of "independent"
    # confirmations and cut the timer to its minimum before the suspect heard of it.
    m = machine()
    for i in range(30):
        feed(m, alive(f"p{i}", 1, port=8000 + i))
    token = m.push_pull(("10.0.0.3", 1), 0.0)
    reply = PushPullReply("rmap2p", (), (MemberState(alive("p0", 1), Status.SUSPECT, 1),))
    assert m.stream_reply(token, wire.encode_frame(reply), 0.0)
    timer = m._suspicions["p0"]  # type: ignore[attr-defined]
    assert m.status_of("p0") is Status.SUSPECT and timer.confirmations == 0
    longest = timer.deadline
    gossiped = [x for d, _ in m.take_datagrams() for x in wire.decode_datagram(d) if isinstance(x, Suspect)]
    m.tick(m._next_gossip)  # type: ignore[attr-defined]
    gossiped += [x for d, _ in m.take_datagrams() for x in wire.decode_datagram(d) if isinstance(x, Suspect)]
    assert gossiped and all(x.accuser == "p0" for x in gossiped), "passed on as no one's accusation"
    # Another merged copy confirms nothing; the first real accuser is the claim, the second confirms.
    feed(m, Suspect("p0", 1, "p0"))
    feed(m, Suspect("p0", 1, "a"))
    assert timer.confirmations == 0 and timer.deadline == longest
    feed(m, Suspect("p0", 1, "b"))
    assert timer.confirmations == 1 and timer.deadline < longest

    # A peer's suspect about us, passed on by push-pull, is still refuted.
    inc = m.incarnation
    feed(m, Suspect("me", inc, "me"))
    assert m.incarnation == inc + 1


def test_a_lost_join_is_retried_by_the_machine_once_someone_joined_through_us() -> None:
    cfg = SwimConfig.lan()
    m = machine(config=cfg, now=10.0)
    seed = ("10.0.0.3", 1)
    token = m.join(seed, 10.0)
    m.take_streams()
    for i in range(30):  # nodes that joined through us while our own join was under way
        feed(m, alive(f"later{i}", 1, port=8000 + i), now=10.5)
    # The connection to the seed times out.
    assert not m.stream_reply(token, None, 20.0)
    sent = []
    t = 20.0
    while t < 20.0 + 2 * cfg.join_follow_up:
        t = m.next_deadline()  # type: ignore[assignment]
        m.tick(t)
        m.take_datagrams()
        sent += [(t, r) for r in m.take_streams() if r.kind == "push-pull" and r.addr == seed]
    assert sent, "the seed is asked again: an island of late joiners must not stay one"
    (t1, retry), *_ = sent
    assert wire.decode_frame(retry.payload).join
    # It fails again: the next try waits longer. A reply ends the retries.
    assert not m.stream_reply(retry.token, None, t1)
    t2 = min(w for w, _ in m._rejoin.values())  # type: ignore[attr-defined]
    assert t2 - t1 >= cfg.join_follow_up, "the gap doubles"
    while True:
        t = m.next_deadline()  # type: ignore[assignment]
        m.tick(t)
        m.take_datagrams()
        again = [r for r in m.take_streams() if r.kind == "push-pull" and r.addr == seed]
        if again:
            break
    reply = PushPullReply("rmap2p", (), (MemberState(alive("p0", 1), Status.ALIVE, 1),))
    assert m.stream_reply(again[0].token, wire.encode_frame(reply), t)
    assert not m._rejoin  # type: ignore[attr-defined]
    # Those who joined through us hold our view of then: we push-pull them the pool at once.
    told = {r.addr for r in m.take_streams() if r.kind == "push-pull"}
    assert len(told) == 8 and told <= {("10.0.0.2", 8000 + i) for i in range(30)}


def test_an_unconfirmed_suspicion_gets_a_last_direct_check_before_death() -> None:
    m = machine()
    for i in range(30):
        feed(m, alive(f"p{i}", 1, port=8000 + i))
    feed(m, Suspect("p0", 1, "a"), now=10.0)
    slow = m._suspicions["p0"].deadline  # type: ignore[attr-defined]
    m.take_datagrams()
    m.tick(slow)
    to_p0 = [wire.decode_datagram(d) for d, a in m.take_datagrams() if a == ("10.0.0.2", 8000)]
    assert m.status_of("p0") is Status.SUSPECT, "no confirmation came: ask the suspect itself first"
    assert any(isinstance(p[0], Suspect) and isinstance(p[1], Ping) for p in to_p0)
    assert m.stats.last_chance_checks == 1
    # Silence: it is dead one probe interval later, and there is no second last chance.
    m.tick(slow + 1.0)
    assert m.status_of("p0") is Status.DEAD

    # A suspect that answers the check with its refutation stays.
    feed(m, Suspect("p1", 1, "a"), now=100.0)
    slow = m._suspicions["p1"].deadline  # type: ignore[attr-defined]
    m.tick(slow)
    feed(m, alive("p1", 2, port=8001), src=("10.0.0.2", 8001), now=slow + 0.01)
    m.tick(slow + 1.0)
    assert m.status_of("p1") is Status.ALIVE


def test_a_marked_load_change_travels_as_a_signed_summary_within_the_budget() -> None:
    from membership.messages import LoadSummary

    cfg = SwimConfig.lan()
    m = machine(config=cfg)
    for i in range(49):
        feed(m, alive(f"p{i}", 1, port=8000 + i))
    period = cfg.load_gossip_period(m.num_active())
    assert period == pytest.approx(50 * cfg.load_retransmits * 104 / cfg.load_gossip_budget)
    t = quiet(m)
    inc = m.incarnation
    m.update_load(Load(cpu_percent=90), t)
    assert m.broadcasts_queued() == 0, "not before one period since the last summary (or alive)"
    m.update_load(Load(cpu_percent=5), period + 1.0)
    assert m.broadcasts_queued() == 0, "no marked change against what was last gossiped"
    m.update_load(Load(cpu_percent=90), period + 2.0)
    assert m.incarnation == inc, "load is not an alive: no new incarnation, no metadata re-sent"
    sent = 0
    for _ in range(50):
        m.tick(m.next_deadline())  # type: ignore[arg-type]
        for data, _ in m.take_datagrams():
            sent += sum(isinstance(x, LoadSummary) for x in wire.decode_datagram(data))
    assert sent == cfg.load_retransmits


def test_a_load_summary_is_checked_ordered_and_forwarded_a_few_times() -> None:
    from membership.messages import LoadSummary

    verify = lambda node, pk, payload, sig: sig == b"\x02" * 64  # noqa: E731
    m = machine(verify=verify)
    feed(m, Alive("p", 3, "10.0.0.2", 8000, NodeMeta(load=Load(10)).encode(), bytes(32), b"\x02" * 64))
    quiet(m)
    [view] = [v for v in m.members() if v.node == "p"]
    assert view.load.cpu_percent == 10
    feed(m, LoadSummary("p", 3, 1, Load(80), b"\x00" * 64))
    assert m.stats.rejected == 1 and next(v for v in m.members() if v.node == "p").load.cpu_percent == 10
    feed(m, LoadSummary("p", 3, 2, Load(80), b"\x02" * 64))
    assert next(v for v in m.members() if v.node == "p").load.cpu_percent == 80
    assert m.broadcasts_queued() == 1, "forwarded"
    feed(m, LoadSummary("p", 3, 1, Load(20), b"\x02" * 64))
    feed(m, LoadSummary("p", 2, 9, Load(20), b"\x02" * 64))
    assert next(v for v in m.members() if v.node == "p").load.cpu_percent == 80, "older seq or incarnation: stale"


def test_news_goes_to_the_two_ring_successors_first() -> None:
    m = machine()  # id "me"
    names = ["a", "b", "mf", "n", "o", "z"]
    for i, name in enumerate(names):
        feed(m, alive(name, 1, port=8000 + i))
    feed(m, Dead("mf", 1, "x"))  # a down member is skipped on the ring
    t = quiet(m)
    addr_of = {("10.0.0.2", 8000 + i): name for i, name in enumerate(names)}
    feed(m, Suspect("z", 1, "q"), now=t)
    m.tick(m.next_deadline())  # type: ignore[arg-type]
    got = [addr_of[a] for d, a in m.take_datagrams() if any(isinstance(x, Suspect) for x in wire.decode_datagram(d))]
    assert got[:2] == ["n", "o"] and len(got) == 3, got


# ---------------------------------------------------------------- warm starts


def _warm_cluster(n: int, seed: int = 1) -> Cluster:
    c = Cluster(n, seed=seed, auto_join=False)
    records = [m.alive_record(m.id) for m in c.nodes]
    view = ConvergedView.of(records, accept_unsigned)  # type: ignore[arg-type]
    for m in c.nodes:
        m.install_view(view, c.now)
    c.flush()
    return c


def test_an_installed_view_is_converged_quiet_and_shared() -> None:
    c = _warm_cluster(6)
    assert c.converged()
    assert all(m.broadcasts_queued() == 0 for m in c.nodes), "nothing left to gossip"
    assert all(m.num_active() == 6 and not m.take_events() for m in c.nodes)
    assert c.nodes[1]._ring is c.nodes[2]._ring, "one sorted ring for all until one changes"  # type: ignore[attr-defined]
    deadlines = [m.next_deadline() for m in c.nodes]
    assert all(d is not None and 0 < d <= 1.0 for d in deadlines), "the first probe within one interval"
    # It stays converged, and a crash is detected as in a pool that joined the long way.
    c.run_for(20)
    assert c.converged() and not c.late_deadlines
    c.crash(4)
    assert c.run_until(lambda: c.all_see(4, Status.DEAD), 60)


def test_install_view_takes_the_probe_order_and_phases_given() -> None:
    names = ["me", "a", "b", "c"]
    others = [machine(name) for name in names[1:]]
    m = machine()
    view = ConvergedView.of([m.alive_record("me")] + [o.alive_record(o.id) for o in others], accept_unsigned)  # type: ignore[list-item]
    m.install_view(view, 0.0, probe_order=["c", "a"], next_push_pull=123.0, last_load_gossip=-5.0)
    assert [x.node for x in m.members() if x.node != "me"] == ["a", "b", "c"], "the view's order"
    assert m._ids == ["a", "b", "c"]  # type: ignore[attr-defined]
    probed = []
    now = 0.0
    while len(probed) < 2:
        now = m.next_deadline()  # type: ignore[assignment]
        assert now < 123.0
        m.tick(now)
        for d, _ in m.take_datagrams():
            probed += [x.target for x in wire.decode_datagram(d) if isinstance(x, Ping)]
        m._probe = None  # type: ignore[attr-defined]  # nobody answers here: skip to the next probe
    assert probed[:2] == ["c", "a"]
    assert m._next_push_pull == 123.0 and m._last_load_gossip == -5.0  # type: ignore[attr-defined]


def test_install_view_refuses_a_used_machine_or_a_view_without_us() -> None:
    a, b = machine("a"), machine("b")
    view = ConvergedView.of([a.alive_record("a"), b.alive_record("b")], accept_unsigned)  # type: ignore[list-item]
    with pytest.raises(LocalProtocolError, match="own current record"):
        machine("me").install_view(view, 0.0)
    a.update_meta(NodeMeta(name="a", worker_type="gpu"), 0.0)
    with pytest.raises(LocalProtocolError, match="own current record"):
        a.install_view(view, 0.0)
    feed(b, alive("p", 1))
    with pytest.raises(LocalProtocolError, match="fresh machine"):
        b.install_view(view, 0.0)


def test_a_converged_view_checks_each_record_once() -> None:
    a = machine("a")
    rec = a.alive_record("a")
    with pytest.raises(LocalProtocolError, match="twice"):
        ConvergedView.of([rec, rec], accept_unsigned)  # type: ignore[list-item]
    with pytest.raises(LocalProtocolError, match="signature"):
        ConvergedView.of([rec], lambda *_: False)  # type: ignore[list-item]
    view = ConvergedView.of([rec, alive("p", 1)], accept_unsigned)  # type: ignore[list-item]
    assert len(view) == 2 and view.ring == ["a", "p"] and view.index == {"a": 0, "p": 1}


def test_shared_caches_intern_records_once_for_every_machine() -> None:
    caches = SharedCaches()
    cfg = SwimConfig.lan()

    checked: list[str] = []

    def verify(node: str, *_: object) -> bool:
        checked.append(node)
        return node == "x"

    def make(name: str, port: int) -> Membership:
        return Membership(cfg, UnsignedIdentity(name), verify, ("10.0.0.1", port), NodeMeta(name=name),
                          random.Random(1), 0.0, shared=caches)

    x, y, z = make("x", 1), make("y", 2), make("w", 3)
    data = wire.encode_datagram([x.alive_record("x")])  # type: ignore[list-item]
    y.receive(data, ("10.0.0.1", 1), 0.0)
    z.receive(data, ("10.0.0.1", 1), 0.0)
    assert checked == ["x"], "verified by the first machine only"
    assert y.alive_record("x") is z.alive_record("x"), "one object for every machine"
    assert caches.decode_memo, "the decode memo is shared too"
    caches.intern([z.alive_record("w")])  # type: ignore[list-item]
    y.receive(wire.encode_datagram([z.alive_record("w")]), ("10.0.0.1", 3), 0.0)  # type: ignore[list-item]
    assert y.status_of("w") is Status.ALIVE and checked == ["x"], "a record the driver interned is taken as is"


def test_check_alive_gets_fresh_evidence_from_several_members_at_once_and_never_against() -> None:
    c = Cluster(6, seed=3)
    assert c.run_until(c.converged, 10)
    c.crash(5)
    me, ids = c.nodes[0], [n.id for n in c.nodes]
    seen = lambda node: next(m.last_seen for m in me.members() if m.node == node)  # noqa: E731
    asked_at = c.now
    before = {n: seen(n) for n in ids[1:]}
    assert all(t is None or t <= asked_at for t in before.values())
    assert me.check_alive(ids[1:], c.now) == 5
    c.flush(0)
    assert me.check_alive(ids[1:], c.now) == 0, "a check in flight is not sent twice"
    c.run_for(0.05)  # a few round trips, far less than one probe interval per member
    assert all(seen(n) is not None and seen(n) >= asked_at for n in ids[1:5]), "every live member answered"
    assert seen(ids[5]) == before[ids[5]], "the crashed member did not"
    assert me.status_of(ids[5]) is Status.ALIVE, "no answer is no verdict: suspicion is the probes' job"
    assert me.check_alive([me.id], c.now) == 0
