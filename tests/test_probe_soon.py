"""``Membership.probe_soon``: evidence from a driver moves a probe up, never suspects by itself."""

from __future__ import annotations

import random
import statistics

from cluster import Cluster

from membership import Status, SwimConfig
from membership import wire
from membership.messages import Ack, Ping
from test_membership import alive, feed, machine, quiet


def _pings(m) -> list[Ping]:
    out = []
    for data, _ in m.take_datagrams():
        out += [msg for msg in wire.decode_datagram(data) if isinstance(msg, Ping)]
    return out


def test_probe_soon_pings_the_member_at_once_and_is_rate_limited() -> None:
    m = machine()
    for i in range(5):
        feed(m, alive(f"p{i}", 1, port=8000 + i))
    t = quiet(m)
    assert m.probe_soon("p3", t)
    (ping,) = _pings(m)
    assert ping.target == "p3"
    feed(m, Ack(ping.seq, None), now=t + 0.01)
    # Within the gap a second report changes nothing, the member is probed in its turn only.
    assert not m.probe_soon("p3", t + 0.02)
    assert not m.probe_soon("me", t + 0.02)
    assert not m.probe_soon("stranger", t + 0.02)
    assert m.probe_soon("p3", t + m.config.probe_soon_gap + 0.02)
    assert m.status_of("p3") is Status.ALIVE and m.stats.suspicions_raised == 0


def test_probe_soon_waits_for_the_probe_in_flight_then_goes_first() -> None:
    m = machine()
    for i in range(5):
        feed(m, alive(f"p{i}", 1, port=8000 + i))
    t = quiet(m)
    m.tick(t)
    (first,) = _pings(m)
    other = next(f"p{i}" for i in range(5) if f"p{i}" != first.target)
    assert m.probe_soon(other, t + 0.01)
    assert _pings(m) == []  # one probe at a time: the one in flight is not abandoned
    out = feed(m, Ack(first.seq, None), now=t + 0.05)
    (second,) = [msg for d in out for msg in d if isinstance(msg, Ping)]
    assert second.target == other


def _detection(seed: int, evidence: bool) -> float:
    """Seconds from a crash until the first live node holds the victim dead (local profile, 12 nodes)."""
    c = Cluster(12, seed=seed, config=SwimConfig.local())
    assert c.run_until(c.converged, 30)
    c.run_for(random.Random(seed).uniform(0, 1))
    victim = 7
    c.crash(victim)
    t0 = c.now
    if evidence:
        # Three gateways fail to connect to the victim's services within the next 0.3 s.
        for k, i in enumerate((1, 4, 9)):
            c.run_for(0.1 * k)
            c.nodes[i].probe_soon(c.nodes[victim].id, c.now)
            c.flush(i)
    assert c.run_until(lambda: any(c.status(o, victim) is Status.DEAD for o in c.live()), 60)
    assert not c.late_deadlines
    return c.now - t0


def test_probe_soon_shortens_detection_of_a_crash() -> None:
    seeds = range(1, 13)
    before = [_detection(s, evidence=False) for s in seeds]
    after = [_detection(s, evidence=True) for s in seeds]
    # The evidence saves the wait for the victim's turn in the probe order and for a second
    # prober to confirm; the suspicion timeout itself stays whole.
    assert statistics.mean(after) < statistics.mean(before) - 0.5
    assert max(after) <= max(before)
    base = SwimConfig.local().suspicion_mult * 1.08 * SwimConfig.local().probe_interval  # log10(12)
    assert max(after) <= SwimConfig.local().probe_interval + base + 0.5


def test_probe_soon_on_live_members_under_loss_never_kills_anyone() -> None:
    # A gateway whose connects fail for reasons that say nothing about the member (a service
    # restarting, a lossy path) keeps reporting live members. Under 10 % datagram loss that
    # must cost at most suspicions that get refuted, never a death.
    for seed in (3, 5, 8):
        # Without the TCP fallback the loss does raise suspicions (about 45 per run), so the
        # extra probes are tested where they could tip one over into a death.
        c = Cluster(12, seed=seed, loss=0.10, config=SwimConfig.local(tcp_fallback=False))
        assert c.run_until(c.converged, 60)
        rng = random.Random(seed)
        reports = 0
        end = c.now + 240
        while c.now < end:
            c.run_for(0.1)
            i, j = rng.sample(range(12), 2)
            reports += c.nodes[i].probe_soon(c.nodes[j].id, c.now)
            c.flush(i)
        assert reports > 500  # the reports did reach the probe order, many times over
        assert sum(n.stats.suspicions_raised for n in c.nodes) > 10
        assert not [e for _, e in c.events if e.kind == "dead"], f"seed {seed}"
        assert c.converged() and not c.late_deadlines
