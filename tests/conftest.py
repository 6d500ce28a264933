"""Shared pytest fixtures for the rmap2p test suite."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from netns import NetnsLab, netns_available, sweep_stale


def pytest_sessionstart(session: pytest.Session) -> None:
    """Remove namespaces left by test runs that were killed before cleaning up."""
    sweep_stale()


def require_netns() -> None:
    """Skip with the probe's reason where namespaces are unavailable; fail instead under RMAP2P_REQUIRE_NETNS=1."""
    ok, why = netns_available()
    if not ok:
        if os.environ.get("RMAP2P_REQUIRE_NETNS") == "1":
            pytest.fail(f"RMAP2P_REQUIRE_NETNS=1 but {why}")
        pytest.skip(why)


@pytest.fixture
def netns_lab(tmp_path: Path) -> Iterator[Callable[..., NetnsLab]]:
    """Factory ``make(n_hosts, **kw) -> NetnsLab`` of created labs, all destroyed at teardown.

    Skips (with the probe's precise reason) where namespaces or iptables are
    unavailable, unless RMAP2P_REQUIRE_NETNS=1, where that is a failure: meant
    for CI, so that a runner that lost iptables cannot pass by skipping.
    """
    require_netns()
    labs: list[NetnsLab] = []

    def make(n_hosts: int, **kw: object) -> NetnsLab:
        kw.setdefault("log_dir", tmp_path / f"netns{len(labs)}")
        lab = NetnsLab(n_hosts, **kw)  # type: ignore[arg-type]
        labs.append(lab)
        return lab.create()

    yield make
    errors = []
    for lab in reversed(labs):
        try:
            lab.destroy()
        except Exception as e:  # noqa: BLE001 - destroy the rest, then report
            errors.append(f"{lab.prefix}: {e}")
    if errors:
        pytest.fail("netns cleanup failed: " + "; ".join(errors))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Keep each phase's report on the item, so a fixture can tell at teardown that the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def call_failed(request: pytest.FixtureRequest) -> bool:
    """At fixture teardown: whether the test's setup or call failed."""
    return any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))
