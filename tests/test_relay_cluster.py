"""Real daemons on loopback: a node carried by edge relays (``--relay always``), and its relay's death.

Two edges (``--type edge``, which offer relaying by default), one direct node
whose gateway the client uses, and the relayed node running echo services.
The relayed node must be alive in every view at a relay allocation (not its
own port), serve requests through the direct node's gateway, and survive
SIGKILL of its relay by failing over to the standby edge with zero dead
events about it in any view.
"""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import NodeProc, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[dict[str, NodeProc]]:
    nodes = {
        "e1": NodeProc("e1", tmp_path, extra=["--type", "edge"]),
        "e2": NodeProc("e2", tmp_path, extra=["--type", "edge"]),
        # A direct node with a gateway and no services of its own: requests must travel to r.
        "d": NodeProc("d", tmp_path, extra=["--type", "storage"]),
        "r": NodeProc("r", tmp_path, extra=["--type", "cpu", "--relay", "always"], services=True),
    }
    try:
        nodes["e1"].start().wait_healthy()
        for name in ("e2", "d", "r"):
            nodes[name].start(join=[nodes["e1"].gossip])
        for n in nodes.values():
            n.wait_healthy()
        yield nodes
    except BaseException:
        for n in nodes.values():
            print(f"----- {n.name}\n{n.tail(80)}")
        raise
    finally:
        for n in nodes.values():
            n.kill()


def primary_relay(r: NodeProc) -> str:
    """The node id of the edge r's address is allocated on, from r's own log (the latest line wins)."""
    found = re.findall(r"relayed through ([0-9a-f]+) at", r.log.read_text(errors="replace"))
    assert found, r.tail()
    return found[-1]


def forward(gateway: NodeProc, service: str, body: bytes) -> tuple[int, str, bytes]:
    req = urllib.request.Request(f"http://{gateway.http}/api/service/{service}/extract", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.headers.get("X-Rmap2p-Node", ""), resp.read()


def events_about(n: NodeProc, member: str, kind: str) -> list[str]:
    return [line for line in n.log.read_text(errors="replace").splitlines() if f"member={member} event={kind}" in line]


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_a_relayed_node_is_alive_everywhere_serves_through_a_gateway_and_survives_its_relays_death(
    pool: dict[str, NodeProc], how: str,
) -> None:
    """SIGKILL closes the relay's sockets (the node sees its control connection end at once);
    SIGSTOP freezes it with every connection open, so only the missed keepalives tell."""
    r, d = pool["r"], pool["d"]
    ids = {name: n.view()[name]["worker_id"] for name, n in pool.items()}
    rid = ids["r"]

    def relayed_alive_everywhere(exclude: tuple[str, ...] = ()) -> bool:
        views = [n.view() for name, n in pool.items() if name not in exclude]
        return all(
            v.get("r", {}).get("status") == "alive"
            and v["r"]["address"] != r.gossip  # reached at an allocation, not at its own socket
            and len([w for w in v.values() if w["status"] == "alive"]) == len(pool) - len(exclude)
            for v in views
        )

    wait_for(relayed_alive_everywhere, 30, "r alive at a relay address in every view")
    before = d.view()["r"]
    assert before["http"] != r.http, "peers reach r's HTTP through its relay too"
    assert before["address"].rsplit(":", 1)[0] == "127.0.0.1"

    # r runs the CPU services (as echo servers); d's gateway forwards to r through the relay.
    def served() -> bool:
        sent = b'{"text": "hello relay"}'
        status, node, body = forward(d, "ner-extraction", sent)
        doc = json.loads(body)  # the echo service says who served and what it got
        return status == 200 and node == rid and doc["node_id"] == rid and doc["bytes"] == len(sent)

    wait_for(served, 40, "a request through d's gateway to be served by r")

    # r's relayed HTTP connections come from r's own loopback, but a caller on the relay is no
    # operator of r: an operator action through the relay allocation is refused.
    leave = urllib.request.Request(f"http://{before['http']}/api/admin/leave", data=b"", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(leave, timeout=5)
    assert refused.value.code == 403 and r.alive()

    # Kill or freeze r's relay; r moves to the standby edge and stays alive in every view.
    primary = primary_relay(r)
    victim = next(name for name, i in ids.items() if i == primary)
    standby = "e2" if victim == "e1" else "e1"
    incarnation = d.view()["r"]["incarnation"]
    killed_at = time.monotonic()
    if how == "SIGKILL":
        pool[victim].kill()
    else:
        assert pool[victim].proc is not None
        pool[victim].proc.send_signal(signal.SIGSTOP)
    wait_for(
        lambda: primary_relay(r) == ids[standby] and all(
            (w := n.view()["r"])["status"] == "alive" and w["incarnation"] > incarnation and w["address"] != before["address"]
            for name, n in pool.items() if name != victim
        ),
        15, "r re-advertised at its standby relay in every view",
    )
    print(f"r re-advertised through {standby} {time.monotonic() - killed_at:.2f}s after {how} of {victim}")
    wait_for(served, 20, "requests to r to work through its new relay")
    # Let several suspicion timeouts pass (local profile: >= 3 s each) while the dead relay is
    # detected as dead itself, then count what every surviving view said about r.
    wait_for(lambda: all(n.view()[victim]["status"] == "dead" for name, n in pool.items() if name != victim),
             30, f"{victim} (the killed relay) to be dead everywhere")
    time.sleep(6)
    for name, n in pool.items():
        if name == victim:
            continue
        assert n.view()["r"]["status"] == "alive", f"{name} sees r {n.view()['r']['status']}"
        assert events_about(n, rid, "dead") == [], f"{name} logged r dead"
    suspects = sum(len(events_about(n, rid, "suspect")) for name, n in pool.items() if name != victim)
    print(f"suspect events about r across the surviving views: {suspects}")
    if how == "SIGSTOP" and pool[victim].proc is not None:
        pool[victim].proc.send_signal(signal.SIGCONT)  # so that kill() at the end can reap it


def test_two_relayed_nodes_in_a_keyed_pool_reach_each_other(tmp_path: Path) -> None:
    import subprocess
    import sys

    ring = tmp_path / "cluster.keys"
    out = subprocess.run([sys.executable, "-m", "rmap2p", "keygen", "--key-file", str(ring)], capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    key = ["--key-file", str(ring)]
    nodes = {
        "e1": NodeProc("e1", tmp_path, extra=["--type", "edge", *key]),
        "e2": NodeProc("e2", tmp_path, extra=["--type", "edge", *key]),
        "r1": NodeProc("r1", tmp_path, extra=["--type", "cpu", "--relay", "always", *key], services=True),
        "r2": NodeProc("r2", tmp_path, extra=["--type", "storage", "--relay", "always", *key]),
    }
    try:
        nodes["e1"].start().wait_healthy()
        for name in ("e2", "r1", "r2"):
            nodes[name].start(join=[nodes["e1"].gossip])
        for n in nodes.values():
            n.wait_healthy()
        relayed = {"r1": nodes["r1"].gossip, "r2": nodes["r2"].gossip}
        wait_for(
            lambda: all(
                all(v.get(name, {}).get("status") == "alive" and v[name]["address"] != own for name, own in relayed.items())
                and len([w for w in v.values() if w["status"] == "alive"]) == 4
                for v in (n.view() for n in nodes.values())
            ),
            30, "both relayed nodes alive at relay addresses in every view",
        )
        r1 = nodes["r1"].view()["r1"]["worker_id"]

        def served() -> bool:
            status, node, body = forward(nodes["r2"], "ner-extraction", b'{"text": "x"}')
            return status == 200 and node == r1 and json.loads(body)["node_id"] == r1

        wait_for(served, 40, "r2's gateway to reach r1's service, relay to relay")
        for edge in ("e1", "e2"):
            text = nodes[edge].log.read_text(errors="replace")
            assert "relay listening" in text and "sealed with the cluster keyring" in text
            assert "without a cluster keyring" not in text
    except BaseException:
        for n in nodes.values():
            print(f"----- {n.name}\n{n.tail(60)}")
        raise
    finally:
        for n in nodes.values():
            n.kill()
