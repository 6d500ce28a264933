"""Real service runners: one module per engine, each a supervised child process.

``make_runner(spec, host, port, node_id, env)`` builds the runner of a
service that has one (``has_runner``); the manager uses it in place of the
placeholder. Engine modules are imported only inside their child process,
so building a runner never imports torch or spaCy into the daemon.

| service | engine module | backend |
|---|---|---|
| rag-embeddings | ``services.runners.sbert`` | sentence-transformers |
| ner-extraction | ``services.runners.spacy_ner`` | spaCy |
| document-processing | ``services.runners.documents`` | pypdf, python-docx |
| notes-coa | ``services.runners.notes`` | llm-inference through the overlay |
| llm-inference | ``services.runners.vllm`` (CUDA GPU) or ``services.runners.llamacpp`` | vLLM; llama.cpp |
| vision-ocr | ``services.runners.vllm`` (CUDA GPU) or ``services.runners.ocr`` | vLLM; RapidOCR |

For the last two the engine depends on the machine: ``services.engine_choice``
picks it (``backend``), and ``make_runner`` asks it when not told.

Whether this machine can run one is ``services.capabilities.can_run``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from services.engine_choice import Gpu
from services.runners.process import ProcessRunner
from services.supervisor import RestartPolicy

ENGINES: dict[str, str] = {
    "rag-embeddings": "services.runners.sbert",
    "ner-extraction": "services.runners.spacy_ner",
    "document-processing": "services.runners.documents",
    "notes-coa": "services.runners.notes",
}
"""Service name -> the module its child runs as ``python -m``."""

BACKENDS: dict[str, dict[str, str]] = {
    "llm-inference": {"vllm": "services.runners.vllm", "llama.cpp": "services.runners.llamacpp"},
    "vision-ocr": {"vllm": "services.runners.vllm", "rapidocr": "services.runners.ocr"},
}
"""Services whose engine depends on the machine: backend -> child module."""


class _Spec(Protocol):
    """The part of ``allocator.catalog.ServiceSpec`` a factory reads."""

    @property
    def name(self) -> str: ...


def has_runner(service: str) -> bool:
    return service in ENGINES or service in BACKENDS


def make_runner(
    spec: _Spec,
    host: str,
    port: int,
    node_id: str,
    env: Mapping[str, str],
    *,
    policy: RestartPolicy | None = None,
    on_failed: Callable[[str, str], None] | None = None,
    backend: str | None = None,
    gpus: Sequence[Gpu] = (),
) -> ProcessRunner:
    """The runner of ``spec.name`` listening on ``host:port`` (0: any free port).

    ``env`` overrides the daemon's environment for the child (model variables).
    ``on_failed(service, reason)`` is called once if supervision gives up after
    ``start()`` returned; a failure at start raises ``RunnerError``.
    ``backend`` picks the engine of a service in ``BACKENDS``; None: what
    ``services.engine_choice.probe`` chooses on this machine with ``gpus``
    (``engine_choice.gpus_from(hardware.gpus)``; none: the CPU engine).
    """
    if spec.name in BACKENDS:
        if backend is None:
            from services import engine_choice

            backend = engine_choice.probe(spec.name, {**os.environ, **env}, gpus).backend
        module = BACKENDS[spec.name].get(backend or "")
        if module is None:
            raise KeyError(f"no engine {backend!r} for {spec.name} here; known: {', '.join(BACKENDS[spec.name])}")
        if backend == "vllm":
            from services.runners.vllm import VllmRunner

            return VllmRunner(spec.name, host, port, node_id, env, policy=policy, on_failed=on_failed)
        return ProcessRunner(spec.name, module, host, port, node_id, env, policy=policy, on_failed=on_failed)
    module = ENGINES.get(spec.name)
    if module is None:
        raise KeyError(f"no real runner for {spec.name}")
    return ProcessRunner(spec.name, module, host, port, node_id, env, policy=policy, on_failed=on_failed)
