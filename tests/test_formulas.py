"""Protocol formulas, table-tested as memberlist's suspicion_test.go does."""

from __future__ import annotations

import pytest

from membership.awareness import Awareness, scale_timeout
from membership.broadcast import retransmit_limit
from membership.config import SwimConfig
from membership.errors import ConfigError
from membership.suspicion import Suspicion, remaining_suspicion_time, suspicion_timeout


@pytest.mark.parametrize(
    ("mult", "n", "interval", "expected"),
    [
        (3, -1, 1.0, 3.0),
        (3, 1, 1.0, 3.0),
        (3, 10, 1.0, 3.0),
        (3, 50, 1.0, 5.097),
        (4, 1000, 1.0, 12.0),
        (4, 10000, 1.0, 16.0),
        (4, 100, 0.2, 1.6),
    ],
)
def test_suspicion_timeout(mult: float, n: int, interval: float, expected: float) -> None:
    assert suspicion_timeout(mult, n, interval) == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize(
    ("n", "k", "elapsed", "lo", "hi", "expected"),
    [
        (0, 3, 0.0, 2.0, 30.0, 30.0),
        (1, 3, 2.0, 2.0, 30.0, 14.0),
        (2, 3, 3.0, 2.0, 30.0, 4.810),
        (3, 3, 4.0, 2.0, 30.0, -2.0),
        (4, 3, 5.0, 2.0, 30.0, -3.0),
        (5, 3, 10.0, 2.0, 30.0, -8.0),
        (0, 0, 0.0, 2.0, 30.0, 2.0),
    ],
)
def test_remaining_suspicion_time(n: int, k: int, elapsed: float, lo: float, hi: float, expected: float) -> None:
    assert remaining_suspicion_time(n, k, elapsed, lo, hi) == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize(("mult", "n", "expected"), [(4, 0, 0), (4, 1, 4), (4, 9, 4), (4, 10, 8), (4, 999, 12), (4, 1000, 16), (3, 99, 6)])
def test_retransmit_limit(mult: int, n: int, expected: int) -> None:
    assert retransmit_limit(mult, n) == expected


@pytest.mark.parametrize(("timeout", "score", "expected"), [(0.5, 0, 0.5), (0.5, 1, 1.0), (1.0, 7, 8.0)])
def test_scale_timeout(timeout: float, score: int, expected: float) -> None:
    assert scale_timeout(timeout, score) == expected


def test_awareness_clamps() -> None:
    a = Awareness(max_multiplier=8)
    assert a.apply_delta(-1) == 0
    assert a.apply_delta(3) == 3
    assert a.scale(0.5) == 2.0
    assert a.apply_delta(100) == 7
    assert a.apply_delta(-2) == 5


def test_suspicion_confirmations_shrink_the_timer() -> None:
    s = Suspicion.begin(incarnation=1, accuser="a", now=100.0, k=3, min_timeout=2.0, max_timeout=30.0)
    assert s.deadline == pytest.approx(130.0)
    assert not s.confirm("a"), "the first accuser is the claim, not a confirmation"
    assert s.confirm("b")
    assert s.deadline == pytest.approx(116.0)
    assert not s.confirm("b"), "the same accuser twice is no new information"
    assert s.confirm("c")
    assert s.confirm("d")
    assert s.deadline == pytest.approx(102.0)
    assert not s.confirm("e"), "beyond k confirmations the timer cannot shrink further"


@pytest.mark.parametrize(("n", "expected"), [(10, 30.0), (32, 30.0), (33, 30.0), (64, 30.0), (65, 60.0), (1000, 150.0), (10000, 270.0)])
def test_push_pull_period_scales_with_n(n: int, expected: float) -> None:
    assert SwimConfig.lan().push_pull_period(n) == expected


@pytest.mark.parametrize(
    "bad",
    [{"probe_interval": 0}, {"probe_timeout": 2.0}, {"nack_ratio": 1.5}, {"gossip_nodes": -1}, {"max_datagram": 100}],
)
def test_config_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(ConfigError):
        SwimConfig.lan(**bad)
