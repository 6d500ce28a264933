"""The HTTP plane across hosts with default flags: no --http anywhere.

Three hosts run ``rmap2p join`` with services on and no HTTP flag: each
serves HTTP on its own lab address, port 8080, and gossips that address. A
request to A for a service only B runs is answered by B, and a broadcast job
naming that service reaches B (B's own log shows it handing the job to its
service). A fourth host started with ``--http 127.0.0.1:8080`` says once, in
its log, that other hosts cannot reach it and how to fix it.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from netns import Host, NetnsError, NetnsLab
from test_netns_cluster import GOSSIP_PORT, hostport, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.slow]

HTTP_PORT = 8080

_REQUEST = r"""
import json, sys, urllib.request, urllib.error
method, url, body = sys.argv[1], sys.argv[2], sys.argv[3]
req = urllib.request.Request(url, method=method, data=body.encode() if body else None,
                             headers={"Content-Type": "application/json"} if body else {})
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(req, timeout=20) as r:
        status, headers, data = r.status, dict(r.headers), r.read()
except urllib.error.HTTPError as e:
    status, headers, data = e.code, dict(e.headers), e.read()
print(json.dumps({"status": status, "headers": headers, "body": data.decode(errors="replace")}))
"""


def http(host: Host, method: str, url: str, body: object | None = None) -> dict[str, Any]:
    """One HTTP request from inside ``host``'s namespace: status, headers and body text."""
    cp = host.python(_REQUEST, method, url, json.dumps(body) if body is not None else "", timeout=40)
    if cp.returncode != 0:
        raise NetnsError(f"{host.name}: {method} {url}: {cp.stderr.strip()[-2000:]}")
    return json.loads(cp.stdout)


def start(lab: NetnsLab, workdir: Path, host: Host, *extra: str, join: Host | None = None) -> None:
    data = workdir / host.name
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "rmap2p", "-v", "join", "--bind", hostport(host.ip), "--data-dir", str(data),
        "--name", host.name, "--no-mdns", "--echo-services", *extra,
    ]
    if join is not None:
        argv += ["--join", hostport(join.ip, GOSSIP_PORT)]
    host.popen(argv, log_name="daemon", cwd=data)


def daemon_log(lab: NetnsLab, host: Host) -> str:
    return host.log_paths("daemon")[1].read_text(errors="replace")


def test_default_flags_forward_requests_and_jobs_to_the_node_that_serves(
    netns_lab: Callable[..., NetnsLab], tmp_path: Path
) -> None:
    lab = netns_lab(4)
    a, b, c, d = lab.hosts
    try:
        # Types keep the CPU services on B alone: A is an edge node, C a storage node.
        start(lab, tmp_path, a, "--type", "edge")
        start(lab, tmp_path, b, "--type", "cpu", join=a)
        start(lab, tmp_path, c, "--type", "storage", join=a)
        url_a = f"http://{hostport(a.ip, HTTP_PORT)}"

        def workers() -> dict[str, dict[str, Any]]:
            return {w["name"]: w for w in a.http_get_json(f"{url_a}/api/admin/workers", timeout=5)["workers"]}

        def b_only_services() -> list[str]:
            ws = workers()
            if {n for n, w in ws.items() if w["status"] == "alive"} != {"h0", "h1", "h2"}:
                return []
            healthy_b = {s for s, h in ws["h1"]["services_status"].items() if h == "healthy"}
            elsewhere = set(ws["h0"]["services"]) | set(ws["h2"]["services"])
            return sorted(healthy_b - elsewhere)

        wait_for(lambda: bool(b_only_services()), 90, "B to run a service healthy that A and C do not run")
        ws = workers()
        # Every node's reachable address, as peers see it: its lab address and port 8080.
        for h in (a, b, c):
            assert ws[h.name]["http"] == hostport(h.ip, HTTP_PORT), ws[h.name]
        service = b_only_services()[0]
        b_id = ws["h1"]["worker_id"]

        # A request to A for B's service is answered by B.
        r = http(a, "POST", f"{url_a}/api/service/{service}/probe?x=1", {"hello": "from a"})
        assert r["status"] == 200, r
        headers = {k.lower(): v for k, v in r["headers"].items()}
        assert headers["x-rmap2p-node"] == b_id, r
        assert json.loads(r["body"])["node_id"] == b_id, r

        # A broadcast job naming B's service is credited to B and reaches B.
        job_type = f"netns-probe-{uuid.uuid4().hex[:8]}"
        r = http(a, "POST", f"{url_a}/api/coordinator/broadcast-job",
                 {"job_type": job_type, "required_capability": service, "job_data": {"n": 1}})
        assert r["status"] == 200, r
        doc = json.loads(r["body"])
        assert doc["broadcasted_to"] == 1 and doc["successful"] == 1, doc
        assert doc["workers"][0]["worker_id"] == b_id, doc
        handed = f"node {b_id}: job {job_type} -> {service} on node {b_id}"
        wait_for(lambda: handed in daemon_log(lab, b), 10, "B's log to show the job handed to its service")
        assert f"job {job_type} -> {service} on node" not in daemon_log(lab, a)

        # Nobody here bound loopback, so nobody warns about it.
        for h in (a, b, c):
            assert "bound to loopback" not in daemon_log(lab, h)

        # A node that keeps its HTTP port on loopback is told, once, what that breaks and the fix.
        start(lab, tmp_path, d, "--http", f"127.0.0.1:{HTTP_PORT}", "--no-services", join=a)
        wait_for(lambda: "bound to loopback" in daemon_log(lab, d), 30, "D's loopback warning")
        wait_for(lambda: workers().get("h3", {}).get("status") == "alive", 20, "D to join")
        warning = [line for line in daemon_log(lab, d).splitlines() if "bound to loopback" in line]
        assert len(warning) == 1, warning
        assert "127.0.0.1:8080" in warning[0] and "--http 0.0.0.0:8080" in warning[0], warning[0]
    except BaseException:
        for h in lab.hosts:
            p = h.log_paths("daemon")[1]
            if p.exists():
                print(f"----- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-30:]))
        raise
