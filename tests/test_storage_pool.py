"""Replicated Redis and PostgreSQL in a pool of real daemons: writes through the proxy survive the primary's death.

Three daemons on loopback sharing a keyring: two ``--type storage`` nodes
running the real redis-server and PostgreSQL (``services=True, echo=False``,
synchronous PostgreSQL commits), and a node without services whose
``--service-proxy`` forwards a local port per service to the current primary.

1. 1,000 Redis writes acknowledged by ``WAIT 1`` and 1,000 PostgreSQL rows
   committed, all through the proxy's local ports.
2. SIGKILL of the primary's node: the replica is promoted, the local ports
   reach it, every acknowledged write is there. The time without a writable
   primary (kill -> first write accepted through the proxy) is printed.
3. The killed node restarts: a replica of the new primary (read-only, same
   data), and at no time two primaries in ``/api/admin/services``.
4. The new primary's node restarted alone keeps its data.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from procs import NodeProc, free_port, wait_for
from storage import require_binary, server_dir

from services.runners.postgres import conninfo, find_bin_dir
from services.runners.resp import RespClient, RespError
from services.stateful import Endpoint

pytestmark = pytest.mark.slow

SERVICES = ("redis", "postgres")
N = 1000


def rmap2p(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "rmap2p", *args], capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def endpoints(node: NodeProc, service: str) -> list[dict[str, str]]:
    doc = node.get("/api/admin/services")
    entry = next(s for s in doc["services"] if s["name"] == service)
    return list(entry.get("endpoints", []))


def roles(node: NodeProc, service: str) -> dict[str, tuple[str, str]]:
    """node name -> (role, health) of each copy of ``service``, as ``node`` lists them."""
    names = {w["worker_id"]: name for name, w in node.view().items()}
    return {names.get(e["node_id"], e["node_id"]): (e["role"], e["health"]) for e in endpoints(node, service)}


def settled(node: NodeProc, primary: str, replica: str | None) -> bool:
    want = {primary: ("primary", "healthy")} | ({replica: ("replica", "healthy")} if replica else {})
    return all(roles(node, s) == want for s in SERVICES)


def psql(bin_dir: Path, port: int, password: str, script: str, tmp: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    path = tmp / f"script-{time.monotonic_ns()}.sql"
    path.write_text(script)
    info = conninfo(Endpoint("127.0.0.1", port), password) + " connect_timeout=3"
    return subprocess.run(
        [str(bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", str(path), info],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


async def redis(port: int, password: str, *commands: tuple[Any, ...]) -> list[Any]:
    client = await RespClient.connect("127.0.0.1", port, password, timeout=5)
    try:
        return list(await asyncio.wait_for(client.pipeline(commands), 20))
    finally:
        await client.close()


async def write_acknowledged(port: int, password: str) -> int:
    """N SETs in batches, each batch followed by ``WAIT 1``: every one acknowledged by a replica."""
    client = await RespClient.connect("127.0.0.1", port, password, timeout=5)
    try:
        for start in range(0, N, 100):
            replies = await client.pipeline([("SET", f"k{i}", f"v{i}") for i in range(start, start + 100)] + [("WAIT", 1, 5000)])
            assert all(r == "OK" for r in replies[:-1]), replies[:3]
            assert isinstance(replies[-1], int) and replies[-1] >= 1, f"WAIT: {replies[-1]!r}"
    finally:
        await client.close()
    return N


def redis_count(port: int, password: str) -> tuple[int, bool]:
    """Keys k0..k{N-1} with their values, and whether the copy at ``port`` accepts writes."""
    replies = asyncio.run(redis(port, password, *[("GET", f"k{i}") for i in range(N)], ("SET", "probe", "1")))
    good = sum(1 for i, r in enumerate(replies[:N]) if r == f"v{i}".encode())
    return good, replies[-1] == "OK"


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[tuple[list[NodeProc], dict[str, int], Path]]:
    require_binary("redis-server", "redis-server")
    if find_bin_dir() is None:
        require_binary("pg_ctlcluster", "postgresql")
    if find_bin_dir() is None:
        pytest.skip("PostgreSQL's server programs not found")
    ports = {"redis": free_port(), "postgres": free_port()}
    with server_dir() as root:
        ring = root / "ring0.json"
        rmap2p("keygen", "--key-file", str(ring))
        for i in (1, 2):
            shutil.copy(ring, root / f"ring{i}.json")
        # Only the replicated engines: with chromadb too a lone storage node would run chromadb and redis (seed scenario 5).
        env = {"RMAP2P_POSTGRES_SYNCHRONOUS": "1", "RMAP2P_STORAGE_SERVICES": "redis,postgres"}
        nodes = [
            NodeProc("s0", root, extra=["--type", "storage", "--key-file", str(root / "ring0.json")], env=env, services=True, echo=False),
            NodeProc("s1", root, extra=["--type", "storage", "--key-file", str(root / "ring1.json")], env=env, services=True, echo=False),
            NodeProc(
                "c0", root, services=False,
                extra=["--type", "cpu", "--key-file", str(root / "ring2.json"), "--service-proxy", *(f"{s}={p}" for s, p in ports.items())],
            ),
        ]
        try:
            yield nodes, ports, tmp_path
        finally:
            for n in nodes:
                n.terminate()
            for n in nodes:
                print(f"----- {n.name}\n{n.tail(25)}")


def test_failover_through_the_service_proxy_keeps_every_acknowledged_write(pool: tuple[list[NodeProc], dict[str, int], Path]) -> None:
    (s0, s1, c0), ports, tmp = pool
    began = time.monotonic()
    bin_dir = find_bin_dir()
    assert bin_dir is not None
    s0.start().wait_healthy()
    wait_for(lambda: settled(s0, "s0", None), 60, "s0 to run redis and postgres as primary")
    s1.start(join=[s0.gossip]).wait_healthy()
    c0.start(join=[s0.gossip]).wait_healthy()
    wait_for(lambda: settled(c0, "s0", "s1"), 90, "s1 to stream both services from s0, as c0 sees it")
    # Every copy in the pool has the same password (derived from the keyring): read it on any storage node.
    redis_pw = (s1.data_dir / "services" / "redis" / "password").read_text().strip()
    pg_pw = (s0.data_dir / "services" / "postgres" / "password").read_text().strip()
    assert redis_pw == (s0.data_dir / "services" / "redis" / "password").read_text().strip()

    # 1. Writes through c0's local ports.
    assert asyncio.run(write_acknowledged(ports["redis"], redis_pw)) == N
    rows = "CREATE TABLE items (id int PRIMARY KEY, body text);\n" + "".join(f"INSERT INTO items VALUES ({i}, 'row {i}');\n" for i in range(N))
    done = psql(bin_dir, ports["postgres"], pg_pw, rows, tmp)
    assert done.returncode == 0, done.stderr
    written = time.monotonic()

    # 2. The primary's node dies.
    s0.kill()
    killed = time.monotonic()
    outage: dict[str, float] = {}

    def writable(service: str) -> bool:
        if "detected" not in outage and c0.view()["s0"]["status"] in ("dead", "left"):
            outage["detected"] = time.monotonic() - killed
        if service in outage:
            return True
        if service == "redis":
            try:
                ok = asyncio.run(redis(ports["redis"], redis_pw, ("SET", "after-failover", "1")))[0] == "OK"
            except (TimeoutError, OSError, RespError, ConnectionError, EOFError, asyncio.IncompleteReadError):
                ok = False
        else:
            ok = psql(bin_dir, ports["postgres"], pg_pw, "INSERT INTO items VALUES (-1, 'after failover');\n", tmp, timeout=30).returncode == 0
        if ok:
            outage[service] = time.monotonic() - killed
        return ok

    wait_for(lambda: all(writable(s) for s in SERVICES), 60, "a writable primary through c0's proxy after the kill", interval=0.1)
    for service in SERVICES:
        assert outage[service] <= outage.get("detected", 0.0) + 5.0, f"{service}: no writable primary for {outage[service]:.1f} s, detection {outage.get('detected')}"
    assert asyncio.run(redis(ports["redis"], redis_pw, ("DBSIZE",)))[0] >= N
    count, _ = redis_count(ports["redis"], redis_pw)
    assert count == N, f"{N - count} acknowledged Redis writes lost"
    out = psql(bin_dir, ports["postgres"], pg_pw, "SELECT count(*), sum(id) FROM items WHERE id >= 0;\n", tmp)
    assert out.stdout.strip() == f"{N}|{sum(range(N))}", out.stdout + out.stderr
    wait_for(lambda: c0.view()["s0"]["status"] in ("dead", "left"), 30, "c0 to see s0 dead")
    outage.setdefault("detected", time.monotonic() - killed)
    assert roles(c0, "redis") == {"s1": ("primary", "healthy")}

    # 3. The old primary comes back: a replica of s1, never a second primary.
    s0.start(join=[s1.gossip]).wait_healthy()
    primaries_seen: set[str] = set()

    def rejoined() -> bool:
        now = {s: roles(c0, s) for s in SERVICES}
        for s, copies in now.items():
            writers = [n for n, (role, _) in copies.items() if role == "primary"]
            assert len(writers) <= 1, f"two primaries of {s}: {copies}"
            primaries_seen.update(writers)
        return settled(c0, "s1", "s0")

    wait_for(rejoined, 90, "s0 to come back as the replica of s1")
    assert primaries_seen == {"s1"}
    s0_redis = next(e for e in endpoints(s0, "redis") if e["node_id"] == s0.view()["s0"]["worker_id"])
    count, accepts = redis_count(int(s0_redis["address"].rsplit(":", 1)[1]), redis_pw)
    assert (count, accepts) == (N, False), "the returned copy must hold every write and refuse new ones"
    s0_pg = next(e for e in endpoints(s0, "postgres") if e["node_id"] == s0.view()["s0"]["worker_id"])
    out = psql(bin_dir, int(s0_pg["address"].rsplit(":", 1)[1]), pg_pw, "SELECT pg_is_in_recovery(), count(*) FROM items;\n", tmp)
    assert out.stdout.strip() == f"t|{N + 1}", "the returned PostgreSQL is a standby with every row: " + out.stdout + out.stderr

    # 4. The replica's node dies: a synchronous commit waits until the primary's view has it dead and a
    # majority (s1 and c0) has answered since, then goes through: the primary is not stuck without it.
    def synchronous() -> bool:
        shown = psql(bin_dir, ports["postgres"], pg_pw, "SHOW synchronous_standby_names;\n", tmp)
        return shown.returncode == 0 and shown.stdout.strip() == "*"

    wait_for(synchronous, 60, "s1's commits to wait for its standby again")
    s0.kill()
    killed = time.monotonic()
    done = psql(bin_dir, ports["postgres"], pg_pw, "INSERT INTO items VALUES (-2, 'after the replica died');\n", tmp, timeout=90)
    assert done.returncode == 0, done.stderr
    commit_wait = time.monotonic() - killed
    assert "commits no longer wait for a standby" in s1.log.read_text(), s1.tail(60)

    # 5. The new primary's node restarted alone keeps its data.
    for n in (c0, s0, s1):
        n.terminate()
    s1.start().wait_healthy()
    wait_for(lambda: settled(s1, "s1", None), 60, "s1 alone to serve both again, as primary")
    alone = {e["node_id"]: e["address"] for s in SERVICES for e in endpoints(s1, s)}
    by_service = {s: int(next(e["address"] for e in endpoints(s1, s)).rsplit(":", 1)[1]) for s in SERVICES}
    assert len(alone) == 1
    count, accepts = redis_count(by_service["redis"], redis_pw)
    assert (count, accepts) == (N, True)
    out = psql(bin_dir, by_service["postgres"], pg_pw, "SELECT count(*) FROM items;\n", tmp)
    assert out.stdout.strip() == str(N + 2), out.stdout + out.stderr

    print(
        f"\nstorage pool: {N} Redis writes (WAIT 1) and {N} PostgreSQL rows (synchronous commit) through --service-proxy; "
        f"written after {written - began:.1f} s. SIGKILL of the primary's node: c0 saw it dead after {outage['detected']:.2f} s; "
        f"no writable primary through the proxy for redis {outage['redis']:.2f} s, postgres {outage['postgres']:.2f} s; "
        f"old primary back as replica, no second primary seen; SIGKILL of that replica: a synchronous commit "
        f"waited {commit_wait:.1f} s; total {time.monotonic() - began:.0f} s"
    )
