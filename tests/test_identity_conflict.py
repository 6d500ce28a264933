"""The copied-identity rule: of two daemons with one identity, exactly one stops."""

from __future__ import annotations

import pytest

from rmap2p.identity_conflict import DaemonClaim, this_daemon_yields


@pytest.mark.parametrize(
    ("mine", "other", "yields", "why"),
    [
        (DaemonClaim(200, "10.0.0.1:7946"), DaemonClaim(100, "10.0.0.2:7946"), True, "we are younger"),
        (DaemonClaim(100, "10.0.0.2:7946"), DaemonClaim(200, "10.0.0.1:7946"), False, "we are older"),
        (DaemonClaim(100, "10.0.0.2:7946"), DaemonClaim(100, "10.0.0.1:7946"), True, "same second, higher address"),
        (DaemonClaim(100, "10.0.0.1:7946"), DaemonClaim(100, "10.0.0.2:7946"), False, "same second, lower address"),
        (DaemonClaim(100, "10.0.0.1:7947"), DaemonClaim(100, "10.0.0.1:7946"), True, "same host, higher port"),
        (DaemonClaim(100, "fd00::2:7946"), DaemonClaim(100, "fd00::1:7946"), True, "IPv6, as the core writes it"),
        (DaemonClaim(0, "10.0.0.9:7946"), DaemonClaim(0, "10.0.0.10:7946"), True, "text order, not numeric"),
        (DaemonClaim(100, "10.0.0.1:7946"), DaemonClaim(0, "10.0.0.2:7946"), True, "a record without start time is older"),
    ],
)
def test_rule(mine: DaemonClaim, other: DaemonClaim, yields: bool, why: str) -> None:
    assert this_daemon_yields(mine, other) is yields, why
    # Both sides decide without talking: exactly one of them yields.
    assert this_daemon_yields(other, mine) is not yields, why


def test_same_claim_never_yields() -> None:
    claim = DaemonClaim(100, "10.0.0.1:7946")
    assert not this_daemon_yields(claim, claim)
