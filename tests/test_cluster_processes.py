"""Twelve real daemons on loopback: join, crash, restart, leave (issue 2's end-to-end checks)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import NodeProc, wait_for

from membership import SwimConfig

pytestmark = pytest.mark.slow

N = 12


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[list[NodeProc]]:
    nodes = [NodeProc(f"n{i:02d}", tmp_path) for i in range(N)]
    try:
        nodes[0].start().wait_healthy()
        for node in nodes[1:]:
            node.start(join=[nodes[0].gossip])
        for node in nodes:
            node.wait_healthy()
        yield nodes
    except BaseException:
        for node in nodes:
            print(f"----- {node.name} -----\n{node.tail(60)}")
        raise
    finally:
        for node in nodes:
            node.kill()


def statuses(observer: NodeProc, subject: str) -> str | None:
    w = observer.view().get(subject)
    return None if w is None else w["status"]


def test_twelve_processes_join_detect_a_crash_take_a_restart_back_and_see_a_leave(pool: list[NodeProc]) -> None:
    names = {n.name for n in pool}
    took = wait_for(
        lambda: all({k for k, w in n.view().items() if w["status"] == "alive"} == names for n in pool),
        timeout=30, what="all 12 nodes to list all 12 as alive",
    )
    print(f"converged in {took:.1f}s")

    victim = pool[5]
    before = pool[0].view()[victim.name]["incarnation"]
    victim.kill()
    survivors = [n for n in pool if n is not victim]
    cfg = SwimConfig.local()
    # The configured bound: the longest suspicion (no confirmations) plus a probe round to notice.
    bound = cfg.suspicion_max_mult * cfg.suspicion_mult * max(1.0, math.log10(N)) * cfg.probe_interval
    took = wait_for(
        lambda: all(statuses(n, victim.name) == "dead" for n in survivors),
        timeout=bound + 2 * cfg.probe_interval + 5, what="the killed node to be dead everywhere",
    )
    print(f"dead everywhere {took:.1f}s after SIGKILL (bound {bound:.1f}s)")

    victim.start(join=[pool[0].gossip]).wait_healthy()
    wait_for(
        lambda: all(
            (w := n.view().get(victim.name)) is not None and w["status"] == "alive" and w["incarnation"] > before
            for n in survivors
        ),
        timeout=20, what="the restarted node to be alive everywhere with a higher incarnation",
    )
    assert all(n.view()[victim.name]["worker_id"] == pool[0].view()[victim.name]["worker_id"] for n in survivors)

    leaver = pool[3]
    leaver.get("/health")
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"http://{leaver.http}/api/admin/leave", method="POST", data=b""), timeout=5)
    assert leaver.proc is not None and leaver.proc.wait(timeout=15) == 0
    others = [n for n in pool if n is not leaver]
    wait_for(lambda: all(statuses(n, leaver.name) == "left" for n in others), timeout=15, what="the leaver to be 'left'")
    assert not any(statuses(n, n2.name) == "dead" for n in others for n2 in others)
