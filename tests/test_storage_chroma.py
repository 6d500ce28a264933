"""ChromaDB runners with Chroma's real server: a collection survives a restart and a planned hand-over.

Skipped when the ``storage`` extra (the chromadb package) is missing;
with RMAP2P_REQUIRE_STORAGE=1 (``.ci/run``) that is a failure.
"""

from __future__ import annotations

import asyncio
import os
import tarfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from services.runner import RunnerError
from services.runners import snapshot
from services.runners.chroma import SNAPSHOT_PATH, ChromaRunner, chroma_importable
from services.stateful import Endpoint
from services.supervisor import RestartPolicy

POLICY = RestartPolicy(check_interval=0.2, backoff_initial=0.5, backoff_max=2.0, ready_timeout=90.0)
PASSWORD = "pool-chroma-password"
BASE = "/api/v2/tenants/default_tenant/databases/default_database"


@pytest.fixture(scope="module", autouse=True)
def chromadb_installed() -> None:
    if not chroma_importable():
        why = "the chromadb package is not installed (the storage extra)"
        if os.environ.get("RMAP2P_REQUIRE_STORAGE") == "1":
            pytest.fail(f"RMAP2P_REQUIRE_STORAGE=1 but {why}")
        pytest.skip(why)


def runner(directory: Path, node: str, source: Endpoint | None = None, **kw: Any) -> ChromaRunner:
    (directory / "password").parent.mkdir(parents=True, exist_ok=True)
    (directory / "password").write_text(PASSWORD + "\n")
    return ChromaRunner(directory, "127.0.0.1", 0, node, PASSWORD, lambda: source, policy=POLICY, **kw)


async def started(r: ChromaRunner) -> int:
    """Start ``r`` and wait until its child is ready (Chroma's server answering); its port."""
    await r.start()
    for _ in range(900):
        if await r.health() == "healthy":
            assert r.port is not None
            return r.port
        assert r.failed is None, r.failed
        await asyncio.sleep(0.1)
    raise AssertionError(f"chromadb not healthy after 90 s: {r.health_doc}")


async def call(port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.request(method, f"http://127.0.0.1:{port}{path}", json=body, headers=headers) as r:
        ctype = r.headers.get("Content-Type", "")
        return r.status, (await r.json() if "json" in ctype else await r.read())


async def add_collection(port: int, name: str) -> None:
    status, doc = await call(port, "POST", f"{BASE}/collections", {"name": name})
    assert status == 200, doc
    cid = doc["id"]
    status, doc = await call(port, "POST", f"{BASE}/collections/{cid}/add", {
        "ids": ["alpha", "beta"], "embeddings": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], "documents": ["about alpha", "about beta"],
    })  # fmt: skip
    assert status in (200, 201), doc


async def nearest(port: int, name: str, embedding: list[float]) -> str:
    status, doc = await call(port, "GET", f"{BASE}/collections/{name}")
    assert status == 200, doc
    status, doc = await call(port, "POST", f"{BASE}/collections/{doc['id']}/query", {"query_embeddings": [embedding], "n_results": 1, "include": ["documents"]})
    assert status == 200, doc
    return str(doc["documents"][0][0])


async def test_collection_survives_a_restart(tmp_path: Path) -> None:
    directory = tmp_path / "services" / "chromadb"
    first = runner(directory, "n1")
    port = await started(first)
    try:
        await add_collection(port, "kept-docs")
    finally:
        await first.stop()
    assert any((directory / "data").iterdir()), "Chroma wrote nothing under the data dir"

    second = runner(directory, "n1")
    port = await started(second)
    try:
        assert await nearest(port, "kept-docs", [0.1, 0.9, 0.0]) == "about beta"
        assert await second.health() == "healthy"
    finally:
        await second.stop()


async def test_collection_survives_a_planned_hand_over(tmp_path: Path) -> None:
    old = runner(tmp_path / "a" / "services" / "chromadb", "node-a")
    old_port = await started(old)
    try:
        await add_collection(old_port, "moving-docs")
        # The new copy on another node pulls the old one's data before its Chroma starts.
        new = runner(tmp_path / "b" / "services" / "chromadb", "node-b", source=Endpoint("127.0.0.1", old_port))
        new_port = await started(new)
        try:
            assert await nearest(new_port, "moving-docs", [0.9, 0.1, 0.0]) == "about alpha"
            # The old copy is frozen: no write can land on it after its data left.
            status, doc = await call(old_port, "GET", f"{BASE}/collections/moving-docs")
            assert status == 503, doc
            assert await old.health() == "healthy"  # frozen, not dead: the supervisor must not restart it
            assert (old.health_doc or {}).get("state") == "frozen"
            # Writes go on at the new copy.
            status, doc = await call(new_port, "POST", f"{BASE}/collections", {"name": "after-move"})
            assert status == 200, doc
        finally:
            await new.stop()
    finally:
        await old.stop()


async def test_snapshot_needs_the_password(tmp_path: Path) -> None:
    old = runner(tmp_path / "a", "node-a")
    old_port = await started(old)
    try:
        status, _ = await call(old_port, "GET", SNAPSHOT_PATH)
        assert status == 401
        status, _ = await call(old_port, "GET", SNAPSHOT_PATH, headers={"Authorization": "Bearer wrong"})
        assert status == 401
        # Refused snapshots freeze nothing: Chroma still serves.
        status, _ = await call(old_port, "GET", "/api/v2/heartbeat")
        assert status == 200
        # A new copy with the wrong password gives up instead of starting empty.
        wrong = ChromaRunner(tmp_path / "b", "127.0.0.1", 0, "node-b", "not-the-password", lambda: Endpoint("127.0.0.1", old_port), policy=POLICY, handover_timeout=1.0)
        with pytest.raises(RunnerError, match="did not hand its data over"):
            await wrong.start()
    finally:
        await old.stop()


def test_restore_refuses_members_outside_the_target(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar"
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    with tarfile.open(evil, "w") as tar:
        tar.add(outside, arcname="../escaped.txt")
    target = tmp_path / "data"
    target.mkdir()
    (target / "kept").write_text("old data")
    with pytest.raises(RunnerError):
        snapshot.restore(evil, target)
    assert (target / "kept").read_text() == "old data"
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_pack_and_restore_round_trip(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "f.bin").write_bytes(b"\0\1\2" * 1000)
    (source / "top").write_text("t")
    archive = tmp_path / "s.tar"
    snapshot.pack(source, archive)
    target = tmp_path / "dst"
    target.mkdir()
    (target / "stale").write_text("stale")
    snapshot.restore(archive, target, keep=tmp_path / "kept")
    assert sorted(p.name for p in target.iterdir()) == ["sub", "top"]
    assert (target / "sub" / "f.bin").read_bytes() == b"\0\1\2" * 1000
    assert (tmp_path / "kept" / "stale").read_text() == "stale"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "kept", "s.tar", "src"]


async def test_service_managers_hand_chromadb_over_with_its_data(tmp_path: Path) -> None:
    """Two storage nodes' managers: the allocation moves chromadb from s0 to s1; s1's copy has s0's collection."""
    from dataclasses import replace

    from cluster import Cluster
    from pool_handles import MachineHandle

    from services.manager import ServiceManager

    able = {"s0": True, "s1": False}

    def probe_of(node: str) -> Any:
        def probe(gpus: object = ()) -> dict[str, tuple[bool, str]]:
            others = {s: (False, "not in this test") for s in ("redis", "postgres", "minio", "neo4j")}
            return {"chromadb": (able[node], "chromadb: test"), **others}

        return probe

    cluster = Cluster(2, ids=["s0", "s1"])
    assert cluster.run_until(cluster.converged, 30.0)
    handles = []
    for i, name in enumerate(["s0", "s1"]):
        h = MachineHandle.of_cluster(cluster, i)
        h.data_dir = tmp_path / name
        h.pool_secret = b"the pool's secret"
        h.update_meta(lambda m: replace(m, worker_type="storage", http="127.0.0.1:1"))
        handles.append(h)
    managers = [ServiceManager(h, ephemeral_ports=True, probe=probe_of(h.node_id)) for h in handles]

    async def rounds(pred: Any, n: int = 60) -> None:
        for _ in range(n):
            for m in managers:
                await m.reconcile()
            cluster.run_for(1.0)
            if pred():
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"not reached: {[m.running for m in managers]}")

    try:
        for m in managers:
            await m.check_machine()
        await rounds(lambda: managers[0].running.get("chromadb") == "healthy")
        port = handles[0].meta.port_of("chromadb")
        assert port is not None
        await add_collection(port, "pool-docs")

        # The operator takes chromadb off s0 and s1 can run it: a planned move.
        able.update(s0=False, s1=True)
        for m in managers:
            await m.check_machine()
        await rounds(lambda: managers[1].running.get("chromadb") == "healthy" and "chromadb" not in managers[0].running)
        port = handles[1].meta.port_of("chromadb")
        assert port is not None
        assert await nearest(port, "pool-docs", [0.0, 1.0, 0.0]) == "about beta"
    finally:
        for m in managers:
            await m.stop_all()
