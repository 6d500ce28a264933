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

Whether this machine can run one is ``services.capabilities.can_run``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from services.runners.process import ProcessRunner
from services.supervisor import RestartPolicy

ENGINES: dict[str, str] = {
    "rag-embeddings": "services.runners.sbert",
    "ner-extraction": "services.runners.spacy_ner",
    "document-processing": "services.runners.documents",
}
"""Service name -> the module its child runs as ``python -m``."""


class _Spec(Protocol):
    """The part of ``allocator.catalog.ServiceSpec`` a factory reads."""

    @property
    def name(self) -> str: ...


def has_runner(service: str) -> bool:
    return service in ENGINES


def make_runner(
    spec: _Spec,
    host: str,
    port: int,
    node_id: str,
    env: Mapping[str, str],
    *,
    policy: RestartPolicy | None = None,
    on_failed: Callable[[str, str], None] | None = None,
) -> ProcessRunner:
    """The runner of ``spec.name`` listening on ``host:port`` (0: any free port).

    ``env`` overrides the daemon's environment for the child (model variables).
    ``on_failed(service, reason)`` is called once if supervision gives up after
    ``start()`` returned; a failure at start raises ``RunnerError``.
    """
    module = ENGINES.get(spec.name)
    if module is None:
        raise KeyError(f"no real runner for {spec.name}")
    return ProcessRunner(spec.name, module, host, port, node_id, env, policy=policy, on_failed=on_failed)
