"""ner-extraction: a spaCy pipeline behind ``POST /extract``.

The model is ``RMAP2P_NER_MODEL``: an installed spaCy model package
(default ``en_core_web_sm``: ``python -m spacy download en_core_web_sm``)
or a directory a pipeline was saved to (``nlp.to_disk``). Both go through
``spacy.load``. The pipeline must have an ``ner`` component. Its reported
name is ``<lang>_<name>`` from the pipeline's meta, as spaCy names packages.

    POST /extract {"text": "..."}
               -> {"model", "entities": [{"text", "label", "start", "end"}]}

``start``/``end`` are character offsets into ``text``. Documents run one at a
time on one thread: a spaCy pipeline is not meant to be shared between
threads, and the work is CPU-bound anyway.

Run as ``python -m services.runners.spacy_ner --service ner-extraction --port P``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from services.capabilities import module_present
from services.runners.serve import (
    CannotRun,
    Engine,
    Route,
    json_error,
    main,
    read_json_object,
    required_model,
)

SERVICE = "ner-extraction"
MAX_CHARS = 200_000
"""Characters in one request (spaCy's parser needs ~1 GB per 100,000 characters at worst)."""


@dataclass(slots=True)
class Loaded:
    nlp: Any
    name: str
    version: str
    labels: tuple[str, ...]
    executor: ThreadPoolExecutor


class SpacyEngine(Engine[Loaded]):
    backend = "spacy"
    max_body = 2 * 1024 * 1024

    def preflight(self, env: Mapping[str, str]) -> None:
        if not module_present("spacy"):
            raise CannotRun("Python package spacy is not installed")
        required_model(SERVICE, env, "spaCy model", "(RMAP2P_NER_MODEL) not found: neither an installed package nor a model directory")

    def load(self, env: Mapping[str, str]) -> Loaded:
        return self.load_reporting(env, lambda fraction: None)

    def load_reporting(self, env: Mapping[str, str], report: Callable[[float], None]) -> Loaded:
        # Steps, not bytes: spaCy reports nothing while it reads a pipeline.
        report(0.0)
        import spacy

        report(0.5)
        located = required_model(SERVICE, env, "spaCy model", "disappeared before loading")
        try:
            nlp = spacy.load(located.load_as)
        except (OSError, ValueError, ImportError) as exc:  # spaCy's E050/E053 etc. are OSError/ValueError
            raise CannotRun(f"cannot load spaCy model {located.load_as}: {exc}") from None
        if "ner" not in nlp.pipe_names:
            raise CannotRun(f"spaCy model {located.name} has no 'ner' component (it has {', '.join(nlp.pipe_names) or 'none'})")
        meta = nlp.meta
        name = f"{meta.get('lang', 'xx')}_{meta.get('name', 'pipeline')}"
        labels = tuple(sorted(nlp.get_pipe("ner").labels))
        return Loaded(nlp, name, str(meta.get("version", "")), labels, ThreadPoolExecutor(1, thread_name_prefix="spacy"))

    async def closing(self, loaded: Loaded) -> None:
        loaded.executor.shutdown(wait=False, cancel_futures=True)

    def describe(self, loaded: Loaded) -> dict[str, Any]:
        return {"model": loaded.name, "model_version": loaded.version, "labels": list(loaded.labels)}

    def routes(self) -> Sequence[Route[Loaded]]:
        return (Route("POST", "/extract", extract),)


async def extract(loaded: Loaded, request: web.Request) -> web.Response:
    body = await read_json_object(request)
    if isinstance(body, str):
        return json_error(400, body)
    text = body.get("text")
    if not isinstance(text, str):
        return json_error(400, "'text' must be a string")
    if len(text) > MAX_CHARS:
        return json_error(413, f"'text' must be at most {MAX_CHARS} characters, got {len(text)}")
    entities = await asyncio.get_running_loop().run_in_executor(loaded.executor, _entities, loaded.nlp, text)
    return web.json_response({"model": loaded.name, "entities": entities})


def _entities(nlp: Any, text: str) -> list[dict[str, Any]]:
    doc = nlp(text)
    return [{"text": e.text, "label": e.label_, "start": e.start_char, "end": e.end_char} for e in doc.ents]


if __name__ == "__main__":
    main(SpacyEngine(), description=__doc__.splitlines()[0] if __doc__ else "")
