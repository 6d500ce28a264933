"""ner-extraction: the real spaCy child, loading a tiny model trained here through RMAP2P_NER_MODEL.

spaCy's published models are not on the package index this project can
reach, so the fixture trains a pipeline on a few sentences and saves it to a
directory: the same ``RMAP2P_NER_MODEL=<directory>`` path a user's own model
takes (a package name such as ``en_core_web_sm`` goes through the same
``spacy.load``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from ml import TEST_POLICY, need_modules, started, train_tiny_ner, url

from allocator.catalog import by_name
from services.capabilities import can_run, gather_facts
from services.runner import RunnerError
from services.runners import make_runner
from services.runners.process import ProcessRunner

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    need_modules("spacy")
    return train_tiny_ner(str(tmp_path_factory.mktemp("ner") / "tiny_ner"))


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def runner(tiny_model: str) -> AsyncIterator[ProcessRunner]:
    r = await started("ner-extraction", {"RMAP2P_NER_MODEL": tiny_model})
    yield r
    await r.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def test_entities_come_back_from_the_trained_model(runner: ProcessRunner, http: aiohttp.ClientSession) -> None:
    text = "Carol White works for Acme Bank in Leeds."
    async with http.post(url(runner, "/extract"), json={"text": text}) as resp:
        doc = await resp.json()
    assert resp.status == 200
    assert doc["model"] == "en_rmap2p_tiny_ner"
    assert doc["entities"] == [
        {"text": "Carol White", "label": "PERSON", "start": 0, "end": 11},
        {"text": "Acme Bank", "label": "ORG", "start": 22, "end": 31},
        {"text": "Leeds", "label": "GPE", "start": 35, "end": 40},
    ]
    for e in doc["entities"]:
        assert text[e["start"] : e["end"]] == e["text"]


async def test_health_and_loaded_models_name_the_model(runner: ProcessRunner, http: aiohttp.ClientSession) -> None:
    async with http.get(url(runner, "/health")) as resp:
        doc = await resp.json()
    assert resp.status == 200 and doc["backend"] == "spacy" and doc["model"] == "en_rmap2p_tiny_ner"
    assert doc["labels"] == ["GPE", "ORG", "PERSON"] and doc["model_version"] == "0.0.1"
    assert runner.loaded_models == ("en_rmap2p_tiny_ner",)


async def test_empty_text_has_no_entities(runner: ProcessRunner, http: aiohttp.ClientSession) -> None:
    async with http.post(url(runner, "/extract"), json={"text": ""}) as resp:
        assert resp.status == 200 and (await resp.json())["entities"] == []


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"", 400),
        (b"{", 400),
        (b'"just a string"', 400),
        (b'{"texts": ["wrong key"]}', 400),
        (b'{"text": 42}', 400),
        (b'{"text": "' + b"a" * 200_001 + b'"}', 413),
    ],
)
async def test_bad_input_is_a_4xx(runner: ProcessRunner, http: aiohttp.ClientSession, body: bytes, status: int) -> None:
    async with http.post(url(runner, "/extract"), data=body, headers={"Content-Type": "application/json"}) as resp:
        doc = await resp.json()
    assert resp.status == status and doc["error"]


async def test_the_probe_accepts_the_model_directory_and_rejects_a_missing_one(tiny_model: str, tmp_path: Path) -> None:
    env = {"RMAP2P_NER_MODEL": tiny_model}
    ok, why = can_run("ner-extraction", gather_facts(env, ["ner-extraction"]), env)
    assert ok, why
    assert "en_rmap2p_tiny_ner" in why
    env = {"RMAP2P_NER_MODEL": str(tmp_path / "no-such-model")}
    ok, why = can_run("ner-extraction", gather_facts(env, ["ner-extraction"]), env)
    assert not ok and "not found" in why


async def test_a_model_without_ner_fails_at_start_and_is_not_retried(tmp_path: Path) -> None:
    need_modules("spacy")
    path = train_tiny_ner(str(tmp_path / "no_ner"), with_ner=False)
    spec = by_name("ner-extraction")
    assert spec is not None
    r = make_runner(spec, "127.0.0.1", 0, "test-node", {"RMAP2P_NER_MODEL": path}, policy=TEST_POLICY)
    # The pipeline loads (in the child, after binding), then is refused: the child exits 78.
    await r.start()
    try:
        for _ in range(600):
            if r.failed:
                break
            await asyncio.sleep(0.1)
        assert r.failed and "no 'ner' component" in r.failed
        assert r.supervisor.runs == 1 and await r.health() == "unhealthy"
    finally:
        await r.stop()


async def test_a_missing_model_fails_start() -> None:
    need_modules("spacy")
    spec = by_name("ner-extraction")
    assert spec is not None
    r = make_runner(spec, "127.0.0.1", 0, "test-node", {"RMAP2P_NER_MODEL": os.devnull + "/nothing"}, policy=TEST_POLICY)
    with pytest.raises(RunnerError, match="not found"):
        await r.start()
    assert r.failed and r.port is None
