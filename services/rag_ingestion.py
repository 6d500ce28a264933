"""The seeds' ``rag_ingestion`` broadcast job (seed 003): documents chunked, embedded, written to ChromaDB.

    POST /api/coordinator/broadcast-job
    {"job_type": "rag_ingestion", "required_capability": "embeddings",
     "job_data": {"documents": ["text", … | {"id"?, "text", "metadata"?}, …],
                  "collection": "manuals", "chunk_size": 512}}

Every node running ``rag-embeddings`` healthy receives the job, with the
list of workers the broadcasting node sent it to. Each takes a disjoint
share of the documents: a document belongs to the worker with the highest
rendezvous hash of (collection, document id, worker id), a pure function of
the job and that list, so no document is embedded twice and none is left
out. A worker chunks its documents (``chunk_text``: at most ``chunk_size``
characters, cut at whitespace), embeds the chunks with its own
``rag-embeddings`` service, and upserts them into the shared ChromaDB
collection on the node that serves ``chromadb`` (found in the view, reached
on its service port), with ids ``<document id>#<chunk index>``: a chunk
written twice is the same row, never a duplicate.

A worker that fails (unreachable, crashed mid-job) is reported failed; the
broadcasting node then sends the job once more to the workers that
succeeded, naming the failed ones (``redo``): each survivor takes the
documents that belonged to a failed worker and now hash to itself, so the
failed worker's share is spread over the survivors and nothing is dropped.

The pure parts (parsing, shares, chunking) are apart from ``ingest``, the
I/O of one worker.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

JOB_TYPE = "rag_ingestion"
CAPABILITY = "rag-embeddings"
STORE = "chromadb"
DEFAULT_CHUNK = 512
MIN_CHUNK = 16
MAX_CHUNK = 8192
MAX_DOCUMENTS = 100_000
EMBED_BATCH = 64
"""Chunks per embedding request and per ChromaDB upsert."""
INGESTION_TIMEOUT = 600.0
"""The broadcast's deadline for this job: embedding on a CPU takes far longer than a job hand-off."""
_JSON = {"Content-Type": "application/json"}  # the gateway's session sets no Content-Type by itself
COLLECTIONS = "/api/v2/tenants/default_tenant/databases/default_database/collections"

Scalar = str | int | float | bool


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    text: str
    metadata: tuple[tuple[str, Scalar], ...] = ()


@dataclass(frozen=True, slots=True)
class Ingestion:
    documents: tuple[Document, ...]
    collection: str
    chunk_size: int


@dataclass(slots=True)
class WorkerResult:
    """What one worker did: its documents, the chunks it wrote, what failed (document id: why)."""

    documents: int = 0
    chunks_written: int = 0
    failures: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"documents": self.documents, "chunks_written": self.chunks_written, "failures": list(self.failures)}


def parse_ingestion(job_data: dict[str, Any]) -> Ingestion:
    """The job's data; ``ValueError`` says what is wrong. Pure."""
    collection = job_data.get("collection")
    if not isinstance(collection, str) or not collection.strip():
        raise ValueError("job_data.collection must be a non-empty string (the ChromaDB collection)")
    size = job_data.get("chunk_size", DEFAULT_CHUNK)
    if not isinstance(size, int) or isinstance(size, bool) or not MIN_CHUNK <= size <= MAX_CHUNK:
        raise ValueError(f"job_data.chunk_size must be an integer from {MIN_CHUNK} to {MAX_CHUNK} (characters)")
    raw = job_data.get("documents")
    if not isinstance(raw, list) or not raw:
        raise ValueError("job_data.documents must be a non-empty list")
    if len(raw) > MAX_DOCUMENTS:
        raise ValueError(f"job_data.documents: at most {MAX_DOCUMENTS} per job")
    docs = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        if isinstance(item, str):
            item = {"text": item}
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise ValueError(f"job_data.documents[{i}] must be a string or an object with a string 'text'")
        doc_id = item.get("id", f"doc-{i}")
        if not isinstance(doc_id, str) or not doc_id or "#" in doc_id:
            raise ValueError(f"job_data.documents[{i}].id must be a non-empty string without '#'")
        if doc_id in seen:
            raise ValueError(f"job_data.documents[{i}].id {doc_id!r} appears twice")
        seen.add(doc_id)
        meta = item.get("metadata", {})
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, Scalar) for k, v in meta.items()):
            raise ValueError(f"job_data.documents[{i}].metadata must map strings to strings, numbers or booleans")
        docs.append(Document(doc_id, item["text"], tuple(sorted(meta.items()))))
    return Ingestion(tuple(docs), collection, size)


def owner(collection: str, doc_id: str, workers: Sequence[str]) -> str:
    """The worker a document belongs to (rendezvous hashing: the fewest moves when ``workers`` changes). Pure."""
    if not workers:
        raise ValueError("no workers")

    def weight(worker: str) -> bytes:
        return hashlib.sha256(f"{collection}\0{doc_id}\0{worker}".encode()).digest()

    return max(sorted(workers), key=weight)


def share(ingestion: Ingestion, workers: Sequence[str], me: str, redo: Iterable[str] = (), previous: Sequence[str] = ()) -> list[Document]:
    """``me``'s documents among ``workers``. With ``redo``: only those that belonged, among ``previous``, to a worker in ``redo``. Pure."""
    failed = frozenset(redo)
    out = []
    for doc in ingestion.documents:
        if failed and owner(ingestion.collection, doc.id, previous) not in failed:
            continue
        if owner(ingestion.collection, doc.id, workers) == me:
            out.append(doc)
    return out


def chunk_text(text: str, size: int) -> list[str]:
    """``text`` in pieces of at most ``size`` characters, cut at whitespace (a longer word is cut). Pure."""
    chunks: list[str] = []
    current = ""
    for word in text.split():
        while len(word) > size:
            if current:
                chunks.append(current)
                current = ""
            chunks.append(word[:size])
            word = word[size:]
        if not word:
            continue
        if current and len(current) + 1 + len(word) > size:
            chunks.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        chunks.append(current)
    return chunks


def chunk_id(doc_id: str, index: int) -> str:
    return f"{doc_id}#{index}"


async def ingest(session: aiohttp.ClientSession, docs: Sequence[Document], ingestion: Ingestion, embed_url: str, chroma_url: str) -> WorkerResult:
    """Chunk, embed (``embed_url``: a rag-embeddings ``/embed``) and upsert ``docs`` into ChromaDB at ``chroma_url``.

    A batch that fails is recorded in ``failures`` (its documents) and the
    rest goes on. Raises ``aiohttp.ClientError``/``RuntimeError`` only when
    the collection itself cannot be reached or made.
    """
    result = WorkerResult(documents=len(docs))
    if not docs:
        return result
    async with session.post(f"{chroma_url}{COLLECTIONS}", json={"name": ingestion.collection, "get_or_create": True}, headers=_JSON) as resp:
        body = await resp.json(content_type=None)
        if resp.status != 200 or not isinstance(body, dict) or "id" not in body:
            raise RuntimeError(f"chromadb refused collection {ingestion.collection!r}: {resp.status} {str(body)[:200]}")
        collection_id = body["id"]
    pending: list[tuple[Document, int, str]] = [(d, i, c) for d in docs for i, c in enumerate(chunk_text(d.text, ingestion.chunk_size))]
    for start in range(0, len(pending), EMBED_BATCH):
        batch = pending[start : start + EMBED_BATCH]
        try:
            async with session.post(embed_url, json={"texts": [c for _, _, c in batch]}, headers=_JSON) as resp:
                embedded = await resp.json(content_type=None)
                if resp.status != 200:
                    raise RuntimeError(f"rag-embeddings answered {resp.status}: {str(embedded)[:200]}")
            rows = {
                "ids": [chunk_id(d.id, i) for d, i, _ in batch],
                "embeddings": embedded["embeddings"],
                "documents": [c for _, _, c in batch],
                "metadatas": [{**dict(d.metadata), "doc_id": d.id, "chunk": i} for d, i, _ in batch],
            }
            async with session.post(f"{chroma_url}{COLLECTIONS}/{collection_id}/upsert", json=rows, headers=_JSON) as resp:
                if resp.status not in (200, 201):
                    raise RuntimeError(f"chromadb upsert answered {resp.status}: {(await resp.text())[:200]}")
        except (aiohttp.ClientError, RuntimeError, KeyError, TypeError, ValueError, TimeoutError) as exc:
            failed_docs = sorted({d.id for d, _, _ in batch})
            result.failures.extend(f"{doc}: {exc}" for doc in failed_docs)
            log.warning("rag_ingestion into %s: a batch of %d chunks failed: %s", ingestion.collection, len(batch), exc)
            continue
        result.chunks_written += len(batch)
    return result
