"""What a relay costs per relayed member: bytes per second at idle membership, and latency per request.

Five real daemons on loopback: two edges ``e1``, ``e2`` (``--type edge``, echo
services: they run ``edge-proxy``), a gateway ``g`` (``--type storage
--no-services``), a relayed node ``r`` (``--type cpu --relay always``, echo
services: it alone runs ``ner-extraction``) and ``--direct`` more plain
members ``d0..`` without services, so the membership has the size it would
have in a small pool.

- **Idle cost.** Once ``r`` is relayed and alive in every view, the relay's
  counters (``/metrics``: ``rmap2p_relay_bytes_total``) are read on the edge
  carrying ``r`` at the start and the end of ``--idle`` seconds without
  requests. *payload* is what crossed ``r``'s allocations (the gossip a direct
  member would receive and send anyway); *control* is the framed control
  connection (payload plus framing, keepalives). ``r``'s own gossip traffic
  over the same window (``rmap2p_bytes_total{transport="udp"}``) is printed
  beside it: the relay carries about exactly that.
- **Added latency.** ``--requests`` small POSTs through ``g``'s gateway,
  alternating between ``ner-extraction`` (served by ``r``, through its relay)
  and ``edge-proxy`` (served by a direct edge): same echo runner, same
  gateway, one forwarding hop each; the relayed path adds the relay's splice.
  Reported as medians, p90s, their difference in ms and the ratio of medians,
  all from the same run (the machine is shared: only the ratio compares
  between runs).

    python -m simulations.bench_relay                      # lan profile, 30 s idle, 400 requests
    python -m simulations.bench_relay --profile local --idle 20 --json
    python -m simulations.bench_relay --keyring           # sealed gossip and relay frames
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from rmap2p.local_ports import free_port
from simulations.processes import stop_process, wait_until


class Daemon:
    def __init__(self, name: str, root: Path, extra: list[str], profile: str) -> None:
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.gossip = f"127.0.0.1:{free_port()}"
        self.http = f"127.0.0.1:{free_port()}"
        self.argv = [
            sys.executable, "-m", "rmap2p", "join", "--bind", self.gossip, "--http", self.http,
            "--data-dir", str(self.dir), "--name", name, "--no-mdns", "--profile", profile, *extra,
        ]  # fmt: skip
        self.log = root / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, join: str | None) -> None:
        argv = self.argv + (["--join", join] if join else [])
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, cwd=self.dir, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://{self.http}{path}", timeout=5) as resp:
            return resp.read()

    def workers(self) -> dict[str, dict]:
        return {w["name"]: w for w in json.loads(self.get("/api/admin/workers"))["workers"]}

    def metric(self, name: str, **labels: str) -> float:
        total = 0.0
        for line in self.get("/metrics").decode().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        stop_process(self.proc, grace=10)


def post(gateway: Daemon, service: str) -> tuple[float, str]:
    req = urllib.request.Request(f"http://{gateway.http}/api/service/{service}/extract", data=b'{"text": "x"}', method="POST")
    started = time.perf_counter()
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()
        node = resp.headers.get("X-Rmap2p-Node", "")
    return time.perf_counter() - started, node


def p90(xs: list[float]) -> float:
    return sorted(xs)[int(0.9 * (len(xs) - 1))]


def run(args: argparse.Namespace) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    p = args.profile
    key: list[str] = []
    if args.keyring:
        ring = root / "cluster.keys"
        subprocess.run([sys.executable, "-m", "rmap2p", "keygen", "--key-file", str(ring)], check=True, capture_output=True)
        key = ["--key-file", str(ring)]
    nodes = [
        Daemon("e1", root, ["--type", "edge", "--ephemeral-service-ports", "--echo-services", *key], p),
        Daemon("e2", root, ["--type", "edge", "--ephemeral-service-ports", "--echo-services", *key], p),
        Daemon("g", root, ["--type", "storage", "--no-services", *key], p),
        *[Daemon(f"d{i}", root, ["--type", "storage", "--no-services", *key], p) for i in range(args.direct)],
        Daemon("r", root, ["--type", "cpu", "--relay", "always", "--ephemeral-service-ports", "--echo-services", *key], p),
    ]
    by = {n.name: n for n in nodes}
    try:
        nodes[0].start(None)
        wait_until(lambda: by["e1"].get("/health"), 20, "e1")
        for n in nodes[1:]:
            n.start(by["e1"].gossip)
        r = by["r"]
        wait_until(
            lambda: all(
                len([w for w in n.workers().values() if w["status"] == "alive"]) == len(nodes)
                and n.workers()["r"]["address"] != r.gossip
                for n in nodes
            ),
            60, "every node to see r alive at its relay allocation",
        )
        wait_until(lambda: post(by["g"], "ner-extraction")[1] == r.workers()["r"]["worker_id"], 60, "r to serve ner-extraction")
        wait_until(lambda: post(by["g"], "edge-proxy")[1] != "", 60, "an edge to serve edge-proxy")
        rid = r.workers()["r"]["worker_id"]
        carrier_id = re.findall(r"relayed through ([0-9a-f]+) at", r.log.read_text())[-1]
        carrier = next(n for n in nodes if n.name.startswith("e") and n.workers()[n.name]["worker_id"] == carrier_id)

        def counters() -> dict[str, float]:
            return {
                "payload": carrier.metric("rmap2p_relay_bytes_total", member=rid, layer="payload"),
                "control": carrier.metric("rmap2p_relay_bytes_total", member=rid, layer="control"),
                "r_udp": r.metric("rmap2p_bytes_total", transport="udp"),
                "r_tcp": r.metric("rmap2p_bytes_total", transport="tcp"),
            }

        time.sleep(3)  # let the join's gossip settle
        before, t0 = counters(), time.monotonic()
        time.sleep(args.idle)
        after, took = counters(), time.monotonic() - t0
        idle = {k: round((after[k] - before[k]) / took, 1) for k in before}

        relayed: list[float] = []
        direct: list[float] = []
        for i in range(args.requests):
            if i % 2 == 0:
                dt, node = post(by["g"], "ner-extraction")
                assert node == rid, node
                relayed.append(dt)
            else:
                dt, node = post(by["g"], "edge-proxy")
                assert node != rid
                direct.append(dt)
        med_r, med_d = statistics.median(relayed), statistics.median(direct)
        return {
            "profile": p,
            "keyring": bool(key),
            "members": len(nodes),
            "idle_seconds": round(took, 1),
            "relay_bytes_per_s_payload": idle["payload"],
            "relay_bytes_per_s_control": idle["control"],
            "relayed_node_gossip_bytes_per_s_udp": idle["r_udp"],
            "relayed_node_gossip_bytes_per_s_tcp": idle["r_tcp"],
            "requests_each": len(relayed),
            "median_ms_relayed": round(med_r * 1000, 2),
            "median_ms_direct": round(med_d * 1000, 2),
            "p90_ms_relayed": round(p90(relayed) * 1000, 2),
            "p90_ms_direct": round(p90(direct) * 1000, 2),
            "added_ms_median": round((med_r - med_d) * 1000, 2),
            "latency_ratio_median": round(med_r / med_d, 2),
        }
    finally:
        for n in nodes:
            n.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"logs kept in {root}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m simulations.bench_relay", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", choices=("lan", "local"), default="lan")
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of idle membership to measure (default 30)")
    ap.add_argument("--requests", type=int, default=400, help="requests in all, half each way (default 400)")
    ap.add_argument("--direct", type=int, default=3, help="extra plain members (default 3)")
    ap.add_argument("--keyring", action="store_true", help="run the pool with a cluster keyring (sealed gossip and relay frames)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the daemons' logs")
    args = ap.parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:40s} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
